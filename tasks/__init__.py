"""Prefect tasks: thin batch wrappers over the plain-Python steps in reinstatement/."""

from typing import Any

from reinstatement import resources


def _prefect_secret(name: str) -> str:
    """A Prefect Secret block's value (the SMTP password that REINSTATE_SMTP_PASSWORD_BLOCK
    names), read where the pipeline's tasks run."""
    from prefect.blocks.system import Secret

    block: Any = Secret.load(name)  # sync in a sync context
    return str(block.get())


# Every process that runs the pipeline's tasks reads secrets this way; the plain-Python
# resources (reinstatement/resources.py) know nothing of Prefect.
resources.set_secret_resolver(_prefect_secret)
