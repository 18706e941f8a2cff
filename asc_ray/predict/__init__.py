"""Using a trained model: the one inference path (`Classifier`), what a model is (`unit.json`), finding models
and audio, the `asc-ray-predict` command and the MLflow model. Plain PyTorch, no Ray."""

from asc_ray.predict.classifier import (
    UNIT_SPEC,
    Classifier,
    build_from_spec,
    load_weights,
    logits_of_each,
    read_unit_spec,
    unit_spec,
    write_unit_spec,
)
from asc_ray.predict.cli import cli, main
from asc_ray.predict.files import classify_files, find_audio, load_classifier, read_audio

__all__ = [
    "UNIT_SPEC",
    "Classifier",
    "build_from_spec",
    "classify_files",
    "cli",
    "find_audio",
    "load_classifier",
    "load_weights",
    "logits_of_each",
    "main",
    "read_audio",
    "read_unit_spec",
    "unit_spec",
    "write_unit_spec",
]
