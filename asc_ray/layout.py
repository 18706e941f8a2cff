"""What each unit of a run is called and where everything it writes lies: the one home of these names.

    <output-dir>/
      teachers/split<N>/<system>/                 a teacher: UnitRef(system, N)
      students/split<N>/<system>/seed<S>/         a student, once per seed: UnitRef(system, N, S)
        checkpoint/{checkpoint.pt,best.pt}, checkpoint.prev/, model.pt, model_fp16.pt, output.csv, unit.json,
        unit.log, result.json, split_logits.npy, test_logits.npy, trials/trial<i>/ (UnitFiles)
      logits/<table>_split<N>.parquet             a logits table: TableRef(source, N[, S]) -> teachers_split<N>,
                                                  kd_ensemble_seed<S>_split<N>
      logits/parts/<table>_split<N>/<model>.npz   the LogitAggregator's part file of one model's logits
    <data.cache_dir>/pretrain/<model>-<key>/      an architecture's pretraining: PretrainRef(model), once per run
                                                  (asc_ray.train.pretrain.pretrain_dir: runs sharing the cache
                                                  share it)

A unit's role (systems.System.role) decides its folder and the stage job that trains it (ROLES); a new kind of
unit is a new ROLES entry (and its stage in STAGES). The pipeline (asc_ray.pipeline), the standalone
`python -m asc_ray.train`, the results, the MLflow registry and `asc-ray-predict` all take their paths and
names from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from asc_ray.systems import SYSTEMS, get_system

# the stage jobs (jobs/*.py), in the order they run; each runs its part of the per-split graph
STAGES = ("teachers", "logits", "students", "evaluate")


@dataclass(frozen=True)
class Role:
    folder: str  # <output-dir>/<folder>/: where its units' folders are
    stage: str  # the stage job that trains its units
    table_stage: str  # the stage job that writes the logits table its units feed
    seeded: bool = False  # a unit per seed: split<N>/<system>/seed<S>/


ROLES = {
    "teacher": Role(folder="teachers", stage="teachers", table_stage="logits"),
    "student": Role(folder="students", stage="students", table_stage="students", seeded=True),
}


def _n(x: int | None) -> int:
    return -1 if x is None else x


def _where(split: int | None, seed: int | None, sep: str = " ") -> str:
    return ("" if split is None else f"{sep}split{split}") + ("" if seed is None else f"{sep}seed{seed}")


@dataclass(frozen=True)
class UnitRef:
    """A trained unit: a system on a split, a student once per seed (students.seeds)."""

    system: str
    split: int | None
    seed: int | None = None
    kind: ClassVar[str] = "train"

    @property
    def name(self) -> str:
        """Its one name, in the console, unit.log, the timeline and MLflow: "tfs split25 seed0" (a student),
        "bcbl32_fms split25" (a teacher)."""
        return self.system + _where(self.split, self.seed)

    def __str__(self) -> str:
        return self.name

    @property
    def role(self) -> str:
        return get_system(self.system).role

    @property
    def stage(self) -> str:
        return ROLES[self.role].stage

    @property
    def needs(self) -> TableRef | None:
        """The table it learns from (System.needs): a student's own seed's where a student writes it."""
        source = get_system(self.system).needs
        if not source:
            return None
        return TableRef(source, self.split, self.seed if source in SYSTEMS else None)

    @property
    def feeds(self) -> TableRef | None:
        """The table its logits go into (System.feeds): the teachers' one per split, a student's per seed."""
        source = get_system(self.system).feeds
        return None if source is None else TableRef(source, self.split, self.seed)

    @property
    def sort_key(self) -> tuple:
        """The graph's order: by split (a unit of no split first), kind, system, seed."""
        return (_n(self.split), self.kind, self.system, _n(self.seed))


@dataclass(frozen=True)
class TableRef:
    """A logits table: what the systems feeding `source` ("teachers", or a student such as kd_ensemble) wrote on
    a split, per seed for a student's."""

    source: str
    split: int | None
    seed: int | None = None
    kind: ClassVar[str] = "table"
    role: ClassVar[str] = "table"

    @property
    def name(self) -> str:
        """The table's name for the LogitAggregator (and in its key): "teachers", "kd_ensemble_seed0"."""
        return self.source + _where(None, self.seed, "_")

    def __str__(self) -> str:
        return f"{self.source} logits" + _where(self.split, self.seed)

    @property
    def stage(self) -> str:
        """The stage that writes it: the logits job for the teachers' table, the students job for a student's."""
        roles = {s.role for s in SYSTEMS.values() if s.feeds == self.source}
        return ROLES[roles.pop()].table_stage

    @property
    def sort_key(self) -> tuple:
        return (_n(self.split), self.kind, self.source, _n(self.seed))


@dataclass(frozen=True)
class PretrainRef:
    """An architecture's pretraining on a corpus outside the challenge data (pretrain.corpus), once per run: every
    split's teachers of that architecture fine-tune from its weights. It belongs to no split and no seed."""

    model: str
    kind: ClassVar[str] = "pretrain"
    role: ClassVar[str] = "pretrain"
    stage: ClassVar[str] = "teachers"  # the teachers' job runs it before the teachers that need it
    split: ClassVar[None] = None
    seed: ClassVar[None] = None
    needs: ClassVar[None] = None
    feeds: ClassVar[None] = None

    @property
    def name(self) -> str:
        return f"pretrain {self.model}"

    def __str__(self) -> str:
        return self.name

    @property
    def sort_key(self) -> tuple:
        return (-1, self.kind, self.model, -1)


# in a checkpoint folder (the unit's checkpoint/, checkpoint.prev/, Ray's copy): the state, the selected weights
STATE_FILE, BEST_FILE = "checkpoint.pt", "best.pt"


class UnitFiles:
    """The files of one unit folder (or of a search trial's folder, laid out the same)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.checkpoint = self.folder / "checkpoint"  # the resumable state (asc_ray.train.checkpoint)
        self.checkpoint_prev = self.folder / "checkpoint.prev"
        self.state = self.checkpoint / STATE_FILE
        self.best = self.checkpoint / BEST_FILE  # the selected model's weights while it trains
        self.record = self.folder / "result.json"  # written last: the unit is done
        self.model = self.folder / "model.pt"  # the selected model, fp32
        self.model_fp16 = self.folder / "model_fp16.pt"  # a student's deployed model
        self.output = self.folder / "output.csv"  # DCASE output on the test split
        self.eval_output = self.folder / "eval_output.csv"  # ... on the evaluation set (data.eval_dir)
        self.spec = self.folder / "unit.json"  # what asc-ray-predict rebuilds the model from
        self.log = self.folder / "unit.log"
        self.split_logits = self.folder / "split_logits.npy"  # over the split's training files: for a table
        self.test_logits = self.folder / "test_logits.npy"  # a teacher's: the ensemble's test score

    def trial(self, i: int) -> Path:
        """A search trial's own folder (students.search): the best one's files become the unit's."""
        return self.folder / "trials" / f"trial{i}"


class Layout:
    """Every path of a run under its output dir (the module doc shows the tree)."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.logits_dir = self.out / "logits"

    def unit_dir(self, ref: UnitRef) -> Path:
        folder = self.out / ROLES[ref.role].folder
        if ref.split is not None:
            folder = folder / f"split{ref.split}"
        folder = folder / ref.system
        return folder if ref.seed is None else folder / f"seed{ref.seed}"

    def unit(self, ref: UnitRef) -> UnitFiles:
        return UnitFiles(self.unit_dir(ref))

    def unit_dirs(self, role: str | None = None, split: int | str = "*") -> list[Path]:
        """The unit folders there are now (of `role`, of `split`; a live run's too), by their exact shape:
        never a recursive walk, which enters the checkpoint folders a training unit replaces by rename."""
        found = []
        for name in [role] if role else ROLES:
            r = ROLES[name]
            found += (self.out / r.folder).glob(f"split{split}/*" + ("/seed*" if r.seeded else ""))
        return sorted(p for p in found if p.is_dir())

    def records(self, role: str | None = None) -> list[Path]:
        """The records (result.json) of the units that finished."""
        return [f.record for f in map(UnitFiles, self.unit_dirs(role)) if f.record.is_file()]

    def table(self, ref: TableRef) -> Path:
        return self.logits_dir / f"{self._table_stem(ref)}.parquet"

    def part(self, ref: TableRef, model: str) -> Path:
        """One model's logits for the table, as the LogitAggregator keeps them until the table is written."""
        return self.logits_dir / "parts" / self._table_stem(ref) / f"{model}.npz"

    @staticmethod
    def _table_stem(ref: TableRef) -> str:
        return ref.name + _where(ref.split, None, "_")

    def results(self) -> list[Path]:
        """What --fresh removes: every unit's folder and every table (the caches stay: waveforms, pretraining)."""
        return [self.out / r.folder for r in ROLES.values()] + [self.logits_dir]


def ray_run_name(ref: UnitRef, key: str) -> str:
    """The Ray Train run of a unit: stable per key, so a re-run of the same config continues it."""
    return f"{ref.role}-{ref.system}" + _where(ref.split, ref.seed, "-") + f"-{key[:8]}"


def tuner_name(key_hash: str) -> str:
    """The Ray Tune run of a group of students, by a hash of their keys."""
    return f"students-{key_hash}"


def registered_name(system: str, split: int | str) -> str:
    """A student's registered MLflow model: a version per seed and retraining."""
    return f"asc-ray-{system}-split{split}"
