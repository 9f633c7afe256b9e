"""The way into MLflow: opening the store, the tags ganlab writes, a job's run, and the UI's server app.

Imports `core` only.
"""
