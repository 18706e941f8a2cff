"""Students once per seed (students.seeds), the same seeds for every student; what each seed learns from; resume
keys that a longer seed list (or split list) keeps; results.md with means, standard deviations, per-seed values, intervals and
the paired differences."""

from __future__ import annotations

from asc_ray.config import load_config
from asc_ray.layout import Layout, TableRef, UnitRef
from asc_ray.pipeline.graph import build_graph
from asc_ray.pipeline.keys import Keys
from asc_ray.report import DIFFERENCES_ONE_SEED, DIFFERENCES_SEVERAL, write_results_table
from asc_ray.stats import Estimate

SYSTEMS = ["bcbl32_fms", "passt_dir", "kd_ensemble", "tfs", "no_kd"]


def test_each_student_trains_once_per_seed_and_tfs_learns_from_its_own_seeds_kd_student():
    g = build_graph(SYSTEMS, [25], seeds=[0, 1])
    assert UnitRef("bcbl32_fms", 25) in g and UnitRef("bcbl32_fms", 25, 0) not in g
    assert {u.seed for u in g if u.kind == "train" and u.system == "no_kd"} == {0, 1}
    assert g[UnitRef("kd_ensemble", 25, 1)] == [TableRef("teachers", 25)]  # one teachers' table
    assert g[UnitRef("tfs", 25, 1)] == [TableRef("kd_ensemble", 25, 1)]
    assert g[TableRef("kd_ensemble", 25, 1)] == [UnitRef("kd_ensemble", 25, 1)]
    assert g[UnitRef("no_kd", 25, 0)] == []  # needs no teacher: starts at once
    assert TableRef("kd_ensemble", 25, 1).name == "kd_ensemble_seed1"


def test_a_longer_seed_list_keeps_every_key_it_had():
    def keys(seeds):
        cfg = load_config("smoke", None, [f"students.seeds={seeds}"])
        g = build_graph(SYSTEMS, [25], cfg.students.seeds)
        k = Keys(g, cfg, {25: "data"})
        return {u: k[u] for u in g}

    one, three = keys([0]), keys([0, 1, 2])
    assert all(three[u] == key for u, key in one.items())  # seed 0's units (and the teachers) are reused
    assert (
        len({v for u, v in three.items() if u.kind == "train" and u.system == "no_kd"}) == 3
    )  # each seed its own unit


def test_more_splits_keep_every_key_the_others_had():
    """What makes adding a split to a finished run (or running one split of it again) reuse every unit of the
    others: a unit's key does not depend on which other splits the run has."""

    def keys(splits):
        cfg = load_config("smoke")
        g = build_graph(SYSTEMS, splits, cfg.students.seeds)
        k = Keys(g, cfg, {s: f"data of split {s}" for s in splits})
        return {u: k[u] for u in g}

    two, three = keys([10, 100]), keys([10, 50, 100])
    assert two and all(three[u] == key for u, key in two.items())
    assert len(three) == len(two) * 3 // 2  # split 50's units are new ones


def test_a_student_seed_has_a_folder_of_its_own(tmp_path):
    layout = Layout(tmp_path)
    assert layout.unit_dir(UnitRef("kd_ensemble", 25, 2)) == tmp_path / "students/split25/kd_ensemble/seed2"
    assert layout.unit_dir(UnitRef("passt_dir", 25)) == tmp_path / "teachers/split25/passt_dir"


def test_results_page_shows_seeds_intervals_and_paired_differences(tmp_path):
    rows = [
        {"system": s, "split": 25, "seed": k, "test_macro_acc": v}
        for s, values in (("kd_ensemble", [60.0, 62.0, 64.0]), ("no_kd", [58.0, 59.0, 60.0]))
        for k, v in zip([0, 1, 2], values, strict=True)
    ]
    est = {(25, "kd_ensemble"): Estimate(0.62, 0.60, 0.64, 3), (25, "no_kd"): Estimate(0.59, 0.575, 0.605, 3)}
    diffs = {(25, "kd_ensemble - no_kd"): Estimate(0.03, 0.005, 0.055, 3)}
    write_results_table(rows, tmp_path / "r.csv", tmp_path / "r.md", None, est, diffs, ("no_kd",))
    md = (tmp_path / "r.md").read_text()
    assert "| 25 | 62.00 ± 2.00 [±2.0] | 59.00 ± 1.00 [±1.5] |" in md
    assert (
        "no_kd (ablation)" in md
        and "## Per seed" in md
        and "| 25 | kd_ensemble | 60.00 | 62.00 | 64.00 |" in md
    )
    assert "| 25 | +3.00 [+0.50, +5.50] above 0 |" in md and DIFFERENCES_SEVERAL in md
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 1 + 6  # one row per unit
    table3 = md.split("## Compared with the report")[1]
    assert "| 25 | – | 53.39 | 62.00 | 56.81 |" in table3  # our mean over seeds beside the report's


def test_one_seed_shows_differences_without_a_verdict(tmp_path):
    rows = [
        {"system": s, "split": 50, "seed": 0, "test_macro_acc": v}
        for s, v in (("kd_ensemble", 66.0), ("no_kd", 60.0))
    ]
    est = {(50, "kd_ensemble"): Estimate(0.66, 0.63, 0.69, 1), (50, "no_kd"): Estimate(0.60, 0.57, 0.63, 1)}
    diffs = {(50, "kd_ensemble - no_kd"): Estimate(0.06, 0.034, 0.087, 1)}  # excludes 0 over the clips alone
    write_results_table(rows, tmp_path / "r.csv", tmp_path / "r.md", None, est, diffs, ("no_kd",))
    md = (tmp_path / "r.md").read_text()
    assert "| 50 | +6.00 |" in md and "above 0" not in md and "[+3.40" not in md
    assert DIFFERENCES_ONE_SEED in md and DIFFERENCES_SEVERAL not in md
    assert "over the test clips only" in md  # the cells' intervals say what they cover
