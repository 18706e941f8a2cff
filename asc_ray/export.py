"""What leaves the system: the DCASE submission file and plots like the report's figures (the results pages:
asc_ray.report).

Every file is written atomically (asc_ray.io), so an interrupted run never leaves a half-written output
that a resume would trust.

DCASE output: `output.csv` is tab-separated with the header `filename  scene_label  airport ... tram`
(filenames without the leading "audio/", the argmax scene, then the softmax probability of each scene
in SCENES order). The model complexity goes beside it as `<stem>.complexity.json`
(e.g. `output.complexity.json`), holding the dict passed in (params, macs, ...).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window (also safe inside Ray workers)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from asc_ray.data.tau import SCENES  # noqa: E402
from asc_ray.errors import AscRayError  # noqa: E402
from asc_ray.io import atomic_write, atomic_write_text, read_or_raise  # noqa: E402

_HEADER = ["filename", "scene_label", *SCENES]


# --- DCASE submission output --------------------------------------------------------------------------


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def complexity_path(output_path: str | Path) -> Path:
    """Where the complexity of `output.csv` lives: `output.complexity.json` beside it."""
    p = Path(output_path)
    return p.with_name(f"{p.stem}.complexity.json")


def write_dcase_output(
    path: str | Path,
    filenames: Sequence[str],
    logits: np.ndarray,
    complexity: dict | None = None,
) -> Path:
    """Write the DCASE submission file (see the module doc) and, if given, the complexity JSON beside it."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != len(SCENES):
        raise ValueError(f"logits must be [N, {len(SCENES)}], got shape {logits.shape}")
    if len(filenames) != len(logits):
        raise ValueError(f"{len(filenames)} filenames but {len(logits)} rows of logits")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")
    # DCASE wants the bare file name: "airport-lisbon-1000-40000-0-a.wav", not "audio/airport-..."
    names = [f[len("audio/") :] if f.startswith("audio/") else f for f in map(str, filenames)]
    if len(set(names)) != len(names):
        raise ValueError("filenames are not unique")
    if any(("\t" in n) or ("\n" in n) for n in names):
        raise ValueError("a filename contains a tab or newline")

    probs = _softmax(logits)
    labels = [SCENES[i] for i in probs.argmax(axis=1)]

    def write(f):
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(_HEADER)
        for name, label, p in zip(names, labels, probs, strict=True):
            w.writerow([name, label, *(f"{x:.8f}" for x in p)])

    out = atomic_write(Path(path), write)
    if complexity is not None:
        atomic_write_text(complexity_path(out), json.dumps(complexity, indent=2, sort_keys=True) + "\n")
    return out


def read_dcase_output(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """Read a DCASE output file: (filenames, predicted scene labels, probabilities float [N, 10])."""
    path = Path(path)
    fix = "write it with asc_ray.export.write_dcase_output (tab-separated: filename, scene_label, one column per scene)"

    def read(p: Path) -> list[list[str]]:
        with p.open(encoding="utf-8", newline="") as f:
            return list(csv.reader(f, delimiter="\t"))

    rows = read_or_raise(path, read, "DCASE output file", "check the path, or run the evaluation first")
    if not rows or rows[0] != _HEADER:
        got = rows[0] if rows else "an empty file"
        raise AscRayError(f"unexpected header: expected {_HEADER}, got {got}", path=path, fix=fix)
    filenames, labels, probs = [], [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(_HEADER) or row[1] not in SCENES:
            raise AscRayError(f"line {lineno} is malformed: {row[:3]}...", path=path, fix=fix)
        try:
            probs.append([float(x) for x in row[2:]])
        except ValueError:
            raise AscRayError(f"line {lineno} has a non-numeric probability", path=path, fix=fix) from None
        filenames.append(row[0])
        labels.append(row[1])
    return filenames, labels, np.asarray(probs, dtype=np.float64).reshape(-1, len(SCENES))


# --- plots --------------------------------------------------------------------------------------------


def _save_figure(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches=None)
    plt.close(fig)  # figures are kept alive by pyplot otherwise: a leak over many runs
    return atomic_write(Path(path), lambda f: f.write(buf.getvalue()), binary=True)


def plot_class_accuracy(per_system: dict[str, dict[str, float]], path: str | Path, title: str) -> Path:
    """Grouped bar chart like the report's Figs. 2-3: one group per scene, one bar per system, accuracy in %.

    `per_system` maps system name -> {scene: accuracy fraction}; a scene missing for a system has no bar.
    """
    if not per_system:
        raise ValueError("plot_class_accuracy needs at least one system")
    n = len(per_system)
    x = np.arange(len(SCENES))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(12, 5))
    for i, (system, accs) in enumerate(per_system.items()):
        unknown = set(accs) - set(SCENES)
        if unknown:
            raise ValueError(f"system {system!r} has unknown scenes {sorted(unknown)}")
        heights = [100.0 * accs.get(s, np.nan) for s in SCENES]
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=system)
    ax.set_xticks(x, [s.replace("_", "\n") for s in SCENES])
    ax.set_ylabel("class accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    # outside the axes, so it never hides a bar near 100 %
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_confusion(confusion: np.ndarray, path: str | Path, title: str) -> Path:
    """Confusion heatmap: colours are row-normalised (recall per true class), cells show raw counts."""
    cm = np.asarray(confusion)
    k = len(SCENES)
    if cm.shape != (k, k):
        raise ValueError(f"confusion must be [{k}, {k}], got {cm.shape}")
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            # dark text on light cells, light text on dark ones
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if norm[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(k), SCENES, rotation=45, ha="right")
    ax.set_yticks(range(k), SCENES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_timeline(entries: Sequence[dict], path: str | Path, title: str = "Pipeline timeline") -> Path:
    """Gantt chart of a pipeline run: one bar per unit, one band of rows per node, coloured by role; a light
    bar before it is the time the unit waited in Ray's queue and started up.

    Each entry: label, role (teacher / student / table), node, launched (optional), start and end (epoch s);
    workers and workers_why (optional): a unit on several workers says how many and why in its label.
    """
    if not entries:
        raise ValueError("plot_timeline needs at least one unit")
    t0 = min(e.get("launched", e["start"]) for e in entries)
    nodes = sorted({e["node"] for e in entries})
    colours = {"teacher": "tab:orange", "student": "tab:blue", "table": "tab:green"}
    rows = sorted(entries, key=lambda e: (nodes.index(e["node"]), e["start"]))
    fig, ax = plt.subplots(figsize=(12, max(3, 0.28 * len(rows) + 1.5)))
    for i, e in enumerate(rows):
        c = colours.get(e["role"], "grey")
        queued = e["start"] - e.get("launched", e["start"])  # waiting for resources and start-up: light
        if queued > 0:
            ax.barh(i, queued, left=e["launched"] - t0, color=c, alpha=0.25)
        ax.barh(i, max(e["end"] - e["start"], 0.5), left=e["start"] - t0, color=c)
        wide = (
            f" x{e['workers']} ({e.get('workers_why') or 'data parallel'})" if e.get("workers", 1) > 1 else ""
        )
        ax.text(e["end"] - t0, i, " " + e["label"] + wide, va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [f"node {str(e['node'])[:8]}" for e in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first unit started")
    ax.set_title(title)
    ax.legend(
        handles=[plt.Rectangle((0, 0), 1, 1, color=c, label=r) for r, c in colours.items()],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize="small",
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)
