"""Prefect front door to the pipeline: flow `hdkd`, deployment `full`."""
