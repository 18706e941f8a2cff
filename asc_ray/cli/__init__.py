"""Entry points: the command lines of the pipeline jobs (jobs/*.py)."""
