"""Helpers shared by the test folders (importable as `helpers.*`: pyproject puts tests/ on the path): waiting on
events, running the CLIs, local Ray clusters, the reference pipeline run, reading console lines, the probe."""
