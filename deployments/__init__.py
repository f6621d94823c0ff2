"""Where flows meet schedules, work pools and default parameters (see definitions.py)."""
