"""The named systems of the report: what each teacher and student is made of.

One name per concept, used in code, config, MLflow tags and docs:
  teachers (per split, ensembled):  passt_fms, passt_dir, passt_fms_dir, bcbl32_fms, bcbl32_dir, bcbl32_fms_dir
  students:                         kd_ensemble (system 2), tfs (system 3), bcbl24 (system 1), baseline (reference)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from asc_ray.errors import AscRayError
from asc_ray.losses import LOSSES
from asc_ray.models import ARCHITECTURES, get_architecture
from asc_ray.schema import TRAINS, effect, when
from asc_ray.sections import field


@dataclass(frozen=True)
class System:
    name: str
    role: str  # "teacher" | "student"
    model: str  # its architecture in asc_ray.models.ARCHITECTURES: "passt" | "bcbl32" | "bcbl24"
    frontend: str  # "passt" | "mel44k" | "mel32k": what it hears (asc_ray.features); sets the sample rate
    fms: bool  # Freq-MixStyle on the spectrogram
    dir: bool  # device impulse responses on device-a waveforms
    mixup: bool = False  # mixup of inputs and targets
    loss: str = "ce"  # "ce" | "kd" | "focusnet"
    # the logits it learns from: "teachers" (ensemble table) | "kd_ensemble" (student table)
    needs: str | None = None

    @property
    def augment(self) -> str:
        parts = [p for p, on in (("mixup", self.mixup), ("fms", self.fms), ("dir", self.dir)) if on]
        return "+".join(parts) or "none"

    @property
    def family(self) -> str:
        """The config section its architecture trains by: 'passt' or 'bcbl'."""
        return get_architecture(self.model).section

    @property
    def feeds(self) -> str | None:
        """The logits table this system's logits go into for a later stage: "teachers" for every teacher,
        its own name for a student another system learns from (kd_ensemble), else None."""
        if self.role == "teacher":
            return "teachers"
        return self.name if any(s.needs == self.name for s in SYSTEMS.values()) else None

    def reads(self, key: str) -> bool:
        """Whether a dotted config key changes what this system trains into, as the key declares it where it is
        defined (asc_ray.schema.trains): a key of its loss's section (kd, focusnet), its family's (bcbl, passt)
        or the section named after it (the `baseline:` recipe), or of a section every system reads whose
        `when` this system meets (augment.fms_p: the systems with Freq-MixStyle). It decides which keys go into
        the system's resume key (asc_ray.pipeline.keys) and which searches apply to it."""
        info = field(key)
        if info is None or effect(info) != TRAINS:
            return False
        section = key.partition(".")[0]
        if section in _owned_sections() and section not in (self.loss, self.family, self.name):
            return False
        return all(getattr(self, k) == v for k, v in when(info).items())


def _owned_sections() -> set[str]:
    """Sections only some systems read: a loss's, an architecture's, a system's own recipe; `pretrain` no system
    reads (the pretraining unit's key holds it, and its teachers' keys that one)."""
    return {*LOSSES, *(a.section for a in ARCHITECTURES.values()), *SYSTEMS, "pretrain"}


_SYSTEMS = [
    # Teachers: three augmentation configs each; the 32-BCBL teachers also use mixup (report, sec. 3.2). All
    # teachers hear the original 44.1 kHz (abstract: "... trained on the original sampling rate of 44.1 kHz").
    System("passt_fms", "teacher", "passt", "passt", fms=True, dir=False),
    System("passt_dir", "teacher", "passt", "passt", fms=False, dir=True),
    System("passt_fms_dir", "teacher", "passt", "passt", fms=True, dir=True),
    System("bcbl32_fms", "teacher", "bcbl32", "mel44k", fms=True, dir=False, mixup=True),
    System("bcbl32_dir", "teacher", "bcbl32", "mel44k", fms=False, dir=True, mixup=True),
    System("bcbl32_fms_dir", "teacher", "bcbl32", "mel44k", fms=True, dir=True, mixup=True),
    # Students: 32-BCBL at 32 kHz (sec. 2.1). KD students use FMS + DIR as CP-JKU's students do; no mixup (the
    # teacher targets carry the smoothing).
    System("kd_ensemble", "student", "bcbl32", "mel32k", fms=True, dir=True, loss="kd", needs="teachers"),
    System("tfs", "student", "bcbl32", "mel32k", fms=True, dir=True, loss="focusnet", needs="kd_ensemble"),
    # System 1: the 24-BCBL at 44.1 kHz with mixup, FMS and DIR (report, sec. 3.1).
    System("bcbl24", "student", "bcbl24", "mel44k", fms=True, dir=True, mixup=True),
    # The official DCASE 2024 baseline recipe (the report's "BL Model" column): FMS, no DIR, no mixup; its
    # waveform roll and 2000 warm-up steps come from the config's `baseline:` section.
    System("baseline", "student", "bcbl32", "mel32k", fms=True, dir=False),
    # An ablation the report does not have: kd_ensemble's student and recipe (FMS + DIR, the same seeds) with the
    # label loss only (lambda = 0), so that kd_ensemble - no_kd is what distillation itself buys.
    System("no_kd", "student", "bcbl32", "mel32k", fms=True, dir=True),
]
ABLATIONS = ("no_kd",)  # systems beside Table 3's, marked as such in results.md
SYSTEMS: dict[str, System] = {s.name: s for s in _SYSTEMS}
TEACHERS: tuple[str, ...] = tuple(s.name for s in _SYSTEMS if s.role == "teacher")
STUDENTS: tuple[str, ...] = tuple(s.name for s in _SYSTEMS if s.role == "student")


def hparams(system: System, cfg):
    """The system's training settings: its family's section (bcbl / passt), overridden by a section named after
    the system where the config has one (`baseline:`, the official DCASE 2024 baseline recipe)."""
    base = getattr(cfg, system.family)
    own = getattr(cfg, system.name, None)
    return base if own is None else base.model_copy(update=own.model_dump())


def epochs(system: System, cfg, steps_per_epoch: int | None = None) -> int:
    """The epochs a unit trains, the one place they are decided: exactly `train.epochs` where set (a set-up
    check); else its family's `epochs` (`teachers.bcbl_epochs` for the 32-BCBL teachers where set: the smoke
    profile's teachers train to their plateau), raised where a split is too small for them to make
    `train.min_steps` optimizer steps (a smoke run's 44-clip split 5 has 6 batches an epoch). Without
    `steps_per_epoch` (the scheduler's estimate) there is no such floor."""
    if cfg.train.epochs:
        return cfg.train.epochs
    n = hparams(system, cfg).epochs
    if system.role == "teacher" and system.family == "bcbl" and cfg.teachers.bcbl_epochs:
        n = cfg.teachers.bcbl_epochs
    if steps_per_epoch is not None:
        n = max(n, math.ceil(cfg.train.min_steps / max(1, steps_per_epoch)))
    return n


def check_needs(names: list[str]) -> None:
    """Every configured system's `needs` is fed by a configured system (tfs needs kd_ensemble's logits)."""
    fed = {SYSTEMS[n].feeds for n in names if n in SYSTEMS}
    for n in names:
        need = SYSTEMS[n].needs if n in SYSTEMS else None
        if need and need not in fed:
            feeders = [s.name for s in SYSTEMS.values() if s.feeds == need]
            raise AscRayError(
                f"{n} learns from the logits of {need}, which no configured system writes",
                path="config",
                fix=f"add {' or '.join(feeders)} to the configured systems, or remove {n}",
            )


def get_system(name: str) -> System:
    if name not in SYSTEMS:
        raise AscRayError(
            f"unknown system '{name}'", path="--system", fix="choose from " + ", ".join(SYSTEMS)
        )
    return SYSTEMS[name]
