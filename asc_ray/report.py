"""The results pages: results.csv / results.md (the students, the report's Table 3 beside them, the intervals and
the paired differences of asc_ray.stats) and teachers.csv / teachers.md. Every file is written atomically."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from asc_ray.io import atomic_write, atomic_write_text
from asc_ray.stats import Estimate

MISSING = "–"  # shown in markdown tables where a result does not exist (yet)
DIFFERENCES_SEVERAL = (
    "Points of macro accuracy: the mean over seeds of the difference on the same test clips, with its 95 % "
    "interval over seeds and test clips in brackets (asc_ray/stats.py). Only an interval that excludes 0 says "
    "which is better; one that holds 0 shows no difference at this size."
)
DIFFERENCES_ONE_SEED = (
    "Points of macro accuracy on the same test clips, from one seed per system: no verdict. One trained model "
    "per system says nothing of how much another seed would differ, which in the smoke profile is often more than "
    "these differences; several seeds (`students.seeds=[0,1,2,3,4]`, or `bench/kd_effect.py`) give intervals."
)

# The report's Table 3 (macro-averaged class accuracy on test, %), split -> system -> value.
REPORT_RESULTS: dict[int, dict[str, float]] = {
    5: {"bcbl24": 43.68, "kd_ensemble": 47.97, "tfs": 44.93, "baseline": 42.40},
    10: {"bcbl24": 47.21, "kd_ensemble": 53.03, "tfs": 50.01, "baseline": 45.29},
    25: {"bcbl24": 53.39, "kd_ensemble": 56.81, "tfs": 55.57, "baseline": 50.29},
    50: {"bcbl24": 55.50, "kd_ensemble": 59.82, "tfs": 59.66, "baseline": 53.19},
    100: {"bcbl24": 57.59, "kd_ensemble": 61.74, "tfs": 62.21, "baseline": 56.99},
}
# Table 3's column order and the report's names for our system ids.
REPORT_SYSTEMS: dict[str, str] = {
    "bcbl24": "24-BCBL",
    "kd_ensemble": "KD-Ensemble",
    "tfs": "TFS",
    "baseline": "BL Model",
}


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{float(value):.2f}"


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def run_header(profile: str, data_dir: str | Path, date: str, what: str = "Results", epochs: int = 0) -> str:
    """The top of a results page: what was run, on what, when. Under any profile but `full`, or with every
    model cut to `epochs` (train.epochs, a set-up check), the title says that the numbers are not comparable
    with the report's Table 3."""
    title = f"# {what}"
    if epochs:
        title += f" (--epochs {epochs}: a set-up check, every model trained {epochs} epoch(s): not results)"
    elif profile != "full":
        title += f" ({profile} profile: not comparable with the report's Table 3)"
    lines = [title, "", f"- profile: `{profile}`", f"- data: `{data_dir}`", f"- date: {date}"]
    if epochs:
        lines.append(
            f"- every model trained exactly {epochs} epoch(s) (`train.epochs`); the next run without it retrains"
        )
    if profile != "full":
        lines.append(
            "- the report's settings are the `full` profile (e.g. `PROFILE=full bash scripts/run_local.sh`)"
        )
    return "\n".join(lines) + "\n\n"


def _models_table(rows: list[dict]) -> str:
    """One line per system: the input its front-end gives, its size and MACs (first row of each system)."""
    seen: dict[str, dict] = {}
    for r in rows:
        if "input_shape" in r and "macs" in r:
            seen.setdefault(str(r["system"]), r)
    if not seen:
        return ""
    body = [
        [
            s,
            str(r["input_shape"]),
            f"{int(r['sample_rate']) / 1000:g} kHz" if r.get("sample_rate") else MISSING,
            f"{int(r['params']):,}" if r.get("params") is not None else MISSING,
            f"{int(r['macs']) / 1e6:.1f} M",
        ]
        for s, r in seen.items()
    ]
    return "\n## Models\n\n" + _md_table(["system", "input", "sample rate", "params", "MACs"], body)


def _seed_rows(rows: list[dict]) -> dict[tuple[int, str], list[dict]]:
    """(split, system) -> its rows, one per seed; a result given twice is an error."""
    cells: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        missing = {"system", "split", "test_macro_acc"} - set(r)
        if missing:
            raise ValueError(f"results row {r} lacks {sorted(missing)}")
        cell = cells.setdefault((int(r["split"]), str(r["system"])), [])
        if any(x.get("seed") == r.get("seed") for x in cell):
            raise ValueError(
                f"two results for system {r['system']!r} on split {r['split']} (seed {r.get('seed')})"
            )
        cell.append(r)
    return cells


def _cell(values: list[float], est: Estimate | None) -> str:
    """mean [± sd over seeds] [[±95 % half-width]] of percentages."""
    mean = sum(values) / len(values)
    text = _fmt(mean)
    if len(values) > 1:
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        text += f" ± {sd:.2f}"
    return text + (f" [±{100 * est.half_width:.1f}]" if est is not None else "")


def _signed(e: Estimate) -> str:
    """A paired difference: with one seed its value only (an interval over the test clips of one trained model
    each would read as a verdict on distillation, which one seed cannot give); with several, its interval, and
    which side of 0 it lies on where it excludes 0."""
    if e.seeds < 2:
        return f"{100 * e.value:+.2f}"
    side = (" above 0" if e.lo > 0 else " below 0") if e.excludes_zero else ""
    return f"{100 * e.value:+.2f} [{100 * e.lo:+.2f}, {100 * e.hi:+.2f}]{side}"


def write_results_table(
    rows: list[dict],
    csv_path: str | Path,
    md_path: str | Path,
    header: str | None = None,
    estimates: dict[tuple[int, str], Estimate] | None = None,
    differences: dict[tuple[int, str], Estimate] | None = None,
    ablations: tuple[str, ...] = (),
) -> None:
    """Write every row to `csv_path` (all columns) and a report-style Table 3 to `md_path`.

    Each row has at least `system`, `split` and `test_macro_acc` (percent), and a `seed` where a system ran on
    several. The markdown starts with `header` (run_header: profile, data dir, date; default a bare title), then
    our table (rows = splits ascending; columns = bcbl24, kd_ensemble, tfs, baseline, then other systems in order
    of appearance; `ablations` marked as such): each cell the mean over seeds, with their standard deviation
    when there are several and the 95 % half-width of `estimates` ((split, system) -> asc_ray.stats.Estimate);
    then each seed's value, the paired `differences` ((split, "a - b") -> Estimate), each model's input shape
    and MACs where the rows carry them, and the report's numbers beside ours. Missing cells are "–".
    """
    cells = _seed_rows(rows)
    systems = list(dict.fromkeys(system for _, system in cells))
    ours = {(sp, s): sum(r["test_macro_acc"] for r in rs) / len(rs) for (sp, s), rs in cells.items()}
    estimates = estimates or {}

    # CSV: the union of all columns, in order of first appearance
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]

    def write_csv(f):
        w = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)

    atomic_write(Path(csv_path), write_csv)

    order = [s for s in REPORT_SYSTEMS if s in systems] + [s for s in systems if s not in REPORT_SYSTEMS]
    splits = sorted({sp for sp, _ in cells})
    names = [f"{s} (ablation)" if s in ablations else s for s in order]
    body = []
    for sp in splits:
        row = [str(sp)]
        for s in order:
            rs = cells.get((sp, s))
            row.append(_cell([r["test_macro_acc"] for r in rs], estimates.get((sp, s))) if rs else MISSING)
        body.append(row)
    seeds = sorted({r.get("seed") for r in rows if r.get("seed") is not None})
    legend = "Macro-averaged class accuracy on the test split (%)"
    if len(seeds) > 1:
        legend += f": the mean over seeds {', '.join(map(str, seeds))} ± their standard deviation"
    if estimates:
        one_seed = all(e.seeds < 2 for e in estimates.values())
        legend += (
            "; in brackets the half-width of its 95 % interval over the test clips only (one seed: it says "
            "nothing of how much another seed would differ)"
            if one_seed
            else "; in brackets the half-width of its 95 % interval over seeds and test clips (asc_ray/stats.py)"
        )
    text = (header or "# Results\n\n") + legend + ".\n\n" + _md_table(["split (%)", *names], body)
    if ablations and any(s in ablations for s in systems):
        text += (
            "\n"
            + ", ".join(f"`{a}`" for a in ablations if a in systems)
            + ": an ablation the report does not have.\n"
        )
    if len(seeds) > 1:
        per_seed = [
            [
                str(sp),
                s,
                *(
                    _fmt(next((r["test_macro_acc"] for r in cells[(sp, s)] if r.get("seed") == k), None))
                    for k in seeds
                ),
            ]
            for sp in splits
            for s in order
            if (sp, s) in cells
        ]
        text += "\n## Per seed\n\n" + _md_table(
            ["split (%)", "system", *(f"seed {k}" for k in seeds)], per_seed
        )
    if differences:
        labels = list(dict.fromkeys(label for _, label in differences))
        diff_body = [
            [str(sp), *(_signed(differences[(sp, d)]) if (sp, d) in differences else MISSING for d in labels)]
            for sp in splits
        ]
        several = any(e.seeds > 1 for e in differences.values())
        text += (
            "\n## Paired differences\n\n"
            + (DIFFERENCES_SEVERAL if several else DIFFERENCES_ONE_SEED)
            + "\n\n"
            + _md_table(["split (%)", *labels], diff_body)
        )
    text += _models_table(rows)
    if any(s in REPORT_SYSTEMS for s in systems):  # Table 3 holds students only
        cmp_header = ["split (%)"]
        for s, name in REPORT_SYSTEMS.items():
            cmp_header += [f"{s} ours", f"{name} report"]
        cmp_body = []
        for sp in sorted(set(splits) | set(REPORT_RESULTS)):
            row = [str(sp)]
            for s in REPORT_SYSTEMS:
                row += [_fmt(ours.get((sp, s))), _fmt(REPORT_RESULTS.get(sp, {}).get(s))]
            cmp_body.append(row)
        text += "\n## Compared with the report (Table 3)\n\n" + _md_table(cmp_header, cmp_body)
    atomic_write_text(Path(md_path), text)
