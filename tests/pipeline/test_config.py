"""Config: profiles, files and key=value overrides merge in order; bad keys and types are refused up front."""

import pytest

from asc_ray.config import config_hash, flatten, load_config, with_overrides
from asc_ray.errors import AscRayError


def test_full_profile_is_the_reports_settings():
    cfg = load_config("full")
    assert cfg.bcbl.epochs == 150 and cfg.bcbl.batch_size == 256 and cfg.bcbl.lr == 0.005
    assert cfg.passt.epochs == 25 and cfg.passt.batch_size == 80 and cfg.passt.lr == 2e-5
    assert cfg.kd.model_dump() == {
        "lam": 0.98,
        "temperature": 2.0,
        "kl_reduction": "mean",
    }  # the reference scale
    assert cfg.augment.fms_p == 0.4 and cfg.augment.dir_p == 0.6 and cfg.augment.freqm == 48
    assert len(cfg.teachers.systems) == 6 and cfg.train.select == "last"  # the whole split, the last epoch
    # the report's N-BCBL models: 100 warm-up steps, no roll; the official baseline recipe: 2000, +-0.1 s
    assert cfg.bcbl.warmup_steps == 100 and cfg.bcbl.roll_s == 0.0
    assert cfg.baseline.model_dump() == {"warmup_steps": 2000, "roll_s": 0.1}
    assert cfg.model_dump()["bcbl"]["epochs"] == 150  # the nested dict MLflow and config.json get


def test_smoke_profile_overrides_only_what_it_names():
    full, smoke = load_config("full"), load_config("smoke")
    assert smoke.bcbl.epochs < full.bcbl.epochs and smoke.passt.size == "small"
    assert smoke.teachers.systems == full.teachers.systems
    # the reference's KD weighting (lam 0.98, T 2, KL averaged over batch and classes) in every profile
    assert (
        smoke.kd.model_dump()
        == full.kd.model_dump()
        == {"lam": 0.98, "temperature": 2.0, "kl_reduction": "mean"}
    )
    # AudioSet's checkpoint in the full profile; the synthetic corpus that stands in for it in the smoke one
    assert (full.pretrain.corpus, full.passt.pretrained) == ("none", True)
    assert (smoke.pretrain.corpus, smoke.passt.pretrained) == ("synthetic", False)
    assert smoke.profile == "smoke" and full.profile == "full"


def test_file_then_overrides_win(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("bcbl:\n  epochs: 7\nkd:\n  lam: 0.5\n")
    cfg = load_config(
        "smoke", f, ["bcbl.epochs=9", "teachers.systems=[bcbl32_fms]", "mlflow.tracking_uri=http://x"]
    )
    assert cfg.bcbl.epochs == 9 and cfg.kd.lam == 0.5
    assert cfg.teachers.systems == ["bcbl32_fms"] and cfg.mlflow.tracking_uri == "http://x"


@pytest.mark.parametrize(
    "override, named",
    [
        ("bcbl.epoch=3", ["bcbl.epoch", "epochs"]),  # the fix lists the valid keys
        ("bcbl.epochs=three", ["bcbl.epochs", "three"]),
        ("bcbl.epochs=true", ["bcbl.epochs", "True"]),
        ("kd.lam=[1]", ["kd.lam"]),
        ("kd.kl_reduction=sum", ["kd.kl_reduction", "batchmean"]),
        ("baseline.epochs=3", ["baseline.epochs", "warmup_steps"]),
        ("train.select=test", ["train.select", "last"]),
        ("teachers.systems=[resnet]", ["resnet", "passt_fms"]),
        ("students.systems=[tfs]", ["tfs", "kd_ensemble"]),
        ("students.search.kd.lamda=[0.5]", ["kd.lamda"]),
        ("students.search.kd.lam=[0.5,0.9]", ["train.select=val"]),
        ("students.num_samples=2", ["train.select=val"]),
        ("nonsense", ["nonsense", "bcbl.epochs=10"]),
        ("students.resources={gpu: 0.25}", ["students.resources.gpu", "cpus_per_trial"]),
        ("students.resources={slot: -1}", ["students.resources.slot", "-1"]),
    ],
)
def test_bad_overrides_are_refused_naming_the_key_and_the_fix(override, named):
    with pytest.raises(AscRayError) as e:
        load_config("smoke", None, [override])
    assert e.value.fix and e.value.path  # where it came from and what to do
    for name in named:
        assert name in str(e.value), (name, str(e.value))


def test_bad_config_file(tmp_path):
    with pytest.raises(AscRayError) as e:
        load_config("full", tmp_path / "missing.yaml")
    assert e.value.path == str(tmp_path / "missing.yaml") and "--config" in e.value.fix
    bad = tmp_path / "bad.yaml"
    bad.write_text("bcbl: [\n")
    with pytest.raises(AscRayError) as e:
        load_config("full", bad)
    assert e.value.path == str(bad) and "YAML" in str(e.value)
    typed = tmp_path / "typed.yaml"
    typed.write_text("bcbl:\n  epochs: [1, 2]\n")
    with pytest.raises(AscRayError) as e:  # a wrong type in a file names the file and the key
        load_config("full", typed)
    assert e.value.path == str(typed) and "bcbl.epochs" in str(e.value)


def test_search_space_and_helpers():
    cfg = load_config("smoke", None, ["students.search.kd.lam=[0.9,0.98]", "train.select=val"])
    assert cfg.students.search == {"kd.lam": [0.9, 0.98]}
    trial = with_overrides(cfg, {"kd.lam": 0.9})
    assert trial.kd.lam == 0.9 and cfg.kd.lam == 0.98  # a copy (the profile's lam)
    assert flatten(cfg)["bcbl.epochs"] == cfg.bcbl.epochs
    assert config_hash(cfg) == config_hash(
        load_config("smoke", None, ["students.search.kd.lam=[0.9,0.98]", "train.select=val"])
    )
    assert config_hash(cfg) != config_hash(trial)
    with pytest.raises(ValueError):  # a trial's value is checked against the key's type
        with_overrides(cfg, {"kd.lam": "high"})


def test_teacher_resources_are_a_free_mapping_of_numbers():
    cfg = load_config("smoke", None, ["teachers.resources={large_gpu: 1, teacher_slot: 0.5}"])
    assert cfg.teachers.resources == {"large_gpu": 1, "teacher_slot": 0.5}
    with pytest.raises(AscRayError) as e:
        load_config("smoke", None, ["teachers.resources={large_gpu: lots}"])
    assert "teachers.resources.large_gpu" in str(e.value) and "lots" in str(e.value) and e.value.fix


def test_baseline_recipe_applies_to_the_baseline_only():
    from asc_ray.systems import get_system, hparams

    cfg = load_config("full")
    assert hparams(get_system("baseline"), cfg).warmup_steps == 2000
    assert hparams(get_system("baseline"), cfg).roll_s == 0.1
    for name in ("kd_ensemble", "tfs", "bcbl24", "bcbl32_fms"):
        h = hparams(get_system(name), cfg)
        assert h.warmup_steps == 100 and h.roll_s == 0.0 and h.epochs == 150


def test_teachers_bcbl_epochs_lengthens_the_cnn_teachers_only():
    """teachers.bcbl_epochs gives the CNN teachers a schedule of their own; 0 (both profiles) is the report's one
    schedule for all. systems.epochs is the one place epochs are decided."""
    from asc_ray.systems import SYSTEMS, epochs

    full, smoke = load_config("full"), load_config("smoke")
    assert {epochs(s, full) for s in SYSTEMS.values() if s.family == "bcbl"} == {150}
    cfg = load_config("full", None, ["teachers.bcbl_epochs=24", "bcbl.epochs=12"])
    for name, s in SYSTEMS.items():
        want = {"passt": full.passt.epochs, "bcbl": 24 if s.role == "teacher" else 12}[s.family]
        assert epochs(s, cfg) == want, name
    assert smoke.teachers.bcbl_epochs == 0 and {
        epochs(s, smoke) for s in SYSTEMS.values() if s.family == "bcbl"
    } == {smoke.bcbl.epochs}


def test_min_steps_raises_the_epochs_of_a_small_split_only():
    """train.min_steps: where an epoch has few batches, more epochs, never fewer than configured."""
    from asc_ray.systems import epochs, get_system

    cfg = load_config("full", None, ["train.min_steps=100", "bcbl.epochs=4"])
    s = get_system("baseline")
    assert epochs(s, cfg) == 4  # the scheduler's estimate: no floor without a step count
    assert epochs(s, cfg, steps_per_epoch=10) == 10  # 100 steps at 10 a step-epoch
    assert epochs(s, cfg, steps_per_epoch=1000) == 4


def test_resume_keys_hold_only_what_a_unit_reads():
    """A speed-only setting (threads, compile, channels_last) retrains nothing; a setting a system reads
    changes that system's key and no other's."""
    from asc_ray.pipeline.keys import unit_key
    from asc_ray.systems import SYSTEMS

    base = load_config("full")

    def keys(overrides):
        cfg = load_config("full", None, overrides)
        return {n: unit_key(cfg, s, 100, "data") for n, s in SYSTEMS.items()}

    k0 = keys([])
    assert len(set(k0.values())) == len(k0)
    for speed in (
        "train.num_threads=4",
        "train.compile=true",
        "train.channels_last=false",
        "mlflow.experiment=x",
        "teachers.max_concurrent=2",
        "students.cpus_per_trial=2.0",
        "use_gpu=false",
    ):
        assert keys([speed]) == k0, speed

    def changed(override):
        k = keys([override])
        return {n for n in k if k[n] != k0[n]}

    assert changed("kd.kl_reduction=batchmean") == {"kd_ensemble"}
    assert changed("baseline.roll_s=0.2") == {"baseline"}
    assert changed("augment.mixup_alpha=0.5") == {"bcbl32_fms", "bcbl32_dir", "bcbl32_fms_dir", "bcbl24"}
    assert changed("augment.dir_p=0.5") == {n for n, s in SYSTEMS.items() if s.dir}
    assert changed("augment.freqm=24") == set(SYSTEMS)  # every front-end masks
    assert changed("passt.lr=0.001") == {"passt_fms", "passt_dir", "passt_fms_dir"}
    assert changed("train.eval_every=2") == set(SYSTEMS)  # which epoch is selected
    assert changed("seed=1") == set(SYSTEMS)
    assert changed("teachers.bcbl_epochs=24") == {"bcbl32_fms", "bcbl32_dir", "bcbl32_fms_dir"}
    assert base.train.num_threads == 0


def test_every_key_declares_what_it_changes_and_every_number_its_range():
    """Where a key is defined (asc_ray/schema.py, a model's or a loss's settings) it says whether it changes a
    trained result (trains / picks / runs); a new key that says nothing fails here, not silently in a stale
    unit's key."""
    from asc_ray.schema import EFFECTS, bounds, effect
    from asc_ray.sections import leaves

    keys = leaves()
    assert keys and set(keys) == set(flatten(load_config("full")))  # every key the profiles hold
    silent = [k for k, info in keys.items() if effect(info) not in EFFECTS]
    assert not silent, f"declare trains(), picks() or runs() where these keys are defined: {silent}"
    numbers = [k for k, info in keys.items() if info.annotation in (int, float)]
    unbounded = [k for k in numbers if not bounds(keys[k])]
    assert numbers and not unbounded, f"give these numeric keys their range (ge=, gt=, le=, lt=): {unbounded}"


def test_what_a_system_reads_is_what_the_keys_declare():
    """System.reads is derived from the declarations: a key that trains reaches some system's key (its
    section's systems, narrowed by `when`) or, in `pretrain:`, the pretraining unit's key (which its teachers'
    keys hold); a key that runs or picks reaches none."""
    from asc_ray.config import flatten, with_overrides
    from asc_ray.schema import TRAINS, effect, when
    from asc_ray.sections import leaves
    from asc_ray.systems import SYSTEMS
    from asc_ray.train.pretrain import pretrain_key

    cfg = load_config("smoke")
    for key, info in leaves().items():
        readers = {n for n, s in SYSTEMS.items() if s.reads(key)}
        if effect(info) != TRAINS:
            assert not readers, key
            continue
        if key.startswith("pretrain."):
            assert not readers, key
            v = flatten(cfg)[key]
            changed = with_overrides(cfg, {key: v * 2 if isinstance(v, float) else v + 1})
            assert pretrain_key(changed) != pretrain_key(cfg), (
                f"{key} trains, yet the pretraining key ignores it"
            )
            continue
        assert readers, f"{key} trains, yet no system reads it"
        for n in readers:
            assert all(getattr(SYSTEMS[n], a) == v for a, v in when(info).items()), (key, n)


def test_out_of_range_values_are_refused_in_one_error_through_the_entry_point(capsys):
    """`asc-ray config bcbl.epochs=-3 bcbl.batch_size=0 bcbl.lr=-1`: exit 2, one message naming each key, what
    it got and its range."""
    from asc_ray.cli import main
    from asc_ray.console import run_cli
    from asc_ray.schema import bounds
    from asc_ray.sections import field

    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(["config", "bcbl.epochs=-3", "bcbl.batch_size=0", "bcbl.lr=-1"]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    msg = err[err.index("error: ") :].splitlines()
    assert len(msg) == 2 and msg[1].startswith("  fix: ")  # one problem line, one fix line
    for key, value in (("bcbl.epochs", "-3"), ("bcbl.batch_size", "0"), ("bcbl.lr", "-1")):
        assert key in msg[0] and f"{key}={value}" in msg[0]  # the key and the value given
        assert bounds(field(key)) in msg[1].split(key, 1)[1]  # its range, in the fix after its name


@pytest.mark.parametrize(
    "override", ["kd.lam=1.5", "augment.fms_p=-0.1", "train.checkpoint_every=0", "data.holdout_fraction=0.5"]
)
def test_a_value_out_of_its_range_names_the_range(override):
    from asc_ray.schema import bounds
    from asc_ray.sections import field

    key = override.split("=")[0]
    with pytest.raises(AscRayError) as e:
        load_config("full", None, [override])
    assert key in str(e.value) and bounds(field(key)) in e.value.fix
