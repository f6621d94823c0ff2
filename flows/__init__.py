"""Prefect flows: each reads like the steps of the job it runs."""
