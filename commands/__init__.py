"""The `reinstate` command: the operator's and the engineer's way in, above the flows.

`reinstate.py` is the app and its commands, `operations.py` the commands that start
or serve deployments, `local_prefect.py` how a local run gets its Prefect server.
"""
