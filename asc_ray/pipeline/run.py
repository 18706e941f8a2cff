"""A pipeline run: lock the output dir, pre-flight, start Ray, the LogitAggregator and the MLflow parent run,
run the per-split graph (pipeline/graph.py), then report (pipeline/results.py).

Every unit has a key made of the config it reads, its split's data and its inputs' keys (pipeline/keys.py).
A finished unit whose record has that key is reused, so the same command after an interruption continues
where it stopped; --fresh recomputes everything.
"""

from __future__ import annotations

import math
import shutil
import socket
import threading
import time
from pathlib import Path

import ray

from asc_ray.config import as_dict, config_hash, flatten
from asc_ray.console import log
from asc_ray.data.tau import TauDataset
from asc_ray.errors import AGAIN, find_user_error
from asc_ray.io import atomic_write_json
from asc_ray.layout import STAGES, Layout, PretrainRef, UnitRef, tuner_name
from asc_ray.lock import OutputLock
from asc_ray.pipeline import students as st
from asc_ray.pipeline.aggregator import aggregator_name, start_aggregator
from asc_ray.pipeline.graph import Scheduler, Unit, build_graph, run_in_thread, select, share_idle
from asc_ray.pipeline.inputs import check_inputs
from asc_ray.pipeline.keys import Keys
from asc_ray.pipeline.preflight import Context, preflight
from asc_ray.pipeline.pretraining import PretrainJob, pretrain_task
from asc_ray.pipeline.results import export_eval_set, report_to_mlflow, write_results
from asc_ray.pipeline.runtime import detect_gpu, init_ray, unit_resources
from asc_ray.pipeline.teachers import build_trainer
from asc_ray.pipeline.unit import UnitJob
from asc_ray.pipeline.watch import Watcher
from asc_ray.systems import get_system, hparams
from asc_ray.train import read_record
from asc_ray.train.pretrain import WEIGHTS, corpus_dir, pretrain_dir, pretrained_models

# the driver's console lines besides the scheduler's (asc_ray.pipeline.graph) and the watcher's
RAY = "Ray: {cpus:g} CPUs, {gpus:g} GPUs; results and checkpoints in {storage}"
WORKERS = "{unit}: {workers} workers, a batch of {batch} each ({why})"
RESULTS = "results: {path}"
SPOOL_SENT = "MLflow: {sent} call(s) spooled during an outage sent now"


class Pipeline:
    def __init__(
        self, cfg, data_dir: str | Path, output_dir: str | Path, splits: list[int], fresh: bool = False
    ):
        self.cfg, self.splits, self.fresh = cfg, sorted(splits), fresh
        self.data_dir, self.out = Path(data_dir).resolve(), Path(output_dir).resolve()
        self.layout = Layout(self.out)
        systems = list(cfg.teachers.systems) + list(cfg.students.systems)
        self.graph = build_graph(systems, self.splits, cfg.students.seeds, pretrained_models(cfg))
        self.ctx: Context | None = None
        self.keys: Keys | None = None
        self.parent_run_id: str | None = None
        self.scheduler: Scheduler | None = None
        self.idle_at_launch: dict[
            Unit, float
        ] = {}  # a critical-path unit: the GPUs (CPUs) idle as it launched

    # ------------------------------------------------------------------------------------- start-up
    def start(self) -> None:
        ctx = self.ctx
        if self.fresh:
            for folder in self.layout.results():
                shutil.rmtree(folder, ignore_errors=True)
            if not self.cfg.storage_path:
                shutil.rmtree(self.out / "ray_results", ignore_errors=True)
            log("--fresh: previous results in the output dir removed (caches kept: waveforms, pretraining)")
        self.out.mkdir(parents=True, exist_ok=True)
        init_ray()
        self.aggregator = start_aggregator(self.out, ctx.split_meta, ctx.data_keys)
        self.watch = Watcher(self.aggregator, ctx.tracker.spool_dir, self.cfg.teachers.max_failures)
        self.watch.start()
        where = {"role": "pipeline", "output_dir": str(self.out), "host": socket.gethostname()}
        for rid in ctx.tracker.stale_runs(where):  # we hold the output dir's lock: its driver is gone
            ctx.tracker.finish(rid, "KILLED")
            log(
                f"MLflow: parent run {rid} of an earlier run on this output dir (its driver died) marked KILLED"
            )
        self.parent_run_id = ctx.tracker.start_run(
            f"pipeline {time.strftime('%Y-%m-%d %H:%M')}",
            {
                **where,
                "splits": ",".join(map(str, self.splits)),
                "profile": self.cfg.profile,
                "data_dir": str(self.data_dir),
            },
        )
        ctx.tracker.log_params(self.parent_run_id, {**flatten(self.cfg), "splits": self.splits})
        atomic_write_json(self.out / "config.json", as_dict(self.cfg))
        self.use_gpu = detect_gpu(self.cfg)
        res = ray.cluster_resources()
        log(RAY.format(cpus=res.get("CPU", 0), gpus=res.get("GPU", 0), storage=ctx.storage))

    # ---------------------------------------------------------------------------------------- units
    def unit_dir(self, u: UnitRef | PretrainRef) -> Path:
        if u.kind == "pretrain":  # in the cache, by its key: runs sharing the cache reuse it (--fresh too)
            return pretrain_dir(self.cfg, self.ctx.paths.cache_dir, u.model)
        return self.layout.unit_dir(u)

    def record(self, u: UnitRef) -> dict | None:
        """A finished unit's record, if it has the key the unit has now."""
        return read_record(self.unit_dir(u), self.keys[u])

    def is_done(self, u: Unit) -> dict | None:
        if u.kind == "table":
            path = ray.get(self.aggregator.write_table.remote(u, self.keys.of_inputs(u)))
            return None if path is None else {"path": path, "key": self.keys[u]}
        rec = self.record(u)
        if rec is not None and u.feeds:
            self._collect(u, rec)  # the aggregator may have lost it (e.g. the driver stopped in between)
        return rec

    def _collect(self, u: UnitRef, rec: dict) -> None:
        """The unit's logits to the table it feeds."""
        path = rec["files"]["split_logits"]
        ray.get(self.aggregator.collect.remote(u.feeds, u.system, path, rec["key"], rec.get("run_id")))

    def job(self, u: UnitRef) -> UnitJob:
        start = [self.unit_dir(d) / WEIGHTS for d in self.graph[u] if d.kind == "pretrain"]
        return UnitJob(
            system=u.system,
            split=u.split,
            key=self.keys[u],
            cfg=self.cfg,
            data_dir=str(self.data_dir),
            output_dir=str(self.out),
            unit_dir=str(self.unit_dir(u)),
            tracker=self.ctx.tracker,
            parent_run_id=self.parent_run_id,
            aggregator=aggregator_name(self.out),
            caches=self.ctx.caches,
            shared=self.ctx.shared,
            seed=u.seed,
            init_weights=str(start[0]) if start else None,
        )

    def launch(self, units: list[Unit], done) -> None:
        """Start each unit in the background: tables now, teachers as Ray Train runs, students as Tune runs (a
        student given several workers on the critical path: a Ray Train run, data parallel)."""
        tables = [u for u in units if u.kind == "table"]
        for u in units:
            if u.kind == "pretrain":
                run_in_thread(lambda u=u: self._run_pretrain(u, done))
        plan = self.plan_workers([u for u in units if u.kind == "train"])
        trains = [u for u in plan if u.role == "teacher" or plan[u] > 1]
        pupils = [u for u in plan if u.role == "student" and plan[u] == 1]
        for u in tables:
            rec = self.is_done(u)
            done(u, rec if rec is not None else RuntimeError(f"logits of {u} are incomplete"))
        for u in trains:
            run_in_thread(lambda u=u: self._run_train(u, done, plan[u]))
        groups = [[u] for u in pupils] if st.searching(self.cfg) else ([pupils] if pupils else [])
        for g in groups:
            run_in_thread(lambda g=g: self._run_students(g, done))

    def _finished(self, u: Unit, done, error: BaseException | None = None) -> None:
        rec = self.record(u)
        if rec is None:
            done(u, error or RuntimeError(f"{u} finished without a result record"))
            return
        try:
            if u.feeds:
                self._collect(u, rec)
        except Exception as e:  # noqa: BLE001 - reported as this unit's failure
            done(u, e)
            return
        done(u, rec)

    def plan_workers(self, units: list[Unit]) -> dict[Unit, int]:
        """Workers per unit: 1 (a teacher: teachers.num_workers), or for a unit on the critical path up to
        teachers/students.critical_path_workers, as many as the GPUs (CPUs without GPUs) that the other units
        launched with it leave idle (graph.share_idle)."""
        c, kind = self.cfg, "GPU" if self.use_gpu else "CPU"
        caps = {
            "teacher": c.teachers.critical_path_workers if c.teachers.num_workers == 1 else 0,
            "student": 0 if st.searching(c) else c.students.critical_path_workers,  # a search: Tune's trials
        }
        if not any(caps.values()) or self.scheduler is None or not self.scheduler.critical:
            return {u: 1 for u in units}

        def demand(u: Unit, n: int) -> float:
            if u.role == "student" and n == 1:  # a Tune trial
                return unit_resources(c, "student", self.use_gpu)[kind]
            n = n if n > 1 or u.role == "student" else c.teachers.num_workers
            return n * unit_resources(c, u.role, self.use_gpu, data_parallel=True)[kind]

        idle = ray.available_resources().get(kind, 0.0)
        plan = share_idle(units, self.scheduler.critical, idle, demand, lambda u: caps[u.role])
        self.idle_at_launch.update({u: idle for u in units if plan[u] > 1})
        return plan

    def _run_train(self, u: Unit, done, workers: int = 1) -> None:
        """A teacher, or a student on `workers` > 1 workers, as a Ray Train run."""
        job = self.job(u)
        if workers > 1:  # a critical-path unit: the recipe's batch split over its workers
            idle = self.idle_at_launch.get(u, 0.0)
            job.batch_size = math.ceil(hparams(get_system(u.system), self.cfg).batch_size / workers)
            job.workers_why = f"critical path: {idle:g} {'GPU' if self.use_gpu else 'CPU'}s idle at launch"
            log(WORKERS.format(unit=u, workers=workers, batch=job.batch_size, why=job.workers_why))
        elif u.role == "teacher" and self.cfg.teachers.num_workers > 1:
            job.workers_why = "teachers.num_workers"
        self.watch.follow(str(u), self.unit_dir(u))  # a restarted worker gets a console line
        try:
            build_trainer(job, self.ctx.storage, self.use_gpu, workers if workers > 1 else None).fit()
        except Exception as e:  # noqa: BLE001 - one failed teacher must not lose the others' work
            done(u, e)
            return
        finally:
            self.watch.unfollow(str(u))
        self._finished(u, done)

    def _run_pretrain(self, u: Unit, done) -> None:
        """The pretraining unit as a Ray task with a teacher's resources (pipeline/pretraining.py)."""
        job = PretrainJob(
            model=u.model,
            cfg=self.cfg,
            key=self.keys[u],
            unit_dir=str(self.unit_dir(u)),
            corpus_dir=str(corpus_dir(self.cfg, self.ctx.paths.cache_dir)),
            tracker=self.ctx.tracker,
            parent_run_id=self.parent_run_id,
        )
        try:
            rec = ray.get(pretrain_task(job, unit_resources(self.cfg, "teacher", self.use_gpu)))
        except Exception as e:  # noqa: BLE001 - reported as this unit's failure
            done(u, e)
            return
        done(u, rec)

    def _run_students(self, group: list[Unit], done) -> None:
        jobs = [self.job(u) for u in group]
        name = tuner_name(config_hash(sorted(j.key for j in jobs)))
        reported: set[Unit] = set()
        lock = threading.Lock()

        def trial_done(job: dict) -> None:  # a trial of a plain (no search) Tuner ended: its unit is done
            u = UnitRef(job["system"], job["split"], job["seed"])
            with lock:
                if u in reported or self.record(u) is None:
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
            o = outcomes[u]
            if isinstance(o, BaseException):
                done(u, o)
            else:
                self._finished(u, done)

    def on_reused(self, u: Unit, rec: dict) -> None:
        """A reused unit shows in the new parent run as a small child pointing to the run that trained it."""
        if u.kind == "table" or u not in self.selected:
            return
        t = self.ctx.tracker
        if u.kind == "pretrain":  # as its own run names it
            tags = {"role": u.role, "system": u.name, "seed": self.cfg.seed}
        else:
            tags = {"role": rec["role"], "system": u.system, "split": u.split, "augment": rec["augment"]}
        if u.seed is not None:
            tags["seed"] = u.seed
        rid = t.start_run(str(u), {**tags, "reused_from": rec.get("run_id") or ""}, self.parent_run_id)
        if rid is None:
            return  # MLflow unreachable: the record is on disk either way
        t.log_metrics(rid, {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "split"})
        t.finish(rid)

    @staticmethod
    def describe(u: Unit, rec: dict) -> str:
        if u.kind == "table":
            return f": {rec['path']}"
        if u.kind == "pretrain":
            return f": holdout accuracy {100 * rec['holdout_acc']:.1f}% on {rec['classes']} corpus classes"
        return f": test macro accuracy {100 * rec['test_macro_acc']:.2f}%" + (
            f" (best of search on val: {rec['search_overrides']})" if rec.get("search_overrides") else ""
        )

    # ------------------------------------------------------------------------------------------ run
    def evaluate(self, timeline: list) -> Path:
        rows, teacher_rows = write_results(
            self.cfg, self.splits, self.data_dir, self.out, self.record, timeline
        )
        if self.ctx.eval_set is not None:
            export_eval_set(
                self.cfg,
                self.out,
                rows,
                self.ctx.eval_set,
                self.ctx.eval_caches,
                self.ctx.shared,
                self.use_gpu,
            )
        log(RESULTS.format(path=self.out / "results.md"))
        print((self.out / "results.md").read_text(), flush=True)
        report_to_mlflow(self.ctx.tracker, self.parent_run_id, self.out, rows, teacher_rows, self.record)
        return self.out / "results.csv"

    def run(
        self, stages=STAGES, scheduler: type[Scheduler] = Scheduler, ds: TauDataset | None = None
    ) -> None:
        """`ds`: the dataset check_inputs() opened already (else checked here, before anything is created)."""
        t0 = time.time()
        status = "FAILED"
        ds = ds or check_inputs(self.cfg, self.data_dir, self.out, self.splits)
        self.lock = OutputLock(self.out, log=log)
        try:
            self.lock.acquire()  # first on disk: a second run on this output dir stops before touching anything
            self.ctx = preflight(self.cfg, self.data_dir, self.out, self.splits, ds)
            self.keys = Keys(self.graph, self.cfg, self.ctx.data_keys)
            self.start()
            self.selected = select(self.graph, stages)
            sched = scheduler(
                self.graph,
                self.selected,
                self.cfg,
                is_done=self.is_done,
                launch=self.launch,
                on_reused=self.on_reused,
                describe=self.describe,
            )
            self.scheduler = sched  # its critical path sizes what launch() starts
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
            if getattr(self, "watch", None):
                self.watch.stop()
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
            log(SPOOL_SENT.format(sent=sent))
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
        f"(see the log above) and {AGAIN} to resume."
    ) from next((e for e in failures.values() if isinstance(e, BaseException)), None)
