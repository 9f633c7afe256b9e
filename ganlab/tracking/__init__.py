"""The way into MLflow: opening the store, the tags ganlab writes, and a job's run.

Imports `core` only.
"""
