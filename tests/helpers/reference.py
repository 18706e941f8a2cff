"""The reference pipeline the slow tests share (the `reference_pipeline` fixture, once per session): the README's
command, `python jobs/full_pipeline.py --profile smoke`, on the synthetic set for splits 10 and 100 with every
teacher and student of the profile, a few epochs, an unlabelled evaluation set and a SQLite MLflow store.

Tests only read it. A test that runs a command on it (a re-run, a resume) works on `reference.copy(tmp_path)`:
its output dir and MLflow store, copied."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from helpers.procs import cli_env, pipeline_args, run_py

SPLITS = (10, 100)
# a few epochs of every unit (smoke gives the CNN teachers 24); the README's command otherwise
ARGS = (
    "--profile",
    "smoke",
    "bcbl.epochs=2",
    "teachers.bcbl_epochs=0",  # the CNN teachers on bcbl.epochs too
    "train.min_steps=0",
    "passt.epochs=1",
)


@dataclass(frozen=True)
class Reference:
    data: Path  # the synthetic data set
    cwd: Path  # where it ran: mlflow.db (and its artifacts, mlartifacts/) are here
    out: Path  # its output dir
    eval_dir: Path  # the unlabelled evaluation set (DCASE 2024 layout)
    eval_names: list[str]
    run: subprocess.CompletedProcess  # its exit status and output

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.cwd}/mlflow.db"

    @property
    def stdout(self) -> str:
        return self.run.stdout

    def args(self, out: Path | None = None, *extra: str) -> list[str]:
        """The reference's command (`run_py`'s args) on `out` (default its own output dir)."""
        splits = ("--splits", ",".join(map(str, SPLITS)))
        return pipeline_args(
            self.data, out or self.out, *splits, *ARGS, f"data.eval_dir={self.eval_dir}", *extra
        )

    def again(self, cwd: Path, out: Path, *extra: str, timeout: float = 1500) -> subprocess.CompletedProcess:
        """The reference's command on `out`, logging to cwd/mlflow.db."""
        return run_py(self.args(out, *extra), cli_env(f"sqlite:///{cwd}/mlflow.db"), cwd, timeout=timeout)

    def copy(self, dest: Path) -> tuple[Path, Path]:
        """Its output dir and MLflow store copied under `dest` (times kept): (cwd, out) for `again`."""
        shutil.copytree(self.out, dest / "out")
        shutil.copy2(self.cwd / "mlflow.db", dest / "mlflow.db")
        return dest, dest / "out"


def eval_set(data: Path, folder: Path, n: int = 12) -> list[str]:
    """An unlabelled evaluation set in the DCASE 2024 layout, made of some test clips under new names."""
    from asc_ray.data.tau import TauDataset

    (folder / "audio").mkdir(parents=True)
    (folder / "evaluation_setup").mkdir()
    names = []
    for i, f in enumerate(TauDataset.open(data).test_files()[:n]):
        names.append(f"audio/{i}.wav")
        shutil.copy(data / f, folder / names[-1])
    (folder / "evaluation_setup" / "fold1_test.csv").write_text("filename\n" + "\n".join(names) + "\n")
    return names


def run_reference(data: Path, cwd: Path) -> Reference:
    ev = cwd / "eval"
    names = eval_set(data, ev)
    ref = Reference(data, cwd, cwd / "out", ev, names, subprocess.CompletedProcess([], -1, "", ""))
    first = run_py(ref.args(), cli_env(ref.uri), cwd, timeout=1500)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return Reference(data, cwd, ref.out, ev, names, first)
