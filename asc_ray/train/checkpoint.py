"""A unit's resumable state on disk and its selected model (`Checkpoints`, what Trainer.fit saves and resumes
from), and how it is written without writing the same bytes twice.

    <unit folder>/checkpoint/checkpoint.pt   weights, optimizer, scheduler, epoch, history, best, RNG, key
    <unit folder>/checkpoint/best.pt         the selected model's weights
    <unit folder>/checkpoint.prev/           the checkpoint before: a torn checkpoint.pt has a good one behind it

- The state is written every `train.checkpoint_every` epochs and at the last epoch (`is_save_epoch`).
- best.pt is written only when the selected model changed since the last checkpoint; otherwise the new
  folder hard-links the unchanged file (`link_or_copy`: no bytes written).
- Files are never modified in place (every write is a new file renamed into place), so a hard link is a
  snapshot: Ray's persisted copy of a checkpoint (asc_ray.pipeline.teachers) links the same files.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from asc_ray.errors import AscRayError
from asc_ray.io import explain_write_error
from asc_ray.layout import BEST_FILE, STATE_FILE, UnitFiles

STATE_KEYS = ("model", "opt", "sched", "epoch", "history", "best", "torch_rng")


def is_save_epoch(epoch: int, epochs: int, every: int) -> bool:
    """Whether the resumable state is written after `epoch` (1-based, just finished) of `epochs`."""
    return epoch >= epochs or epoch % max(1, int(every)) == 0


def link_or_copy(src: Path, dst: Path) -> None:
    """Put `src` at `dst` as a new directory entry: a hard link where the filesystem allows (no bytes written),
    else a copy; via a temp name and a rename, so an existing `dst` (maybe a link to `src` itself, or a file
    another checkpoint shares) is replaced, never truncated in place."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem (EXDEV), or one without hard links
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def link_tree(src: Path, dst: Path) -> None:
    """`dst` gets every file of the folder `src`, linked (or copied) with link_or_copy."""
    src, dst = Path(src), Path(dst)
    for p in sorted(src.rglob("*")):
        target = dst / p.relative_to(src)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(p, target)


def tree_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`, each inode counted once (hard links share their bytes)."""
    seen, total = set(), 0
    for p in Path(folder).rglob("*"):
        if p.is_file():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def save_or_explain(obj: object, path: Path) -> None:
    """torch.save, turning a full disk into an AscRayError that names the path and the space needed."""
    try:
        with open(path, "wb") as f:  # a file object: a full disk is then an OSError (ENOSPC), not a C++ error
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        # torch's zip writer may replace the OSError by a RuntimeError while closing: look behind it
        cause = e if isinstance(e, OSError) else e.__context__
        if not isinstance(cause, OSError) or not isinstance(explain_write_error(cause, path), AscRayError):
            raise
        buf = io.BytesIO()  # what the file needs (only on this rare path: it costs a copy in memory)
        torch.save(obj, buf)
        path.unlink(missing_ok=True)
        raise explain_write_error(cause, path, buf.tell()) from None


def read_checkpoint(path: Path, device) -> dict | str:
    """The checkpoint's state dict, or why it cannot be read (missing, truncated, corrupt, not ours)."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means a torn or foreign file
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        return "not an asc-ray checkpoint (keys missing)"
    return state


class CheckpointDir:
    """The checkpoint folders of one unit (see the module doc)."""

    def __init__(self, out_dir: str | Path, unit_key: str | None, log: Callable[[str], None], tag: str):
        self.out_dir, self.unit_key, self.log, self.tag = Path(out_dir), unit_key, log, tag
        files = UnitFiles(out_dir)
        self.final, self.prev = files.checkpoint, files.checkpoint_prev

    def save(self, state: dict, best_weights: dict | None) -> Path:
        """checkpoint/ replaced atomically, the one before kept as checkpoint.prev/. `best_weights`: the
        selected model's weights when they changed since the last checkpoint, else None (best.pt is linked)."""
        tmp = self.out_dir / f".checkpoint.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            save_or_explain(state, tmp / STATE_FILE)
            best = self.final / BEST_FILE
            if best_weights is not None or not best.is_file():
                save_or_explain(best_weights if best_weights is not None else state["model"], tmp / BEST_FILE)
            else:
                link_or_copy(best, tmp / BEST_FILE)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk: free what this attempt took
            raise
        old = self.out_dir / f".checkpoint.old-{os.getpid()}"
        if self.final.exists():
            if self.prev.exists():
                os.rename(self.prev, old)
            os.rename(self.final, self.prev)
        os.rename(tmp, self.final)
        shutil.rmtree(old, ignore_errors=True)
        return self.final

    def load(self, folder: str | Path | None, device, apply: Callable[[dict, Path], None]) -> bool:
        """Resume from the newest readable checkpoint of this unit: `apply(state, path)` with it. The candidates
        are `folder` (the one Ray hands over, if any: taken as it is), this unit's checkpoint/ and
        checkpoint.prev/ (only with this unit's key: never another config's leftovers). checkpoint/ is newer
        than Ray's copy (or there is no Ray copy yet) when the worker died between writing it and Ray
        registering it: resuming from it redoes no epoch, so none is reported (to MLflow) twice. A torn or
        corrupt file is logged and skipped; False when there is none to resume from (training starts clean)."""
        handed = [Path(folder)] if folder else []
        candidates = list(handed)
        for c in (self.final, self.prev):
            if c.resolve() not in [x.resolve() for x in candidates]:
                candidates.append(c)
        best: tuple[dict, Path, bool] | None = None
        seen = None  # the epoch of the checkpoint handed over, when readable
        tried = bool(handed)  # something to resume from was there (else a fresh start says nothing)
        for i, cand in enumerate(candidates):
            path, own = cand / STATE_FILE, i >= len(handed)
            if own and not path.is_file():
                continue
            if best is not None and _same_file(path, best[1] / STATE_FILE):
                continue  # Ray's copy is a hard link of this unit's own file (asc_ray.pipeline.teachers)
            state = read_checkpoint(path, device)
            if isinstance(state, str):
                tried = True
                self.log(f"[{self.tag}] checkpoint unreadable, skipped ({state}): {path}")
                continue
            if own and state.get("key") != self.unit_key:  # a fallback must be of this very unit
                continue
            if not own:
                seen = state["epoch"]
            if best is None or state["epoch"] > best[0]["epoch"]:
                best = (state, cand, own)
        if best is None:
            if tried:
                self.log(f"[{self.tag}] no readable checkpoint left: training from scratch")
            return False
        state, cand, own = best
        apply(state, cand / STATE_FILE)
        if own and handed and seen is None:
            self.log(f"[{self.tag}] fell back to the previous good checkpoint {cand / 'checkpoint.pt'}")
        elif own:
            was = "none was handed over" if not handed else f"the one handed over is of epoch {seen}"
            self.log(f"[{self.tag}] resuming from this unit's own {cand / 'checkpoint.pt'} ({was})")
        if cand.resolve() != self.final.resolve() and (cand / BEST_FILE).is_file():
            self.final.mkdir(parents=True, exist_ok=True)
            # a new entry, never a write into the old file: it may be a hard link shared with Ray's copy
            link_or_copy(cand / BEST_FILE, self.final / BEST_FILE)
        self.log(f"[{self.tag}] resumed from epoch {state['epoch']}")
        return True


class Selection:
    """The model train.select keeps, and when its weights (best.pt) are due: at the next checkpoint, from a CPU
    copy of them when that checkpoint is a later epoch (train.checkpoint_every > 1)."""

    def __init__(self):
        self.best: dict = {"val_macro_acc": -1.0, "epoch": -1}  # epoch: 0-based
        self._due = False  # best model changed since the last checkpoint: best.pt is due
        self._weights: dict | None = None  # its weights, when they are not the current ones

    def offer(self, epoch: int, val_macro_acc: float, model: torch.nn.Module, save_now: bool) -> None:
        """Epoch `epoch` scored `val_macro_acc` on the holdout: kept when better than the best so far."""
        if val_macro_acc > self.best["val_macro_acc"]:
            self.best = {"val_macro_acc": val_macro_acc, "epoch": epoch}
            self._due = True
            self._weights = (
                None
                if save_now
                else {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            )

    def last(self, epoch: int) -> None:
        """train.select=last: this epoch's weights, current at the next checkpoint."""
        self.best = {"val_macro_acc": float("nan"), "epoch": epoch}
        self._due = True

    def take(self, model: torch.nn.Module) -> dict | None:
        """The weights best.pt gets at this checkpoint; None where they have not changed (best.pt is linked)."""
        if not self._due:
            return None
        weights = self._weights if self._weights is not None else model.state_dict()
        self._due, self._weights = False, None
        return weights


class Checkpoints:
    """One unit's checkpoints (CheckpointDir) and its selected model (Selection): what Trainer.fit saves,
    resumes from and returns."""

    def __init__(self, out_dir: str | Path, unit_key: str | None, system: str, split: int, log, tag: str):
        self.dir = CheckpointDir(out_dir, unit_key, log, tag)
        self.system, self.split, self.unit_key = system, split, unit_key
        self.selection = Selection()
        self.best_weights = UnitFiles(out_dir).best  # the selected model's weights

    def save(self, model, opt, sched, epoch: int, history: list[dict]) -> Path:
        state = {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "epoch": epoch,
            "history": history,
            "best": self.selection.best,
            "torch_rng": torch.get_rng_state(),
            "system": self.system,
            "split": self.split,
            "key": self.unit_key,  # a torn checkpoint falls back only to this unit's own
        }
        return self.dir.save(state, self.selection.take(model))

    def load(self, folder: str | Path | None, device, model, opt, sched) -> tuple[int, list[dict]] | None:
        """Resume from `folder` (or this unit's previous good checkpoint): (epoch, history), the weights,
        optimizer, schedule, selection and RNG restored; None when there is none. A readable checkpoint of
        another model is an AscRayError: it is someone's work, left alone."""
        resumed: list[tuple[int, list[dict]]] = []

        def apply(state: dict, path: Path) -> None:
            fix = (
                "check that --output-dir and --system name the run you meant; this checkpoint is another "
                "model's work and is left as it is (move the folder elsewhere to keep it; --fresh trains from "
                "scratch and replaces it)"
            )
            if state.get("system", self.system) != self.system:
                raise AscRayError(
                    f"checkpoint does not fit {self.system} (it is a {state['system']} checkpoint)",
                    path=path,
                    fix=fix,
                )
            try:
                model.load_state_dict(state["model"])
            except (RuntimeError, KeyError) as e:
                raise AscRayError(
                    f"checkpoint does not fit {self.system} ({str(e).splitlines()[0][:200]})",
                    path=path,
                    fix=fix,
                ) from None
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            self.selection.best = state["best"]
            torch.set_rng_state(state["torch_rng"].cpu())  # map_location put it on the GPU
            resumed.append((state["epoch"], state["history"]))

        return resumed[0] if self.dir.load(folder, device, apply) else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
