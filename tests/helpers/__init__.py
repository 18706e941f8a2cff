"""Helpers shared by the test folders (importable as `helpers.*`: pyproject puts tests/ on the path) and, for
the local Ray cluster, by bench/schedule_makespan.py."""
