"""Models: N-BCBL students/teachers and the PaSST teacher wrapper."""

from asc_ray.models.bcbl import bcbl
from asc_ray.models.passt import passt

__all__ = ["bcbl", "passt"]
