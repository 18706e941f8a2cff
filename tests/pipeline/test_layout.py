"""One layout for every unit (asc_ray.layout): what `python -m asc_ray.train` reads and writes is what the
pipeline writes, for every configured system."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asc_ray.config import load_config
from asc_ray.console import run_cli
from asc_ray.data.tau import TauDataset
from asc_ray.layout import ROLES, STAGES, Layout, TableRef, UnitRef
from asc_ray.pipeline.aggregator import LogitAggregatorImpl
from asc_ray.pipeline.graph import build_graph
from asc_ray.pipeline.run import Pipeline
from asc_ray.systems import SYSTEMS, get_system
from asc_ray.train import prepare_data
from asc_ray.train.__main__ import main, unit_of

SPLIT = 25


@pytest.fixture
def pipeline_tables(synth_dataset, tmp_path):
    """The full profile's graph on split 25 and its logits tables, written as the pipeline's LogitAggregator
    writes them (random logits for each model that feeds one), in tmp_path."""
    cfg = load_config("full")
    graph = build_graph([*cfg.teachers.systems, *cfg.students.systems], [SPLIT], cfg.students.seeds)
    ds = TauDataset.open(synth_dataset)
    files = ds.split_files(SPLIT)
    meta = {SPLIT: (files, [ds.clips[f].scene_label for f in files], ds.devices(files))}
    agg = LogitAggregatorImpl(str(tmp_path), meta, {SPLIT: "data"})
    rng = np.random.default_rng(0)
    for table in (u for u in graph if u.kind == "table"):
        for d in graph[table]:
            np.save(path := tmp_path / f"{d.system}_{d.seed}.npy", rng.normal(size=(len(files), 10)))
            agg.collect(table, d.system, str(path), "key", None)
        assert agg.write_table(table, {d.system: "key" for d in graph[table]})
    return graph


def test_the_standalone_trainer_reads_and_writes_the_pipelines_paths(
    pipeline_tables, synth_dataset, shared_cache, tmp_path
):
    cfg = load_config("full", None, [f"data.cache_dir={shared_cache}"])
    pipeline = Pipeline(cfg, synth_dataset, tmp_path, [SPLIT])
    units = [u for u in pipeline_tables if u.kind == "train"]
    assert {u.system for u in units} == set(cfg.teachers.systems) | set(cfg.students.systems)
    for u in units:
        mine = unit_of(cfg, u.system, u.split, u.seed)  # `--seed S` (a student's)
        assert mine == u and Layout(tmp_path).unit_dir(mine) == pipeline.unit_dir(u)
        if u.needs:  # its default --logits: the table the pipeline wrote for it
            data = prepare_data(
                cfg, synth_dataset, tmp_path, SPLIT, get_system(u.system), progress=False, seed=mine.seed
            )
            assert data.teacher_logits.shape == (len(data.train_files), 10), u
    # without --seed: a student's first seed, the unit the pipeline trains first
    first = cfg.students.seeds[0]
    assert {unit_of(cfg, s, SPLIT) for s in cfg.students.systems} == {
        u for u in units if u.role == "student" and u.seed == first
    }


def test_tfs_alone_learns_from_the_kd_ensemble_table_the_pipeline_wrote(
    pipeline_tables, synth_dataset, shared_cache, tmp_path, capsys
):
    """tfs's default table is kd_ensemble's of its own seed; its unit folder is the pipeline's."""
    with pytest.raises(SystemExit) as e:
        run_cli(
            lambda: main(
                [
                    *("--system", "tfs", "--data-dir", str(synth_dataset), "--split", str(SPLIT)),
                    *("--output-dir", str(tmp_path), "--profile", "smoke", "--epochs", "1"),
                    *("bcbl.batch_size=16", f"data.cache_dir={shared_cache}"),
                ]
            )
        )
    out = capsys.readouterr()
    assert e.value.code == 0, out.err  # no --logits: it found kd_ensemble_seed0's table
    unit = Layout(tmp_path).unit(UnitRef("tfs", SPLIT, 0))
    rec = json.loads(unit.record.read_text())
    assert rec["system"] == "tfs" and rec["split"] == SPLIT and str(unit.folder) in out.out


def test_every_unit_has_a_role_folder_and_a_stage():
    """A new kind of unit is a ROLES entry: every system's role has one, and every stage a unit names runs."""
    for s in SYSTEMS.values():
        ref = UnitRef(s.name, SPLIT, 0 if s.role == "student" else None)
        assert ref.stage in STAGES and ROLES[s.role].folder in str(Layout("O").unit_dir(ref))
        if ref.feeds:
            assert ref.feeds.stage in STAGES
    assert (
        TableRef("teachers", SPLIT).stage != TableRef("kd_ensemble", SPLIT, 0).stage
    )  # the logits job's own


def test_a_runs_unit_folders_and_records_are_found_by_their_exact_shape(tmp_path):
    """What tests and tools read of a live run: each role's unit folders (a student's per seed), the records of
    those that finished; not a search trial's folder, not a loose file."""
    lay = Layout(tmp_path)
    teacher, other, student = (
        UnitRef("bcbl32_fms", 25),
        UnitRef("passt_dir", 100),
        UnitRef("kd_ensemble", 25, 0),
    )
    for ref in (teacher, other, student):
        lay.unit_dir(ref).mkdir(parents=True)
        (lay.unit_dir(ref) / "checkpoint").mkdir()
    for ref in (teacher, student):
        lay.unit(ref).record.write_text("{}")
    trial = lay.unit(student).trial(0)
    trial.mkdir(parents=True)
    (trial / "result.json").write_text("{}")  # a search trial's record is not a unit's
    (lay.unit_dir(teacher).parent / "notes.txt").write_text("")
    assert lay.unit_dirs("teacher") == sorted([lay.unit_dir(teacher), lay.unit_dir(other)])
    assert lay.unit_dirs("student") == [lay.unit_dir(student)]
    assert lay.unit_dirs(split=25) == sorted([lay.unit_dir(teacher), lay.unit_dir(student)])
    assert lay.records() == sorted([lay.unit(teacher).record, lay.unit(student).record])
