"""What must hold after the chaos harness's faulted run, against its undisturbed run. Each check returns the
problems it found (none: it holds).

- every unit finished once: each unit of the undisturbed run has its record (and each table its file) with the
  same key; no unit was reported done twice, none started again after it was done;
- the outputs are the undisturbed run's: results.csv and teachers.csv (but the MLflow run id), every Parquet
  table (every column; the metadata but the MLflow runs), and per unit its record's figures, its logits, its
  output.csv and its weights, bit for bit;
- MLflow (the faulted run's own store) holds exactly one training run per unit, FINISHED, the run its record
  names, with each epoch's figures once at steps 1..E and its test figures once, the same values as the
  undisturbed run's; no parent run left RUNNING; one registered version per student; nothing left spooled;
- the console said what happened: a line per fault in the driver's output.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import numpy as np
from helpers.console import STAMP, head, pattern
from reliability.chaos.faults import day_s

from asc_ray.layout import Layout, TableRef, UnitRef
from asc_ray.lock import STALE
from asc_ray.pipeline.graph import DONE, FAILED, START
from asc_ray.pipeline.run import SPOOL_SENT
from asc_ray.pipeline.students import RETRY
from asc_ray.pipeline.watch import AGGREGATOR_RESTARTED, NODE_LOST, SPOOLING, WORKER_RESTARTED
from asc_ray.predict.mlflow_model import registered_name

EPOCH_KEYS = ("train_loss", "lr", "epoch_s", "samples_per_s", "val_macro_acc")  # logged at every epoch
TIMES = {"started", "fit_started", "finish_started", "finished", "run_id", "node_id", "files"}


def _records(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text()) for p in Layout(out).records()}


def _label(rec: dict) -> str:
    """The unit as the driver's lines name it."""
    return UnitRef(rec["system"], rec["split"], rec.get("seed")).name


def _table_label(path: Path) -> str:
    """A logits table's unit as the driver's lines name it (asc_ray.pipeline.graph.Unit)."""
    m = re.fullmatch(r"(\w+?)(_seed(\d+))?_split(\d+)\.parquet", path.name)
    return str(TableRef(m.group(1), int(m.group(4)), int(m.group(3)) if m.group(3) else None))


# --------------------------------------------------------------------------------------------- units
def units_once(ref: Path, out: Path, driver_logs: list[str]) -> list[str]:
    problems = []
    want, got = _records(ref), _records(out)
    for unit, rec in want.items():
        if unit not in got:
            problems.append(f"{unit}: no result.json (lost)")
        elif got[unit].get("key") != rec.get("key"):
            problems.append(f"{unit}: record of another key")
    tables = sorted(p.name for p in (ref / "logits").glob("*.parquet"))
    if sorted(p.name for p in (out / "logits").glob("*.parquet")) != tables:
        problems.append(f"logits tables differ: {tables}")
    labels = [_label(r) for r in want.values()] + [
        _table_label(p) for p in (ref / "logits").glob("*.parquet")
    ]
    done_at: dict[str, int] = {}
    done, start = pattern(DONE, logged=True), pattern(START, logged=True)
    for i, text in enumerate(driver_logs):
        for line in text.splitlines():
            if (m := done.match(line)) and (label := m["unit"]) in labels:
                if label in done_at:
                    problems.append(f"{label}: reported done twice (runs {done_at[label] + 1} and {i + 1})")
                done_at[label] = i
            elif (m := start.match(line)) and m["unit"] in done_at:
                problems.append(f"{m['unit']}: started again (run {i + 1}) after it was done")
    return problems


# ------------------------------------------------------------------------------------------- outputs
def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "mlflow_run_id"} for r in csv.DictReader(f)]


def _max_diff(a, b) -> str:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return "shapes differ" if a.shape != b.shape else f"max |diff| {np.nanmax(np.abs(a - b)):.3g}"


def same_outputs(ref: Path, out: Path) -> list[str]:
    import pyarrow.parquet as pq
    import torch

    from asc_ray.data.logits import table_metadata

    problems = []
    for name in ("results.csv", "teachers.csv"):
        if (ref / name).is_file() and _csv(ref / name) != _csv(out / name):
            problems.append(f"{name} differs")
    for p in sorted((ref / "logits").glob("*.parquet")):
        a, b = pq.read_table(p), pq.read_table(out / "logits" / p.name)
        if a.column_names != b.column_names:
            problems.append(f"logits/{p.name}: columns {a.column_names} vs {b.column_names}")
            continue
        for c in a.column_names:
            x, y = a.column(c).to_pylist(), b.column(c).to_pylist()
            if c in ("filename", "scene_label", "device"):
                if x != y:
                    problems.append(f"logits/{p.name}: column {c} differs")
            elif not np.array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32)):
                problems.append(f"logits/{p.name}: column {c}: {_max_diff(x, y)}")
        meta = lambda path: {k: v for k, v in table_metadata(path).items() if k != "runs"}  # noqa: E731
        if meta(p) != meta(out / "logits" / p.name):
            problems.append(f"logits/{p.name}: metadata differs")
    got = _records(out)
    for unit, rec in _records(ref).items():
        if unit not in got:
            continue
        figures = lambda r: {k: v for k, v in r.items() if k not in TIMES}  # noqa: E731
        if repr(figures(rec)) != repr(figures(got[unit])):  # (repr: NaN == NaN)
            diff = [k for k in figures(rec) if repr(rec[k]) != repr(got[unit].get(k))]
            problems.append(f"{unit}: result.json figures differ: {diff[:6]}")
        for f in ("test_logits.npy", "split_logits.npy"):
            if (ref / unit / f).is_file():
                a, b = np.load(ref / unit / f), np.load(out / unit / f)
                if not np.array_equal(a, b):
                    problems.append(f"{unit}/{f}: {_max_diff(a, b)}")
        if (ref / unit / "output.csv").read_bytes() != (out / unit / "output.csv").read_bytes():
            problems.append(f"{unit}/output.csv differs")
        wa = torch.load(ref / unit / "model.pt", weights_only=True)
        wb = torch.load(out / unit / "model.pt", weights_only=True)
        bad = [k for k in wa if k not in wb or not torch.equal(wa[k], wb[k])]
        if bad:
            problems.append(
                f"{unit}/model.pt: {len(bad)} tensors differ ({bad[0]}: {_max_diff(wa[bad[0]], wb[bad[0]])})"
            )
    return problems


# -------------------------------------------------------------------------------------------- MLflow
def mlflow_runs(uri: str, ref_uri: str, ref: Path, out: Path, epochs: dict[str, int]) -> list[str]:
    """`epochs`: unit -> its epoch count (from the undisturbed run)."""
    from mlflow.tracking import MlflowClient

    c, rc = MlflowClient(uri), MlflowClient(ref_uri)
    exp = c.get_experiment_by_name("asc-ray").experiment_id
    runs = c.search_runs([exp], max_results=5000)
    trained = [r for r in runs if "key" in r.data.tags and "reused_from" not in r.data.tags]
    problems = []
    ref_records = _records(ref)
    for unit, rec in _records(out).items():
        mine = [r for r in trained if r.data.tags["key"] == rec["key"]]
        if len(mine) != 1:
            problems.append(f"{unit}: {len(mine)} MLflow training runs (want 1)")
            continue
        run = mine[0]
        if run.info.run_id != rec.get("run_id"):
            problems.append(
                f"{unit}: result.json names run {rec.get('run_id')}, MLflow's is {run.info.run_id}"
            )
        if run.info.status != "FINISHED":
            problems.append(f"{unit}: MLflow run {run.info.run_id} is {run.info.status}")
        e = epochs[unit]
        for key in EPOCH_KEYS:
            steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, key))
            if steps != list(range(1, e + 1)):
                problems.append(f"{unit}: {key} at steps {_steps(steps)} (want 1..{e} once each)")
        finals = c.get_metric_history(run.info.run_id, "test_macro_acc")
        if [m.step for m in finals] != [e]:
            problems.append(f"{unit}: test_macro_acc logged at steps {[m.step for m in finals]} (want [{e}])")
        theirs = ref_records.get(unit, {}).get("run_id")
        for key in ("train_loss", "lr"):
            if theirs and _values(c, run.info.run_id, key) != _values(rc, theirs, key):
                problems.append(f"{unit}: {key} history differs from the undisturbed run's")
        if rec["role"] == "student":
            versions = c.search_model_versions(f"name = '{registered_name(rec['system'], rec['split'])}'")
            mine_v = [v for v in versions if v.tags.get("key") == rec["key"]]
            if len(mine_v) != 1 or mine_v[0].run_id != run.info.run_id:
                problems.append(f"{unit}: {len(mine_v)} registered versions of its key (want 1, of its run)")
    parents = [r for r in runs if r.data.tags.get("role") == "pipeline"]
    statuses = sorted(r.info.status for r in parents)
    if "RUNNING" in statuses or statuses.count("FINISHED") != 1:
        problems.append(f"parent runs: {statuses} (want one FINISHED, none RUNNING)")
    left = list((out / "mlflow_spool").glob("spool-*")) if (out / "mlflow_spool").is_dir() else []
    if left:
        problems.append(f"{len(left)} spool file(s) left: {[p.name for p in left]}")
    return problems


def _values(client, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _steps(steps: list[int]) -> str:
    return str(steps) if len(steps) <= 12 else f"{steps[:6]}...{steps[-3:]} ({len(steps)})"


# ------------------------------------------------------------------------------------------- console
SAYS = {  # the lines the driver's console shows for each kind of fault (templates; {unit}: the unit's name)
    "worker": (WORKER_RESTARTED, FAILED),
    "trial": (RETRY, FAILED),
    "aggregator": (AGGREGATOR_RESTARTED,),
    "raylet": (NODE_LOST,),
    "driver": (STALE,),
    # the live line, or the run's closing one (a driver started after the outage began may only see the calls
    # its units spooled once they are sent)
    "mlflow": (SPOOLING, SPOOL_SENT),
}


def _says(kind: str, unit: str | None) -> list[re.Pattern]:
    """What a fault's line looks like: its unit named where known (any unit else)."""
    return [
        re.compile(f"^{STAMP}{re.escape(head(t, unit=unit))}", re.M)
        if unit and "{unit}" in t
        else pattern(t, True)
        for t in SAYS[kind]
    ]


# Ray declares a node dead after its health checks fail 5 times 3 s apart (Ray's defaults; 15-16 s measured
# from a raylet's SIGKILL to the driver's line), and the driver polls every 2 s
NODE_DEATH_S = 20


def console_says(faults, driver_logs: list[str], runs_of: list[int]) -> list[str]:
    """Each fault has its line in the driver's output after it (in the run it hit, or the next one when that run
    was stopped first: a driver killed a moment later never printed it). `runs_of[i]`: the run fault i hit."""
    problems = []
    for f in faults:
        if f.fired is None:
            continue
        # a victim that died before its rank line was written (a worker just restarted) has no known unit:
        # any unit's line then (the one it ran in may also have used up its max_failures: FAILED <unit>)
        lines = _says(f.kind, f.unit_name)
        said = lambda text, lines=lines: any(p.search(text) for p in lines)  # noqa: E731
        i = runs_of[f.n - 1]
        later = driver_logs[i + 1] if f.kind == "driver" and i + 1 < len(driver_logs) else driver_logs[i]
        text = later if f.kind == "driver" else _after(driver_logs[i], f.fired)
        if f.kind == "mlflow" and not said(text) and not f.met_calls:
            f.notes.append("no call met the outage: nothing to say")
            continue
        if f.kind == "raylet" and not said(text):
            fired = day_s(time.strftime("%H:%M:%S", time.localtime(f.fired)))
            left = (_last_stamp_s(driver_logs[i]) - fired) % 86400  # (past midnight too)
            if left < NODE_DEATH_S:
                f.notes.append(f"the run ended {left} s after it, before Ray declares a node dead")
                continue
        if not said(text) and not (f.kind != "driver" and f.overtaken):
            problems.append(f"fault {f.n} ({f.kind}): no console line {SAYS[f.kind]} after it")
    return problems


STAMPED = re.compile(r"^\[asc-ray (\d\d:\d\d:\d\d)\]", re.M)  # asc_ray.console.log's line prefix


def _last_stamp_s(text: str) -> int:
    """The last [asc-ray HH:MM:SS] stamp of a driver log, in seconds of its day."""
    stamps = STAMPED.findall(text)
    return day_s(stamps[-1]) if stamps else 0


def _after(text: str, t: float) -> str:
    """The lines of a driver log from the one printed at or after time t (its [asc-ray HH:MM:SS] stamps)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(t - 1))
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = STAMPED.match(line)
        if m and m.group(1) >= stamp:
            return "\n".join(lines[i:])
    return ""
