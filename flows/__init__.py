"""Flows: Prefect flows and tasks over plain sync functions, and the `terrain` command line."""
