"""The baseline check: the record in docs/baseline/, the verdict on a rerun, and reading a
rerun's scores back from MLflow.

Imports every wing below it, `sweeps` included (its seed statistics).
"""
