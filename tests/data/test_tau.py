from collections import defaultdict

import numpy as np
import pytest
from data_helpers import assert_user_error, read_tsv, write_tsv

from asc_ray.data.tau import (
    DEVICE_GROUP,
    DEVICES,
    SCENE_INDEX,
    SCENES,
    SPLITS,
    TauDataset,
    parse_filename,
    read_eval_files,
)
from asc_ray.errors import AscRayError

META = ("filename", "scene_label", "identifier", "source_label")


def test_constants_follow_the_spec():
    assert SCENES[0] == "airport" and SCENES[-1] == "tram" and len(SCENES) == 10
    assert [SCENE_INDEX[s] for s in SCENES] == list(range(10))
    assert DEVICES == ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
    assert [DEVICE_GROUP[d] for d in DEVICES] == ["real"] * 3 + ["seen"] * 3 + ["unseen"] * 3


def test_parse_filename():
    assert parse_filename("audio/street_traffic-lisbon-1000-40000-0-s4.wav") == (
        "street_traffic",
        "lisbon",
        "1000",
        "40000",
        "0",
        "s4",
    )
    with pytest.raises(ValueError):
        parse_filename("audio/airport-lisbon-1000-a.wav")


def test_clip_fields_from_a_handwritten_meta(tmp_path):
    write_tsv(
        tmp_path / "meta.csv",
        META,
        [
            ("audio/airport-lisbon-1000-40000-0-a.wav", "airport", "lisbon-1000", "a"),
            ("audio/street_traffic-paris-7-3-9-s2.wav", "street_traffic", "paris-7", "s2"),
            ("audio/tram-vienna-4-0-1-s6.wav", "tram", "vienna-4", "s6"),
        ],
    )
    ds = TauDataset.open(tmp_path)
    c = ds.clips["audio/street_traffic-paris-7-3-9-s2.wav"]
    assert (c.scene_label, c.identifier, c.city, c.device, c.device_group) == (
        "street_traffic",
        "paris-7",
        "paris",
        "s2",
        "seen",
    )
    assert ds.clips["audio/tram-vienna-4-0-1-s6.wav"].device_group == "unseen"
    files = list(ds.clips)
    assert ds.labels(files).dtype == np.int64
    assert ds.labels(files).tolist() == [0, 8, 9]
    assert ds.devices(files) == ["a", "s2", "s6"]
    assert ds.audio_path(files[0]) == tmp_path / "audio" / "airport-lisbon-1000-40000-0-a.wav"


def test_synth_splits_are_nested_and_keep_recordings_whole(synth_dataset):
    ds = TauDataset.open(synth_dataset)
    splits = {p: ds.split_files(p) for p in SPLITS}
    test = ds.test_files()
    for small, big in zip(SPLITS[:-1], SPLITS[1:], strict=True):
        assert set(splits[small]) <= set(splits[big])
        assert len(splits[small]) <= len(splits[big])
    train_by_rec = defaultdict(set)
    for f in splits[100]:
        train_by_rec[ds.clips[f].identifier].add(f)
    for p in SPLITS:
        assert set(ds.labels(splits[p]).tolist()) == set(range(10)), f"split{p} lacks a scene"
        for rec in {ds.clips[f].identifier for f in splits[p]}:
            assert train_by_rec[rec] <= set(splits[p]), f"split{p} cuts recording {rec}"
    assert not {ds.clips[f].identifier for f in test} & set(train_by_rec)
    assert set(splits[100]) | set(test) == set(ds.clips)
    # TAU-like devices: s4-s6 only in test, device a dominant in train
    train_devices = ds.devices(splits[100])
    assert not {"s4", "s5", "s6"} & set(train_devices)
    assert {"s4", "s5", "s6"} <= set(ds.devices(test))
    assert train_devices.count("a") > len(train_devices) / 2


def test_split_files_found_in_split_setup_or_split_dir(synth_dataset, tmp_path):
    root = tmp_path / "tau"
    root.mkdir()
    (root / "meta.csv").write_bytes((synth_dataset / "meta.csv").read_bytes())
    (root / "split_setup").mkdir()
    (root / "split_setup" / "split25.csv").write_bytes((synth_dataset / "split25.csv").read_bytes())
    ds = TauDataset.open(root)
    assert ds.split_dir == root / "split_setup"
    assert len(ds.split_files(25)) == len(read_tsv(synth_dataset / "split25.csv"))
    elsewhere = tmp_path / "splits"
    elsewhere.mkdir()
    (elsewhere / "test.csv").write_bytes((synth_dataset / "test.csv").read_bytes())
    ds = TauDataset.open(root, split_dir=elsewhere)
    assert ds.split_dir == elsewhere and len(ds.test_files()) == len(read_tsv(synth_dataset / "test.csv"))
    with pytest.raises(AscRayError) as e:
        ds.split_files(25)  # only the explicit folder is searched
    assert_user_error(e, "split25.csv", str(elsewhere))


def test_bare_names_in_split_files_are_normalised(tiny_dataset):
    rows = read_tsv(tiny_dataset / "split100.csv")
    write_tsv(
        tiny_dataset / "split100.csv", ("filename", "scene_label"), [(f[len("audio/") :], s) for f, s in rows]
    )
    assert TauDataset.open(tiny_dataset).split_files(100) == [f for f, _ in rows]


def test_missing_data_dir(tmp_path):
    with pytest.raises(AscRayError) as e:
        TauDataset.open(tmp_path / "nope")
    assert_user_error(e, "nope", "synth")


def test_missing_meta(tmp_path):
    with pytest.raises(AscRayError) as e:
        TauDataset.open(tmp_path)
    assert_user_error(e, "meta.csv")


def test_meta_without_tabs(tmp_path):
    (tmp_path / "meta.csv").write_text("filename,scene_label,identifier,source_label\n")
    with pytest.raises(AscRayError) as e:
        TauDataset.open(tmp_path)
    assert_user_error(e, "meta.csv", "tab-separated")


def test_unknown_scene_in_meta(tiny_dataset):
    rows = read_tsv(tiny_dataset / "meta.csv")
    rows[4][1] = "beach"
    write_tsv(tiny_dataset / "meta.csv", META, rows)
    with pytest.raises(AscRayError) as e:
        TauDataset.open(tiny_dataset)
    assert_user_error(e, "meta.csv", "line 6", "beach", "airport")


def test_unknown_device_in_meta(tiny_dataset):
    rows = read_tsv(tiny_dataset / "meta.csv")
    rows[0][3] = "s9"
    write_tsv(tiny_dataset / "meta.csv", META, rows)
    with pytest.raises(AscRayError) as e:
        TauDataset.open(tiny_dataset)
    assert_user_error(e, "meta.csv", "s9")


def test_missing_split_file(tiny_dataset):
    (tiny_dataset / "split50.csv").unlink()
    ds = TauDataset.open(tiny_dataset)
    with pytest.raises(AscRayError) as e:
        ds.split_files(50)
    assert_user_error(e, "split50.csv", "split_setup", "dcase2024_task1_baseline")
    with pytest.raises(AscRayError) as e:
        ds.split_files(7)
    assert_user_error(e, "7")


def test_split_naming_a_file_not_in_meta(tiny_dataset):
    rows = read_tsv(tiny_dataset / "split10.csv") + [["audio/bus-oslo-1-0-0-a.wav", "bus"]]
    write_tsv(tiny_dataset / "split10.csv", ("filename", "scene_label"), rows)
    with pytest.raises(AscRayError) as e:
        TauDataset.open(tiny_dataset).split_files(10)
    assert_user_error(e, "split10.csv", "bus-oslo-1-0-0-a.wav", "not in meta.csv")


def test_unknown_or_wrong_scene_in_split(tiny_dataset):
    rows = read_tsv(tiny_dataset / "split100.csv")
    good = [list(r) for r in rows]
    rows[0][1] = "beach"
    write_tsv(tiny_dataset / "split100.csv", ("filename", "scene_label"), rows)
    ds = TauDataset.open(tiny_dataset)
    with pytest.raises(AscRayError) as e:
        ds.split_files(100)
    assert_user_error(e, "split100.csv", "beach", "unknown scene")
    good[0][1] = "tram" if good[0][1] != "tram" else "bus"
    write_tsv(tiny_dataset / "split100.csv", ("filename", "scene_label"), good)
    with pytest.raises(AscRayError) as e:
        ds.split_files(100)
    assert_user_error(e, "split100.csv", good[0][0], "meta.csv says")


def test_empty_split(tiny_dataset):
    write_tsv(tiny_dataset / "split5.csv", ("filename", "scene_label"), [])
    with pytest.raises(AscRayError) as e:
        TauDataset.open(tiny_dataset).split_files(5)
    assert_user_error(e, "split5.csv", "no clips")


def test_test_file_duplicate_row(tiny_dataset):
    rows = read_tsv(tiny_dataset / "test.csv")
    write_tsv(tiny_dataset / "test.csv", ("filename", "scene_label"), rows + rows[:1])
    with pytest.raises(AscRayError) as e:
        TauDataset.open(tiny_dataset).test_files()
    assert_user_error(e, "test.csv", "twice")


def test_read_eval_files(tmp_path):
    setup = tmp_path / "eval" / "evaluation_setup"
    write_tsv(setup / "fold1_test.csv", ("filename",), [("audio/0.wav",), ("1.wav",)])
    assert read_eval_files(tmp_path / "eval") == ["audio/0.wav", "audio/1.wav"]
    with pytest.raises(AscRayError) as e:
        read_eval_files(tmp_path / "other")
    assert_user_error(e, "other")
    (setup / "fold1_test.csv").unlink()
    with pytest.raises(AscRayError) as e:
        read_eval_files(tmp_path / "eval")
    assert_user_error(e, "fold1_test.csv")
