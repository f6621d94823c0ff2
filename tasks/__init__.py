"""Prefect tasks: thin batch wrappers over the plain-Python steps in reinstatement/."""
