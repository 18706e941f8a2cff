"""Training one model: the loop (`Trainer`), its data, its checkpoints and what a finished unit writes.
Plain PyTorch, no Ray; `python -m asc_ray.train` trains one model from the command line."""

from asc_ray.train.checkpoint import CheckpointDir, is_save_epoch, link_or_copy, link_tree, tree_bytes
from asc_ray.train.data import Paths, RunData, prepare_data, shard
from asc_ray.train.outputs import ensemble_on_test, finish_unit, read_record, write_record
from asc_ray.train.trainer import (
    Fitted,
    Trainer,
    augment_seed,
    derive_seed,
    train_seed,
    unit_seed,
    use_channels_last,
)

__all__ = [
    "CheckpointDir",
    "Fitted",
    "Paths",
    "RunData",
    "Trainer",
    "augment_seed",
    "derive_seed",
    "ensemble_on_test",
    "finish_unit",
    "is_save_epoch",
    "link_or_copy",
    "link_tree",
    "prepare_data",
    "read_record",
    "shard",
    "train_seed",
    "tree_bytes",
    "unit_seed",
    "use_channels_last",
    "write_record",
]
