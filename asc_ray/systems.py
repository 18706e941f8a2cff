"""The named systems of the report: what each teacher and student is made of.

One name per concept, used in code, config, MLflow tags and docs:
  teachers (per split, ensembled):  passt_fms, passt_dir, passt_fms_dir, bcbl32_fms, bcbl32_dir, bcbl32_fms_dir
  students:                         kd_ensemble (system 2), tfs (system 3), bcbl24 (system 1), baseline (reference)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class System:
    name: str
    role: str  # "teacher" | "student"
    model: str  # "passt" | "bcbl32" | "bcbl24"  (also the front-end's name)
    fms: bool  # Freq-MixStyle on the spectrogram
    dir: bool  # device impulse responses on device-a waveforms
    mixup: bool  # mixup of inputs and targets
    loss: str  # "ce" | "kd" | "focusnet"
    needs: str | None  # logits it learns from: "teachers" (ensemble table) | "kd_ensemble" (student table)

    @property
    def augment(self) -> str:
        parts = [p for p, on in (("mixup", self.mixup), ("fms", self.fms), ("dir", self.dir)) if on]
        return "+".join(parts) or "none"

    @property
    def family(self) -> str:
        """Hyper-parameter section of the config: 'passt' or 'bcbl'."""
        return "passt" if self.model == "passt" else "bcbl"

    @property
    def feeds(self) -> str | None:
        """The logits table this system's logits go into for a later stage: "teachers" for every teacher,
        its own name for a student another system learns from (kd_ensemble), else None."""
        if self.role == "teacher":
            return "teachers"
        return self.name if any(s.needs == self.name for s in _SYSTEMS) else None

    def reads(self, key: str) -> bool:
        """Whether a dotted config key changes this system's training (used to apply searches where they matter)."""
        section, _, name = key.partition(".")
        return {
            "kd": self.loss == "kd",
            "focusnet": self.loss == "focusnet",
            "channels": name == self.model,
            "bcbl": self.family == "bcbl",
            "passt": self.family == "passt",
        }.get(section, True)


_SYSTEMS = [
    # Teachers: three augmentation configs each; the 32-BCBL teachers also use mixup (report, sec. 3.2).
    System("passt_fms", "teacher", "passt", fms=True, dir=False, mixup=False, loss="ce", needs=None),
    System("passt_dir", "teacher", "passt", fms=False, dir=True, mixup=False, loss="ce", needs=None),
    System("passt_fms_dir", "teacher", "passt", fms=True, dir=True, mixup=False, loss="ce", needs=None),
    System("bcbl32_fms", "teacher", "bcbl32", fms=True, dir=False, mixup=True, loss="ce", needs=None),
    System("bcbl32_dir", "teacher", "bcbl32", fms=False, dir=True, mixup=True, loss="ce", needs=None),
    System("bcbl32_fms_dir", "teacher", "bcbl32", fms=True, dir=True, mixup=True, loss="ce", needs=None),
    # Students. KD students use FMS + DIR as CP-JKU's students do; no mixup (the teacher targets carry the smoothing).
    System("kd_ensemble", "student", "bcbl32", fms=True, dir=True, mixup=False, loss="kd", needs="teachers"),
    System("tfs", "student", "bcbl32", fms=True, dir=True, mixup=False, loss="focusnet", needs="kd_ensemble"),
    # System 1: the 24-BCBL at 44.1 kHz with mixup, FMS and DIR (report, sec. 3.1).
    System("bcbl24", "student", "bcbl24", fms=True, dir=True, mixup=True, loss="ce", needs=None),
    # The DCASE 2024 baseline recipe (FMS, no KD) for reference.
    System("baseline", "student", "bcbl32", fms=True, dir=False, mixup=False, loss="ce", needs=None),
]
SYSTEMS: dict[str, System] = {s.name: s for s in _SYSTEMS}
TEACHERS: tuple[str, ...] = tuple(s.name for s in _SYSTEMS if s.role == "teacher")
STUDENTS: tuple[str, ...] = tuple(s.name for s in _SYSTEMS if s.role == "student")


def check_needs(names: list[str]) -> None:
    """Every configured system's `needs` is fed by a configured system (tfs needs kd_ensemble's logits)."""
    from asc_ray.errors import AscRayError

    fed = {SYSTEMS[n].feeds for n in names if n in SYSTEMS}
    for n in names:
        need = SYSTEMS[n].needs if n in SYSTEMS else None
        if need and need not in fed:
            feeders = [s.name for s in _SYSTEMS if s.feeds == need]
            raise AscRayError(
                f"{n} learns from the logits of {need}, which no configured system writes",
                path="config",
                fix=f"add {' or '.join(feeders)} to the configured systems, or remove {n}",
            )


def get_system(name: str) -> System:
    from asc_ray.errors import AscRayError

    if name not in SYSTEMS:
        raise AscRayError(
            f"unknown system '{name}'", path="--system", fix="choose from " + ", ".join(SYSTEMS)
        )
    return SYSTEMS[name]
