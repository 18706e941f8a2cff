"""The whole pipeline: pre-flight checks -> teachers (Ray Train) -> logits tables (LogitAggregator) ->
students (Ray Tune) -> evaluate (results.csv / results.md / plots), under one MLflow parent run.

Every unit (a teacher or student on a split, a logits table) has a key made of the config it reads, the
data fingerprint and its inputs' keys. A finished unit whose key matches is reused, so the same command
after an interruption continues where it stopped; --fresh recomputes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import ray

from asc_ray.config import config_hash, flatten
from asc_ray.errors import AscRayError, find_user_error
from asc_ray.pipeline.runtime import detect_gpu, init_ray, log
from asc_ray.systems import TEACHERS, get_system
from asc_ray.train import cache_file_list, resolve_paths, unit_key

STAGES = ("teachers", "logits", "students", "evaluate")
STUDENTS_FIRST = ("kd_ensemble", "bcbl24", "baseline")  # tfs learns from kd_ensemble: after them


class Pipeline:
    def __init__(
        self, cfg: dict, data_dir: str | Path, output_dir: str | Path, splits: list[int], fresh: bool = False
    ):
        self.cfg, self.splits, self.fresh = cfg, sorted(splits), fresh
        self.data_dir = Path(data_dir).resolve()
        self.out = Path(output_dir).resolve()
        self.paths = resolve_paths(cfg, self.data_dir, self.out)
        self.storage = cfg["storage_path"] or str(self.out / "ray_results")
        self.units_dir = self.out / "units"
        self.tracker = None
        self.parent_run_id: str | None = None
        self.aggregator = None
        self.results: dict[tuple[str, int], dict] = {}

    # ------------------------------------------------------------------------------------ pre-flight
    def preflight(self) -> None:
        """Everything that can be checked before expensive work: data, audio, IRs, weights, MLflow."""
        from asc_ray.data.cache import build_cache, cache_key
        from asc_ray.data.irs import load_irs
        from asc_ray.data.tau import TauDataset
        from asc_ray.features import frontend_sample_rate
        from asc_ray.tracking import Tracker, check_tracking, resolve_tracking_uri

        uri = resolve_tracking_uri(self.cfg["mlflow"]["tracking_uri"])
        check_tracking(uri)
        self.tracker = Tracker(uri, self.cfg["mlflow"]["experiment"])
        log(f"MLflow tracking at {uri} (experiment '{self.tracker.experiment}')")

        if not self.data_dir.is_dir():
            raise AscRayError(
                "data dir not found",
                path=self.data_dir,
                fix="pass --data-dir with the TAU22 development set (or run "
                "`python -m asc_ray.data.synth --out DIR` for a synthetic one)",
            )
        ds = TauDataset.open(self.data_dir, self.cfg["data"]["split_dir"])
        self.split_meta = {}
        for s in self.splits:
            files = ds.split_files(s)
            self.split_meta[s] = (files, [ds.clips[f].scene_label for f in files], ds.devices(files))
        test = ds.test_files()
        log(
            f"data: {len(ds.clips)} clips in meta.csv; splits "
            + ", ".join(f"{s}%={len(self.split_meta[s][0])}" for s in self.splits)
            + f"; test {len(test)}"
        )
        systems = [get_system(n) for n in self.cfg["teachers"]["systems"] + self.cfg["students"]["systems"]]
        files = cache_file_list(ds)
        for rate in sorted({frontend_sample_rate(s.model) for s in systems}):
            build_cache(ds, files, rate, self.paths["cache_dir"], progress=True)  # decodes every file once
        self.eval_set = None
        if self.cfg["data"]["eval_dir"]:
            from asc_ray.data.tau import EvalSet

            self.eval_set = EvalSet(self.cfg["data"]["eval_dir"])
            for rate in sorted(
                {frontend_sample_rate(get_system(n).model) for n in self.cfg["students"]["systems"]}
            ):
                build_cache(self.eval_set, self.eval_set.files, rate, self.paths["cache_dir"], progress=True)
            log(f"evaluation set: {len(self.eval_set.files)} clips from {self.eval_set.root}")
        if any(s.dir for s in systems):
            irs = load_irs(self.paths["irs_dir"], 32000)
            log(f"device impulse responses: {len(irs)} from {self.paths['irs_dir']}")
        if any(s.model == "passt" for s in systems) and self.cfg["passt"]["pretrained"]:
            from asc_ray.models.passt import find_checkpoint

            log(f"PaSST AudioSet weights: {find_checkpoint()}")
        digest = hashlib.sha256()
        for name in ["meta.csv"] + [f"split{s}.csv" for s in self.splits] + ["test.csv"]:
            p = ds._split_path(name) if name != "meta.csv" else self.data_dir / "meta.csv"
            digest.update(Path(p).read_bytes())
        self.data_key = config_hash([digest.hexdigest(), cache_key(ds, files, 0)])

    # -------------------------------------------------------------------------------------- plumbing
    def start(self) -> None:
        if self.fresh:
            for sub in ("units", "logits", "teachers", "students"):
                shutil.rmtree(self.out / sub, ignore_errors=True)
            if not self.cfg["storage_path"]:
                shutil.rmtree(self.out / "ray_results", ignore_errors=True)
            log("--fresh: previous results in the output dir removed (cache kept)")
        self.out.mkdir(parents=True, exist_ok=True)
        init_ray()
        from asc_ray.pipeline.aggregator import start_aggregator

        self.aggregator_expected = {
            "teachers": list(self.cfg["teachers"]["systems"]),
            "kd_ensemble": ["kd_ensemble"],
        }
        self.aggregator = start_aggregator(
            self.paths["logits_dir"], self.split_meta, self.aggregator_expected, self.data_key
        )
        self.parent_run_id = self.tracker.start_run(
            f"pipeline {time.strftime('%Y-%m-%d %H:%M')}",
            {
                "role": "pipeline",
                "splits": ",".join(map(str, self.splits)),
                "profile": self.cfg["profile"],
                "data_dir": str(self.data_dir),
                "output_dir": str(self.out),
                "data_key": self.data_key,
            },
        )
        self.tracker.log_params(self.parent_run_id, {**flatten(self.cfg), "splits": self.splits})
        (self.out / "config.json").write_text(json.dumps(self.cfg, indent=2))
        self.use_gpu = detect_gpu(self.cfg)
        log(
            f"Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs;"
            f" results and checkpoints in {self.storage}"
        )

    def job(self, system: str, split: int, key: str) -> dict:
        return {
            "system": system,
            "split": split,
            "key": key,
            "cfg": self.cfg,
            "data_dir": str(self.data_dir),
            "output_dir": str(self.out),
            "tracker": self.tracker,
            "parent_run_id": self.parent_run_id,
            "aggregator": self.aggregator,
        }

    def key(self, system: str, split: int) -> str:
        s = get_system(system)
        upstream = ""
        if s.needs == "teachers":
            upstream = config_hash([self.key(t, split) for t in self.cfg["teachers"]["systems"]])
        elif s.needs == "kd_ensemble":
            upstream = self.key("kd_ensemble", split)
        return unit_key(self.cfg, s, split, self.data_key, upstream)

    def _unit_file(self, system: str, split: int) -> Path:
        return self.units_dir / f"{system}_split{split}.json"

    def done(self, system: str, split: int) -> dict | None:
        p = self._unit_file(system, split)
        if p.is_file():
            r = json.loads(p.read_text())
            if r.get("key") == self.key(system, split):
                return r
        return None

    def record(self, result: dict, reused: bool = False) -> None:
        system, split = result["system"], result["split"]
        self.results[(system, split)] = result
        p = self._unit_file(system, split)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(json.dumps(result, indent=1, default=float))
        os.replace(tmp, p)
        if (
            reused
        ):  # the new parent run shows every unit, reused ones as small children pointing to the original
            rid = self.tracker.start_run(
                f"{system} split{split}",
                {
                    "role": result["role"],
                    "system": system,
                    "split": split,
                    "augment": result["augment"],
                    "reused_from": result.get("run_id") or "",
                },
                self.parent_run_id,
            )
            self.tracker.log_metrics(
                rid, {k: v for k, v in result.items() if isinstance(v, (int, float)) and k not in ("split",)}
            )
            self.tracker.finish(rid)

    # ---------------------------------------------------------------------------------------- stages
    def teachers(self) -> None:
        todo = []
        for split in self.splits:
            for t in self.cfg["teachers"]["systems"]:
                key = self.key(t, split)
                prev = ray.get(
                    self.aggregator.has.remote("teachers", split, t, key)
                )  # logits + result kept together
                if prev is not None:
                    prev.update(key=key)
                    self.record(prev, reused=True)
                else:
                    todo.append(self.job(t, split, key))
        n_all = len(self.splits) * len(self.cfg["teachers"]["systems"])
        cap = self.cfg["teachers"]["max_concurrent"]
        log(
            f"teachers: {len(todo)} to train, {n_all - len(todo)} reused (Ray Train; "
            f"{'all launched at once' if not cap else f'{cap} at a time'})"
        )
        if not todo:
            return
        from asc_ray.pipeline.teachers import train_teachers

        finished = [0]

        def on_done(job, res):
            finished[0] += 1
            got = ray.get(self.aggregator.has.remote("teachers", job["split"], job["system"], job["key"]))
            if got is not None and not isinstance(res, Exception):
                self.record(got)
                log(
                    f"teacher {finished[0]}/{len(todo)} done: {job['system']} split{job['split']} "
                    f"test macro accuracy {100 * got['test_macro_acc']:.2f}%"
                )
            else:
                log(
                    f"teacher {finished[0]}/{len(todo)} FAILED: {job['system']} split{job['split']}: "
                    f"{_short(res)}"
                )

        outcomes = train_teachers(
            todo, self.storage, self.use_gpu, on_done, self.cfg["teachers"]["max_concurrent"]
        )
        self._raise_failures("teacher", {k: v for k, v in outcomes.items() if isinstance(v, Exception)})

    def logits(self) -> None:
        self._write_tables(
            "teachers", "run the teachers stage first (jobs/teachers.py or jobs/full_pipeline.py)"
        )

    def _write_tables(self, source: str, fix: str) -> None:
        """Have the aggregator write (or confirm) each split's table of `source`, then read it back validated."""
        models = self.aggregator_expected[source]
        for split in self.splits:
            path = ray.get(self.aggregator.maybe_write.remote(source, split))
            if path is None:
                raise AscRayError(
                    f"{source} logits for split {split} are incomplete",
                    path=self.paths["logits_dir"],
                    fix=fix,
                )
            files, _ = ray.get(self.aggregator.table.remote(source, split))  # validates the table
            log(
                f"logits: {path} ({len(files)} clips x {len(models)} {'+'.join(models)}"
                + (" + mean)" if len(models) > 1 else ")")
            )

    def students(self) -> None:
        from asc_ray.pipeline.students import train_students

        wanted = self.cfg["students"]["systems"]
        for phase in ([s for s in wanted if s in STUDENTS_FIRST], [s for s in wanted if s == "tfs"]):
            todo = []
            for split in self.splits:
                for s in phase:
                    prev = self.done(s, split)
                    feeds = get_system(s).feeds  # its logits must be in the aggregator too, to reuse it
                    if prev is not None and (
                        feeds is None
                        or ray.get(self.aggregator.has.remote(feeds, split, s, prev["key"])) is not None
                    ):
                        self.record(prev, reused=True)
                    else:
                        todo.append(self.job(s, split, self.key(s, split)))
            if not phase:
                continue
            log(
                f"students ({', '.join(phase)}): {len(todo)} trials to run, "
                f"{len(phase) * len(self.splits) - len(todo)} reused (Ray Tune, all splits at once)"
            )
            if not todo:
                self._student_tables(phase)
                continue
            name = "students-" + config_hash(sorted(j["key"] for j in todo))
            grids = train_students(todo, self.cfg, self.storage, self.use_gpu, name)
            failures = {}
            for grid in grids:
                best: dict[tuple, dict] = {}
                for r in grid:
                    m = r.metrics or {}
                    cfg_trial = (r.config or {}).get("trial", {})
                    k = (cfg_trial.get("job", {}).get("system"), cfg_trial.get("job", {}).get("split"))
                    if r.error is not None or not m.get("done"):
                        failures[k] = r.error or RuntimeError("trial stopped before it finished")
                        continue
                    if k not in best or m["val_macro_acc"] > best[k]["val_macro_acc"]:
                        best[k] = {**m, "overrides": cfg_trial.get("overrides", {})}
                for k, m in best.items():
                    failures.pop(k, None)
                    result = {
                        x: m[x]
                        for x in m
                        if not x.startswith(
                            (
                                "time_",
                                "training_iteration",
                                "timestamp",
                                "date",
                                "hostname",
                                "node_ip",
                                "pid",
                                "done",
                                "trial_id",
                                "config",
                                "checkpoint_dir_name",
                            )
                        )
                    }
                    self.record(result)
                    log(
                        f"student done: {k[0]} split{k[1]} test macro accuracy {100 * m['test_macro_acc']:.2f}%"
                        + (f" (best of search on val: {m['overrides']})" if m["overrides"] else "")
                    )
            self._raise_failures("student", failures)
            self._student_tables(phase)

    def _student_tables(self, phase: list[str]) -> None:
        for s in phase:
            if get_system(s).feeds:  # kd_ensemble: its logits teach tfs
                self._write_tables(s, f"re-run the students stage (the {s} student writes them)")

    def evaluate(self) -> Path:
        from asc_ray.export import plot_class_accuracy, write_results_table

        rows, teacher_rows = [], []
        for split in self.splits:
            per_system = {}
            for name in self.cfg["students"]["systems"] + self.cfg["teachers"]["systems"]:
                r = self.results.get((name, split)) or self.done(name, split)
                if r is None:
                    continue
                row = {
                    "system": name,
                    "split": split,
                    "test_macro_acc": round(100 * r["test_macro_acc"], 2),
                    "val_macro_acc": round(100 * r["val_macro_acc"], 2),
                    "test_acc": round(100 * r["test_acc"], 2),
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
                if name in TEACHERS:
                    teacher_rows.append(row)
                else:
                    rows.append(row)
                    per_system[name] = {
                        k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("test_class_acc/")
                    }
            if per_system:
                plot_class_accuracy(
                    per_system,
                    self.out / "plots" / f"class_accuracy_split{split}.png",
                    f"Class-wise test accuracy, split {split}%",
                )
        if not rows:
            raise AscRayError(
                "no student results to evaluate",
                path=self.out,
                fix="run the students stage first (jobs/students.py or jobs/full_pipeline.py)",
            )
        write_results_table(rows, self.out / "results.csv", self.out / "results.md")
        if self.eval_set is not None:
            self._predict_eval_set(rows)
        if teacher_rows:
            write_results_table(teacher_rows, self.out / "teachers.csv", self.out / "teachers.md")
        t = self.tracker
        t.log_metrics(
            self.parent_run_id,
            {f"{r['system']}.split{r['split']}.test_macro_acc": r["test_macro_acc"] for r in rows},
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
            [self.results.get((r["system"], r["split"])) or self.done(r["system"], r["split"]) for r in rows],
            self.out,
            log,
        )
        return self.out / "results.csv"

    def _predict_eval_set(self, rows: list[dict]) -> None:
        """DCASE submission files for the evaluation set, one per student and split (Ray tasks, in parallel)."""
        gpu = self.cfg["students"]["gpus_per_trial"] if self.use_gpu else 0
        task = ray.remote(num_cpus=self.cfg["students"]["cpus_per_trial"], num_gpus=gpu)(_eval_task)
        refs = []
        for r in rows:
            unit = self.out / "students" / f"split{r['split']}" / r["system"]
            refs.append(
                task.remote(
                    r["system"],
                    self.cfg,
                    str(unit / "model.pt"),
                    str(self.eval_set.root),
                    str(self.paths["cache_dir"]),
                    str(unit / "eval_output.csv"),
                )
            )
        for path in ray.get(refs):
            log(f"evaluation set predictions: {path}")

    def _raise_failures(self, what: str, failures: dict) -> None:
        if not failures:
            return
        for exc in failures.values():
            err = find_user_error(exc) if isinstance(exc, BaseException) else None
            if err is not None:
                raise err
        names = ", ".join(f"{s} split{sp}" for s, sp in failures)
        raise RuntimeError(
            f"{len(failures)} {what}(s) failed: {names}. Finished work is kept; fix the cause "
            f"(see the log above) and run the same command again to resume."
        ) from next((e for e in failures.values() if isinstance(e, BaseException)), None)

    def run(self, stages=STAGES) -> None:
        t0 = time.time()
        status = "FAILED"
        try:
            self.preflight()
            self.start()
            for stage in STAGES:
                if stage in stages:
                    t = time.time()
                    getattr(self, stage)()
                    log(f"stage {stage} finished in {time.time() - t:.0f}s")
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if self.parent_run_id:
                self.tracker.log_metrics(self.parent_run_id, {"wall_s": time.time() - t0})
                self.tracker.finish(self.parent_run_id, status)
        log(f"pipeline finished in {time.time() - t0:.0f}s; outputs in {self.out}")


def _eval_task(system: str, cfg: dict, model_path: str, eval_dir: str, cache_dir: str, out: str) -> str:
    import json

    from asc_ray.data.cache import build_cache
    from asc_ray.data.tau import EvalSet
    from asc_ray.export import write_dcase_output
    from asc_ray.features import frontend_sample_rate
    from asc_ray.predict import predict_files

    s = get_system(system)
    ev = EvalSet(eval_dir)
    store = build_cache(ev, ev.files, frontend_sample_rate(s.model), cache_dir, progress=False)  # a hit
    logits = predict_files(s, cfg, model_path, store, ev.files)
    cx = json.loads((Path(model_path).parent / "output.complexity.json").read_text())
    return str(write_dcase_output(out, ev.files, logits, cx))


def _short(exc) -> str:
    err = find_user_error(exc) if isinstance(exc, BaseException) else None
    if err is not None:
        return str(err).replace("\n ", ";")
    text = str(exc).strip()
    return text.splitlines()[-1][:300] if text else type(exc).__name__
