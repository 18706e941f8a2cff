"""DCASE output, plots (asc_ray.export) and the results table (asc_ray.report)."""

import csv
import json
import struct

import numpy as np
import pytest

import asc_ray.io
from asc_ray.data.tau import SCENES
from asc_ray.errors import AscRayError
from asc_ray.export import (
    complexity_path,
    plot_class_accuracy,
    plot_confusion,
    read_dcase_output,
    write_dcase_output,
)
from asc_ray.report import REPORT_RESULTS, write_results_table


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def _no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def test_dcase_output_round_trip(tmp_path):
    files = [
        "audio/airport-lisbon-1000-40000-0-a.wav",
        "audio/tram-vienna-285-8639-5-s4.wav",
        "bus-x-1-2-3-b.wav",
    ]
    logits = np.array([[5.0] + [0.0] * 9, [0.0] * 9 + [3.0], [1.0, 2.0] + [-1.0] * 8])
    out = write_dcase_output(
        tmp_path / "output.csv", files, logits, complexity={"params": 61148, "macs": 29419156}
    )
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == ["filename", "scene_label", *SCENES]
    assert lines[1].startswith("airport-lisbon-1000-40000-0-a.wav\tairport\t")
    names, labels, probs = read_dcase_output(out)
    assert names == [
        "airport-lisbon-1000-40000-0-a.wav",
        "tram-vienna-285-8639-5-s4.wav",
        "bus-x-1-2-3-b.wav",
    ]
    assert labels == ["airport", "tram", "bus"]
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert list(probs.argmax(axis=1)) == [SCENES.index(lb) for lb in labels]
    e = np.exp(logits[1] - logits[1].max())
    np.testing.assert_allclose(probs[1], e / e.sum(), atol=1e-7)
    cpath = complexity_path(out)
    assert cpath.name == "output.complexity.json"
    assert json.loads(cpath.read_text()) == {"params": 61148, "macs": 29419156}
    assert _no_temp_files(tmp_path)


def test_dcase_output_rejects_mismatched_input(tmp_path):
    with pytest.raises(ValueError):
        write_dcase_output(tmp_path / "o.csv", ["a.wav"], np.zeros((2, 10)))
    with pytest.raises(ValueError):
        write_dcase_output(
            tmp_path / "o.csv", ["a.wav", "audio/a.wav"], np.zeros((2, 10))
        )  # same after strip
    assert list(tmp_path.iterdir()) == []


def test_read_dcase_output_bad_file(tmp_path):
    with pytest.raises(AscRayError, match="not found"):
        read_dcase_output(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("filename\tscene_label\n")
    with pytest.raises(AscRayError, match="header") as ei:
        read_dcase_output(bad)
    assert ei.value.path == str(bad)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    out = write_dcase_output(tmp_path / "output.csv", ["x.wav"], np.zeros((1, 10)))
    before = out.read_bytes()

    def boom(*args):  # the rename fails after the temp file was fully written
        raise OSError("disk gone")

    monkeypatch.setattr(asc_ray.io.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        write_dcase_output(out, ["y.wav"], np.ones((1, 10)))
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert _no_temp_files(tmp_path)


def test_plot_class_accuracy_png(tmp_path):
    per_system = {
        "kd_ensemble": {s: 0.5 + 0.04 * i for i, s in enumerate(SCENES)},
        "tfs": {s: 0.6 for s in SCENES},
        "baseline": {"airport": 0.3},  # missing scenes just have no bar
    }
    out = plot_class_accuracy(per_system, tmp_path / "class_acc.png", "split 100")
    assert out.stat().st_size > 10_000
    assert _png_size(out) == (1200, 500)  # wide figure: 10 scene groups
    assert _no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="unknown scenes"):
        plot_class_accuracy({"x": {"kitchen": 0.5}}, tmp_path / "bad.png", "t")


def test_plot_confusion_png(tmp_path):
    cm = np.arange(100, dtype=np.int64).reshape(10, 10)
    cm[3] = 0  # an empty row must not divide by zero
    out = plot_confusion(cm, tmp_path / "confusion.png", "kd_ensemble split 5")
    assert out.stat().st_size > 10_000
    assert _png_size(out) == (800, 700)
    with pytest.raises(ValueError):
        plot_confusion(np.zeros((3, 3)), tmp_path / "x.png", "t")


def test_results_table(tmp_path):
    rows = [
        {"system": "tfs", "split": 100, "test_macro_acc": 62.456, "seed": 1},
        {"system": "baseline", "split": 5, "test_macro_acc": 42.0},
        {"system": "my_variant", "split": 5, "test_macro_acc": 40.126, "note": "extra"},
        {"system": "bcbl24", "split": 5, "test_macro_acc": 43.3},
        {"system": "kd_ensemble", "split": 5, "test_macro_acc": 48.0},
    ]
    csv_path, md_path = tmp_path / "results.csv", tmp_path / "results.md"
    write_results_table(rows, csv_path, md_path)

    with csv_path.open() as f:
        got = list(csv.DictReader(f))
    assert len(got) == 5
    assert list(got[0]) == ["system", "split", "test_macro_acc", "seed", "note"]
    assert got[2]["note"] == "extra" and got[0]["note"] == ""

    md = md_path.read_text()
    lines = md.splitlines()
    assert "| split (%) | bcbl24 | kd_ensemble | tfs | baseline | my_variant |" in lines
    assert "| 5 | 43.30 | 48.00 | – | 42.00 | 40.13 |" in lines  # splits ascending: 5 first
    assert "| 100 | – | – | 62.46 | – | – |" in lines
    assert md.index("| 5 |") < md.index("| 100 |")
    # comparison table: ours beside the report's numbers, all report splits present
    assert "| 5 | 43.30 | 43.68 | 48.00 | 47.97 | – | 44.93 | 42.00 | 42.40 |" in lines
    assert "| 25 | – | 53.39 | – | 56.81 | – | 55.57 | – | 50.29 |" in lines
    assert "| 100 | – | 57.59 | – | 61.74 | 62.46 | 62.21 | – | 56.99 |" in lines
    assert _no_temp_files(tmp_path)


def test_a_teachers_table_has_no_comparison_with_table_3(tmp_path):
    """Table 3 holds students only: teachers.md showed a comparison of dashes."""
    rows = [{"system": "bcbl32_fms", "split": 5, "test_macro_acc": 40.0}]
    write_results_table(rows, tmp_path / "t.csv", tmp_path / "t.md")
    md = (tmp_path / "t.md").read_text()
    assert "| 5 | 40.00 |" in md and "Compared with the report" not in md


def test_results_table_rejects_duplicates_and_missing_columns(tmp_path):
    with pytest.raises(ValueError, match="two results"):
        write_results_table(
            [{"system": "tfs", "split": 5, "test_macro_acc": 1.0}] * 2, tmp_path / "r.csv", tmp_path / "r.md"
        )
    with pytest.raises(ValueError, match="lacks"):
        write_results_table([{"system": "tfs", "split": 5}], tmp_path / "r.csv", tmp_path / "r.md")


def test_report_results_match_spec():
    assert sorted(REPORT_RESULTS) == [5, 10, 25, 50, 100]
    assert REPORT_RESULTS[100]["tfs"] == 62.21
    assert REPORT_RESULTS[5]["kd_ensemble"] == 47.97


def test_results_page_says_what_was_run(tmp_path):
    from asc_ray.report import run_header

    rows = [
        {
            "system": "bcbl32_fms",
            "split": 100,
            "test_macro_acc": 50.0,
            "input_shape": "1x256x89",
            "sample_rate": 44100,
            "params": 61148,
            "macs": 40_270_000,
        },
        {
            "system": "passt_fms",
            "split": 100,
            "test_macro_acc": 55.0,
            "input_shape": "1x128x138",
            "sample_rate": 44100,
            "params": 100,
            "macs": 5_000_000,
        },
    ]
    smoke = run_header("smoke", "/data/synthetic", "2026-11-28 02:00 UTC")
    write_results_table(rows, tmp_path / "r.csv", tmp_path / "r.md", smoke)
    md = (tmp_path / "r.md").read_text()
    title = md.splitlines()[0]
    assert title.startswith("# ") and "smoke" in title and "not comparable" in title and "Table 3" in title
    head = md[: md.index("| split")]
    assert "/data/synthetic" in head and "2026-11-28 02:00 UTC" in head and "PROFILE=full" in head
    # each model's input and MACs
    assert "| bcbl32_fms | 1x256x89 | 44.1 kHz | 61,148 | 40.3 M |" in md.splitlines()

    full = run_header("full", "/data/tau22", "2026-11-28")
    write_results_table(rows, tmp_path / "r.csv", tmp_path / "r.md", full)
    md = (tmp_path / "r.md").read_text()
    assert "not comparable" not in md and "`full`" in md and "/data/tau22" in md

    # --epochs N (train.epochs): a set-up check, whatever the profile, and its title says so
    check = run_header("full", "/data/tau22", "2026-11-28", epochs=1)
    assert "--epochs 1" in check.splitlines()[0] and "not results" in check.splitlines()[0]
