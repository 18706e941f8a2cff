"""asc-ray: data-efficient acoustic scene classification with Ray."""

__version__ = "0.1.0"
