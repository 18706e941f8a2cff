"""A pipeline run: pre-flight -> Ray, the LogitAggregator and the MLflow parent run -> the per-split graph
(pipeline/graph.py) -> results tables, plots and the timeline, under one MLflow parent run.

Every unit has a key made of the config it reads, its split's data and its inputs' keys. A finished unit
whose record has that key is reused, so the same command after an interruption continues where it
stopped; --fresh recomputes everything.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import ray

from asc_ray.config import config_hash, flatten
from asc_ray.errors import AscRayError, find_user_error
from asc_ray.features import frontend_sample_rate
from asc_ray.io import atomic_write_json
from asc_ray.outputs import read_record, unit_dir
from asc_ray.pipeline.graph import Scheduler, Unit, build_graph, run_in_thread, select
from asc_ray.pipeline.preflight import Context, preflight
from asc_ray.pipeline.runtime import detect_gpu, init_ray, log
from asc_ray.systems import get_system
from asc_ray.train import unit_key

STAGES = ("teachers", "logits", "students", "evaluate")


class Pipeline:
    def __init__(
        self, cfg: dict, data_dir: str | Path, output_dir: str | Path, splits: list[int], fresh: bool = False
    ):
        self.cfg, self.splits, self.fresh = cfg, sorted(splits), fresh
        self.data_dir, self.out = Path(data_dir).resolve(), Path(output_dir).resolve()
        self.graph = build_graph(
            list(cfg["teachers"]["systems"]) + list(cfg["students"]["systems"]), self.splits
        )
        self.ctx: Context | None = None
        self.parent_run_id: str | None = None
        self._keys: dict[Unit, str] = {}

    # ------------------------------------------------------------------------------------- start-up
    def start(self) -> None:
        ctx = self.ctx
        if self.fresh:
            for sub in ("units", "logits", "teachers", "students"):
                shutil.rmtree(self.out / sub, ignore_errors=True)
            if not self.cfg["storage_path"]:
                shutil.rmtree(self.out / "ray_results", ignore_errors=True)
            log("--fresh: previous results in the output dir removed (cache kept)")
        self.out.mkdir(parents=True, exist_ok=True)
        init_ray()
        from asc_ray.pipeline.aggregator import start_aggregator

        self.aggregator = start_aggregator(ctx.paths["logits_dir"], ctx.split_meta, ctx.data_keys)
        self.parent_run_id = ctx.tracker.start_run(
            f"pipeline {time.strftime('%Y-%m-%d %H:%M')}",
            {
                "role": "pipeline",
                "splits": ",".join(map(str, self.splits)),
                "profile": self.cfg["profile"],
                "data_dir": str(self.data_dir),
                "output_dir": str(self.out),
            },
        )
        ctx.tracker.log_params(self.parent_run_id, {**flatten(self.cfg), "splits": self.splits})
        atomic_write_json(self.out / "config.json", self.cfg)
        self.use_gpu = detect_gpu(self.cfg)
        res = ray.cluster_resources()
        log(
            f"Ray: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; results and checkpoints in {ctx.storage}"
        )

    # ---------------------------------------------------------------------------------------- units
    def key(self, u: Unit) -> str:
        """What a unit's result depends on: its config, its split's data and the keys of what it needs."""
        if u not in self._keys:
            upstream = config_hash([self.key(d) for d in self.graph[u]])
            if u.kind == "table":
                self._keys[u] = config_hash([u.name, u.split, upstream])
            else:
                s = get_system(u.name)
                self._keys[u] = unit_key(self.cfg, s, u.split, self.ctx.data_keys[u.split], upstream)
        return self._keys[u]

    def unit_dir(self, u: Unit) -> Path:
        return unit_dir(self.out, get_system(u.name).role, u.split, u.name)

    def table_keys(self, u: Unit) -> dict[str, str]:
        return {d.name: self.key(d) for d in self.graph[u]}

    def is_done(self, u: Unit) -> dict | None:
        if u.kind == "table":
            path = ray.get(self.aggregator.write_table.remote(u.name, u.split, self.table_keys(u)))
            return None if path is None else {"path": path, "key": self.key(u)}
        rec = read_record(self.unit_dir(u), self.key(u))
        if rec is not None and get_system(u.name).feeds:
            self._collect(u, rec)  # the aggregator may have lost it (e.g. the driver stopped in between)
        return rec

    def _collect(self, u: Unit, rec: dict) -> None:
        ray.get(
            self.aggregator.collect.remote(
                get_system(u.name).feeds,
                u.split,
                u.name,
                rec["files"]["split_logits"],
                rec["key"],
                rec.get("run_id"),
            )
        )

    def job(self, u: Unit) -> dict:
        return {
            "system": u.name,
            "split": u.split,
            "key": self.key(u),
            "cfg": self.cfg,
            "data_dir": str(self.data_dir),
            "output_dir": str(self.out),
            "unit_dir": str(self.unit_dir(u)),
            "tracker": self.ctx.tracker,
            "parent_run_id": self.parent_run_id,
            "aggregator": self.aggregator,
            "caches": self.ctx.caches,
            "shared": self.ctx.shared,
        }

    def launch(self, units: list[Unit], done) -> None:
        """Start each unit in the background: tables now, teachers as Ray Train runs, students as Tune runs."""
        from asc_ray.pipeline import students as st

        tables = [u for u in units if u.kind == "table"]
        teachers = [u for u in units if u.kind == "train" and u.role == "teacher"]
        pupils = [u for u in units if u.kind == "train" and u.role == "student"]
        for u in tables:
            rec = self.is_done(u)
            done(u, rec if rec is not None else RuntimeError(f"logits of {u} are incomplete"))
        for u in teachers:
            run_in_thread(lambda u=u: self._run_teacher(u, done))
        groups = [[u] for u in pupils] if st.searching(self.cfg) else ([pupils] if pupils else [])
        for g in groups:
            run_in_thread(lambda g=g: self._run_students(g, done))

    def _finished(self, u: Unit, done, error: BaseException | None = None) -> None:
        rec = read_record(self.unit_dir(u), self.key(u))
        if rec is None:
            done(u, error or RuntimeError(f"{u} finished without a result record"))
            return
        try:
            if get_system(u.name).feeds:
                self._collect(u, rec)
        except Exception as e:  # noqa: BLE001 - reported as this unit's failure
            done(u, e)
            return
        done(u, rec)

    def _run_teacher(self, u: Unit, done) -> None:
        from asc_ray.pipeline.teachers import build_trainer

        try:
            build_trainer(self.job(u), self.ctx.storage, self.use_gpu).fit()
        except Exception as e:  # noqa: BLE001 - one failed teacher must not lose the others' work
            done(u, e)
            return
        self._finished(u, done)

    def _run_students(self, group: list[Unit], done) -> None:
        from asc_ray.pipeline import students as st

        jobs = [self.job(u) for u in group]
        name = "students-" + config_hash(sorted(j["key"] for j in jobs))
        reported: set[Unit] = set()
        lock = threading.Lock()

        def trial_done(job: dict) -> None:  # a trial of a plain (no search) Tuner ended: its unit is done
            u = Unit("train", job["system"], job["split"])
            with lock:
                if u in reported or read_record(self.unit_dir(u), self.key(u)) is None:
                    return  # not finished after all (stopped, failed): reported when the Tuner returns
                reported.add(u)
            self._finished(u, done)

        callbacks = None if st.searching(self.cfg) else [st.TrialDone(trial_done)]
        try:
            grid = st.build_tuner(jobs, self.cfg, self.ctx.storage, self.use_gpu, name, callbacks).fit()
            outcomes = st.unit_outcomes(grid, jobs, st.searching(self.cfg))
        except Exception as e:  # noqa: BLE001
            for u in group:
                if u not in reported:
                    done(u, e)
            return
        for u in group:
            with lock:
                if u in reported:
                    continue
                reported.add(u)
            o = outcomes[(u.name, u.split)]
            if isinstance(o, BaseException):
                done(u, o)
            else:
                self._finished(u, done)

    def on_reused(self, u: Unit, rec: dict) -> None:
        """A reused unit shows in the new parent run as a small child pointing to the run that trained it."""
        if u.kind != "train" or u not in self.selected:
            return
        t = self.ctx.tracker
        rid = t.start_run(
            str(u),
            {
                "role": rec["role"],
                "system": u.name,
                "split": u.split,
                "augment": rec["augment"],
                "reused_from": rec.get("run_id") or "",
            },
            self.parent_run_id,
        )
        t.log_metrics(rid, {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "split"})
        t.finish(rid)

    @staticmethod
    def describe(u: Unit, rec: dict) -> str:
        if u.kind == "table":
            return f": {rec['path']}"
        return f": test macro accuracy {100 * rec['test_macro_acc']:.2f}%" + (
            f" (best of search on val: {rec['search_overrides']})" if rec.get("search_overrides") else ""
        )

    # -------------------------------------------------------------------------------------- results
    def evaluate(self, timeline: list) -> Path:
        from asc_ray.export import plot_class_accuracy, plot_timeline, run_header, write_results_table

        rows, teacher_rows = [], []
        ds = None  # the dataset, opened once for the teachers' ensembles
        for split in self.splits:
            per_system, teacher_logits = {}, []
            for name in self.cfg["students"]["systems"] + self.cfg["teachers"]["systems"]:
                u = Unit("train", name, split)
                r = read_record(self.unit_dir(u), self.key(u))
                if r is None:
                    continue
                row = {
                    "system": name,
                    "split": split,
                    "test_macro_acc": round(100 * r["test_macro_acc"], 2),
                    "val_macro_acc": round(100 * r["val_macro_acc"], 2),
                    "test_acc": round(100 * r["test_acc"], 2),
                    "test_macro_acc_fp32": round(100 * r.get("test_macro_acc_fp32", float("nan")), 2),
                    "train_seed": r.get("train_seed", ""),
                    "input_shape": r.get("input_shape", ""),
                    "sample_rate": r.get("sample_rate", ""),
                    **{
                        k[len("test_") :]: round(100 * v, 2)
                        for k, v in r.items()
                        if k.startswith("test_group_acc/")
                    },
                    "params": r["params"],
                    "macs": r["macs"],
                    "selected_epoch": r["selected_epoch"],
                    "mlflow_run_id": r.get("run_id") or "",
                }
                if u.role == "teacher":
                    teacher_rows.append(row)
                    teacher_logits.append(r.get("files", {}).get("test_logits"))
                else:
                    rows.append(row)
                    per_system[name] = {
                        k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("test_class_acc/")
                    }
            n_teachers = len(self.cfg["teachers"]["systems"])
            if n_teachers and len(teacher_logits) == n_teachers and all(teacher_logits):
                if ds is None:
                    from asc_ray.data.tau import TauDataset

                    ds = TauDataset.open(self.data_dir, self.cfg["data"]["split_dir"])
                teacher_rows.append(self._ensemble_row(split, ds, teacher_logits))
            if per_system:
                plot_class_accuracy(
                    per_system,
                    self.out / "plots" / f"class_accuracy_split{split}.png",
                    f"Class-wise test accuracy, split {split}%",
                )
        if timeline:  # this run's units (reused ones did not run): a bar each, per node
            entries = [{"label": str(u), "role": u.role, **t} for u, t in timeline]
            atomic_write_json(self.out / "timeline.json", entries)
            plot_timeline(
                entries, self.out / "plots" / "timeline.png", f"Pipeline timeline ({len(entries)} units)"
            )
        if not rows:
            raise AscRayError(
                "no student results to evaluate",
                path=self.out,
                fix="run the students stage first (jobs/students.py or jobs/full_pipeline.py)",
            )
        date = time.strftime("%Y-%m-%d %H:%M %Z")
        header = run_header(self.cfg["profile"], self.data_dir, date, epochs=self.cfg["train"]["epochs"])
        write_results_table(rows, self.out / "results.csv", self.out / "results.md", header)
        if self.ctx.eval_set is not None:
            self._predict_eval_set(rows)
        if teacher_rows:
            header = run_header(
                self.cfg["profile"], self.data_dir, date, "Teachers", self.cfg["train"]["epochs"]
            )
            write_results_table(teacher_rows, self.out / "teachers.csv", self.out / "teachers.md", header)
        t = self.ctx.tracker
        t.log_metrics(
            self.parent_run_id,
            {
                f"{r['system']}.split{r['split']}.test_macro_acc": r["test_macro_acc"]
                for r in rows + [r for r in teacher_rows if r["system"] == "teachers"]  # + the ensembles
            },
        )
        t.log_artifacts(
            self.parent_run_id,
            [self.out / n for n in ("results.csv", "results.md", "teachers.csv", "teachers.md")],
        )
        t.log_artifacts(self.parent_run_id, sorted((self.out / "plots").glob("*.png")), "plots")
        log(f"results: {self.out / 'results.md'}")
        print((self.out / "results.md").read_text(), flush=True)
        from asc_ray.mlflow_model import register_students  # registry versions, UI views, results table

        register_students(
            t,
            self.parent_run_id,
            [read_record(self.unit_dir(Unit("train", r["system"], r["split"]))) for r in rows],
            self.out,
            log,
        )
        return self.out / "results.csv"

    def _ensemble_row(self, split: int, ds, paths: list[str]) -> dict:
        """The teachers' ensemble on test (asc_ray.outputs.ensemble_on_test) as a row `teachers` of
        teachers.csv / teachers.md, so that students can be read against what they were taught by."""
        import numpy as np

        from asc_ray.outputs import ensemble_on_test

        logits, m = ensemble_on_test(ds, paths)
        log(
            f"teachers split{split}: the ensemble of {len(paths)} teachers (mean logits) has test macro "
            f"accuracy {100 * m['macro_acc']:.2f}%, mean |logit| {np.abs(logits).mean():.2f}"
        )
        return {
            "system": "teachers",
            "split": split,
            "test_macro_acc": round(100 * m["macro_acc"], 2),
            "test_acc": round(100 * m["acc"], 2),
            "mean_abs_logit": round(float(np.abs(logits).mean()), 3),
            **{k: round(100 * v, 2) for k, v in m.items() if k.startswith("group_acc/")},
        }

    def _predict_eval_set(self, rows: list[dict]) -> None:
        """DCASE submission files for the evaluation set, one per student and split (Ray tasks, in parallel)."""
        gpu = self.cfg["students"]["gpus_per_trial"] if self.use_gpu else 0
        task = ray.remote(num_cpus=self.cfg["students"]["cpus_per_trial"], num_gpus=gpu)(_eval_task)
        refs = []
        for r in rows:
            unit = self.unit_dir(Unit("train", r["system"], r["split"]))
            refs.append(
                task.remote(
                    r["system"],
                    self.cfg,
                    str(unit / "model_fp16.pt"),  # the deployed model: its predictions are in fp16
                    str(self.ctx.eval_set.root),
                    self.ctx.eval_caches[frontend_sample_rate(get_system(r["system"]).frontend)],
                    str(unit / "eval_output.csv"),
                    self.ctx.shared,
                )
            )
        for path in ray.get(refs):
            log(f"evaluation set predictions: {path}")

    # ------------------------------------------------------------------------------------------ run
    def run(self, stages=STAGES) -> None:
        from asc_ray.pipeline.lock import OutputLock

        t0 = time.time()
        status = "FAILED"
        self.lock = OutputLock(self.out, log=log)
        try:
            self.lock.acquire()  # first: a second run on this output dir stops before touching anything
            self.ctx = preflight(self.cfg, self.data_dir, self.out, self.splits)
            self.start()
            self.selected = select(self.graph, stages)
            sched = Scheduler(
                self.graph,
                self.selected,
                self.cfg,
                is_done=self.is_done,
                launch=self.launch,
                on_reused=self.on_reused,
                describe=self.describe,
            )
            sched.run()
            self.timeline = sched.timeline
            if sched.failures:
                _raise_failures(sched.failures)
            if "evaluate" in stages:
                self.evaluate(sched.timeline)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if self.parent_run_id:
                self.ctx.tracker.log_metrics(self.parent_run_id, {"wall_s": time.time() - t0})
                self.ctx.tracker.finish(self.parent_run_id, status)
                self._replay_spool()
            self.lock.release()
        log(f"pipeline finished in {time.time() - t0:.0f}s; outputs in {self.out}")

    def _replay_spool(self) -> None:
        """MLflow calls spooled during a server outage (by any worker): send them now."""
        sent, left = self.ctx.tracker.replay_spool()
        if sent:
            log(f"MLflow: {sent} call(s) spooled during an outage sent now")
        if left:
            log(
                f"MLflow: {left} call(s) still spooled in {self.ctx.tracker.spool_dir} (server unreachable); "
                f"when it is back: python -m asc_ray.tracking replay {self.out}"
            )


def _raise_failures(failures: dict) -> None:
    for exc in failures.values():
        err = find_user_error(exc) if isinstance(exc, BaseException) else None
        if err is not None:
            raise err
    names = ", ".join(map(str, failures))
    raise RuntimeError(
        f"{len(failures)} unit(s) failed: {names}. Finished work is kept; fix the cause "
        f"(see the log above) and run the same command again to resume."
    ) from next((e for e in failures.values() if isinstance(e, BaseException)), None)


def _eval_task(system: str, cfg: dict, model_path: str, eval_dir: str, cache, out: str, shared: list) -> str:
    from asc_ray.data.tau import EvalSet
    from asc_ray.export import write_dcase_output
    from asc_ray.pipeline.storage import verify_on_this_node
    from asc_ray.predict import predict_files

    verify_on_this_node(shared)
    s = get_system(system)
    ev = EvalSet(eval_dir)
    store = cache.open()  # pre-flight's cache of the evaluation set (this node's copy on a cluster)
    logits = predict_files(s, cfg, model_path, store, ev.files)
    cx = json.loads((Path(model_path).parent / "output.complexity.json").read_text())
    return str(write_dcase_output(out, ev.files, logits, cx))
