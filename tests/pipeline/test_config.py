"""Config: profiles, files and key=value overrides merge in order; bad keys and types are refused up front."""

import pytest

from asc_ray.config import config_hash, flatten, load_config, with_overrides
from asc_ray.errors import AscRayError


def test_full_profile_is_the_reports_settings():
    cfg = load_config("full")
    assert cfg["bcbl"]["epochs"] == 150 and cfg["bcbl"]["batch_size"] == 256 and cfg["bcbl"]["lr"] == 0.005
    assert cfg["passt"]["epochs"] == 25 and cfg["passt"]["batch_size"] == 80 and cfg["passt"]["lr"] == 2e-5
    assert cfg["kd"] == {"lam": 0.98, "temperature": 2.0}
    assert cfg["augment"]["fms_p"] == 0.4 and cfg["augment"]["dir_p"] == 0.6 and cfg["augment"]["freqm"] == 48
    assert len(cfg["teachers"]["systems"]) == 6 and cfg["train"]["select"] == "val"


def test_smoke_profile_overrides_only_what_it_names():
    full, smoke = load_config("full"), load_config("smoke")
    assert smoke["bcbl"]["epochs"] < full["bcbl"]["epochs"] and smoke["passt"]["size"] == "small"
    assert smoke["kd"] == full["kd"] and smoke["teachers"]["systems"] == full["teachers"]["systems"]


def test_file_then_overrides_win(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("bcbl:\n  epochs: 7\nkd:\n  lam: 0.5\n")
    cfg = load_config(
        "smoke", f, ["bcbl.epochs=9", "teachers.systems=[bcbl32_fms]", "mlflow.tracking_uri=http://x"]
    )
    assert cfg["bcbl"]["epochs"] == 9 and cfg["kd"]["lam"] == 0.5
    assert cfg["teachers"]["systems"] == ["bcbl32_fms"] and cfg["mlflow"]["tracking_uri"] == "http://x"


@pytest.mark.parametrize(
    "override, words",
    [
        ("bcbl.epoch=3", "unknown config key 'bcbl.epoch'"),
        ("bcbl.epochs=three", "wrong type"),
        ("bcbl.epochs=true", "wrong type"),
        ("kd.lam=[1]", "wrong type"),
        ("train.select=test", "one of val, last"),
        ("teachers.systems=[resnet]", "unknown teacher 'resnet'"),
        ("students.systems=[tfs]", "tfs learns from the logits of kd_ensemble"),
        ("students.search.kd.lamda=[0.5]", "unknown search key"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_overrides_are_refused_with_a_fix(override, words):
    with pytest.raises(AscRayError) as e:
        load_config("smoke", None, [override])
    assert words in str(e.value) and "fix:" in str(e.value)


def test_bad_config_file(tmp_path):
    with pytest.raises(AscRayError, match="not found"):
        load_config("full", tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("bcbl: [\n")
    with pytest.raises(AscRayError, match="not valid YAML"):
        load_config("full", bad)


def test_search_space_and_helpers():
    cfg = load_config("smoke", None, ["students.search.kd.lam=[0.9,0.98]"])
    assert cfg["students"]["search"] == {"kd.lam": [0.9, 0.98]}
    trial = with_overrides(cfg, {"kd.lam": 0.9})
    assert trial["kd"]["lam"] == 0.9 and cfg["kd"]["lam"] == 0.98  # a copy
    assert flatten(cfg)["bcbl.epochs"] == cfg["bcbl"]["epochs"]
    assert config_hash(cfg) == config_hash(load_config("smoke", None, ["students.search.kd.lam=[0.9,0.98]"]))
    assert config_hash(cfg) != config_hash(trial)


def test_teacher_resources_are_a_free_mapping_of_numbers():
    cfg = load_config("smoke", None, ["teachers.resources={large_gpu: 1, teacher_slot: 0.5}"])
    assert cfg["teachers"]["resources"] == {"large_gpu": 1, "teacher_slot": 0.5}
    with pytest.raises(AscRayError, match="must be a number"):
        load_config("smoke", None, ["teachers.resources={large_gpu: lots}"])
