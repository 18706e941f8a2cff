"""Bad input, end to end: a broken copy of a small synthetic dataset, a bad option, an unreachable MLflow
server, missing PaSST weights. Each case must end in pre-flight with one error that names the file or setting
and the fix; never a traceback, never a started Ray or a teacher folder.

Fast: pre-flight itself, in this process (asc_ray.pipeline.preflight raises the AscRayError). Slow: the same cases
as users meet them, `python jobs/full_pipeline.py` (and `python -m asc_ray.train`) as subprocesses: exit status 2
and the message on stderr. These runs are local (no RAY_ADDRESS): joining a cluster adds checks of its own
before the data (tests/cluster/test_shared_storage.py). A case that got past pre-flight would start a local Ray
and train a one-epoch smoke model: its test then fails on the exit status.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
from helpers.procs import cli_env, free_port, pipeline_args, run_py

from asc_ray.config import load_config
from asc_ray.data.synth import generate
from asc_ray.data.tau import TauDataset
from asc_ray.errors import AscRayError
from asc_ray.layout import Layout, UnitRef

SMALL = [
    "--splits",
    "25",
    "--profile",
    "smoke",
    "--epochs",
    "1",
    "teachers.systems=[bcbl32_fms]",
    "students.systems=[baseline]",
]
PREFLIGHT_S = 150  # a subprocess's limit: generous for a loaded 2-core machine (a failure takes ~5-15 s)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """30 clips of our own (copied and broken per test), and a shared, initialised MLflow SQLite store."""
    from asc_ray.tracking import check_tracking

    root = tmp_path_factory.mktemp("bad_input")
    data = generate(root / "tau", clips_per_class=3, seed=1)
    uri = f"sqlite:///{root}/mlflow.db"
    check_tracking(uri)  # creates the tables once (seconds), so each case below only opens it
    return {"data": data, "uri": uri, "root": root}


def _copy(tiny, tmp_path):
    d = tmp_path / "tau"
    shutil.copytree(tiny["data"], d)
    return d


def _pipeline(tiny, data, out, *extra, env=None, timeout=PREFLIGHT_S * 2):
    env = env or cli_env(tiny["uri"])  # (without RAY_ADDRESS: see the module docstring)
    return run_py(
        pipeline_args(data, out, *SMALL, *extra),
        env,
        out.parent,
        timeout,
    )


def _preflight(tiny, data, out, *overrides, uri=None):
    """Pre-flight in this process with the CLI cases' config; the AscRayError it raises."""
    from asc_ray.pipeline.preflight import preflight

    cfg = load_config(
        "smoke", None, [*SMALL[6:], "train.epochs=1", f"mlflow.tracking_uri={uri or tiny['uri']}", *overrides]
    )
    with pytest.raises(AscRayError) as e:
        preflight(cfg, data, out, [25])
    return e.value


def assert_names(err: AscRayError, *names) -> None:
    """One error naming the file or setting (and what is wrong with it), with a fix."""
    text = str(err)
    for name in names:
        assert str(name) in text, f"{name!r} not in:\n{text}"
    assert err.fix, text


def assert_nothing_started(out) -> None:
    """Pre-flight: no teacher was launched, nothing to resume from was written."""
    for sub in ("ray_results", "teachers", "students", "units", "logits"):
        assert not (out / sub).exists(), sub


def assert_preflight_error(r, out, *names):
    text = r.stdout + r.stderr
    assert r.returncode == 2, f"exit {r.returncode}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert "error: " in r.stderr and "fix: " in r.stderr, r.stderr[-2000:]
    msg = r.stderr[r.stderr.index("error: ") :]
    for name in names:
        assert str(name) in msg, f"{name!r} not in:\n{msg}"
    # pre-flight: Ray never started, no teacher was launched, nothing to resume from was written
    assert "Ray: " not in r.stdout, r.stdout[-2000:]
    assert_nothing_started(out)


# ------------------------------------------------------------------------------------------- data
def _split_file(data, n=25, row=0):
    return TauDataset.open(data).split_files(n)[row]


def _test_file(data, row=0):
    return TauDataset.open(data).test_files()[row]


def _rewrite(path, fn):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def break_missing_meta(d):
    (d / "meta.csv").unlink()
    return ["meta.csv"], []


def break_missing_split(d):
    (d / "split25.csv").unlink()
    return ["split25.csv"], []


def break_split_names_unknown_file(d):
    _rewrite(d / "split25.csv", lambda ls: [*ls, "audio/airport-nowhere-1-0-0-a.wav\tairport"])
    return ["split25.csv", "airport-nowhere-1-0-0-a.wav", "meta.csv"], []


def break_empty_split(d):
    _rewrite(d / "split25.csv", lambda ls: ls[:1])
    return ["split25.csv", "no clips"], []


def break_unknown_scene(d):
    _rewrite(d / "meta.csv", lambda ls: [ls[0], ls[1].replace("\tairport\t", "\tairporx\t"), *ls[2:]])
    return ["meta.csv", "airporx"], []


def break_empty_wav(d):
    f = _split_file(d)
    (d / f).write_bytes(b"")
    return [f], []


def break_truncated_wav_in_test_set(d):  # not a training file: still found before any teacher
    f = _test_file(d)
    (d / f).write_bytes((d / f).read_bytes()[:3000])
    return [f], []


def break_unreadable_wav(d):  # a folder where the file should be (root reads any file, whatever its mode)
    f = _test_file(d, row=1)
    (d / f).unlink()
    (d / f).mkdir()
    return [f], []


def break_sample_rate(d):
    f = _split_file(d)
    sf.write(d / f, np.zeros(16000, np.float32), 16000)
    return [f, "44100"], []


def break_clip_length(d):
    f = _test_file(d)
    sf.write(d / f, np.zeros(30000, np.float32), 44100)
    return [f, "30000"], []


def break_ir_folder_empty(d):
    for p in (d / "irs").iterdir():
        p.unlink()
    (d / "irs" / "README.txt").write_text("the IRs go here\n")
    return [d / "irs", "data.irs_dir"], ["teachers.systems=[bcbl32_dir]"]


def break_ir_folder_corrupt(d):
    for p in (d / "irs").iterdir():
        p.unlink()
    (d / "irs" / "mic.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    return [d / "irs" / "mic.wav"], ["teachers.systems=[bcbl32_fms_dir]"]


DATA_CASES = [
    break_missing_meta,
    break_missing_split,
    break_split_names_unknown_file,
    break_empty_split,
    break_unknown_scene,
    break_empty_wav,
    break_truncated_wav_in_test_set,
    break_unreadable_wav,
    break_sample_rate,
    break_clip_length,
    break_ir_folder_empty,
    break_ir_folder_corrupt,
]


@pytest.mark.parametrize("breaker", DATA_CASES, ids=[b.__name__[len("break_") :] for b in DATA_CASES])
def test_broken_data_fails_in_preflight(tiny, tmp_path, breaker):
    data = _copy(tiny, tmp_path)
    names, extra = breaker(data)
    err = _preflight(tiny, data, tmp_path / "out", *extra)
    assert_names(err, *names)
    assert_nothing_started(tmp_path / "out")


def test_missing_data_dir(tiny, tmp_path):
    err = _preflight(tiny, tmp_path / "no-such-dir", tmp_path / "out")
    assert_names(err, tmp_path / "no-such-dir", "--data-dir")


def test_unreachable_mlflow_server_is_named_before_the_data(tiny, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    err = _preflight(tiny, tiny["data"], out, uri=uri)
    assert_names(err, uri, "MLFLOW_TRACKING_URI")
    assert not (out / "cache").exists()  # checked first: no data work either


def test_passt_weights_absent_without_network(tiny, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"  # every download goes to a closed proxy: no network
    monkeypatch.setenv("HOME", str(home))
    for k in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(k, dead)
    for k in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
    err = _preflight(
        tiny,
        tiny["data"],
        tmp_path / "out",
        "teachers.systems=[passt_fms]",
        "passt.pretrained=true",
        "passt.size=full",
    )
    assert_names(
        err, "passt-s-f128-p16-s10-ap.476-swa.pt", "ASC_RAY_PASST_CHECKPOINT", "passt.pretrained=false"
    )


@pytest.mark.parametrize(
    "args, names",
    [
        (["bcbl.epochz=3"], ["bcbl.epochz", "epochs"]),
        (["bcbl.epochs=three"], ["bcbl.epochs", "three"]),
        (["--splits", "7"], ["--splits", "25,100"]),
    ],
)
def test_a_bad_option_is_one_message_and_exit_2(tiny, tmp_path, capsys, args, names):
    """The job's command line (asc_ray.cli.jobs, in this process): refused before Ray or any data work."""
    from asc_ray.cli.jobs import run_stages
    from asc_ray.console import run_cli

    out = tmp_path / "out"
    argv = ["--data-dir", str(tiny["data"]), "--output-dir", str(out), *SMALL, *args]
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: run_stages(argv, ("teachers",), "test"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    for name in names:
        assert name in err, (name, err)
    assert "\n  fix: " in err and not out.exists()


# ------------------------------------------------------------ the same, as users meet them (slow)
@pytest.fixture(scope="module")
def data_results(tiny, tmp_path_factory):
    """Every broken-data case as a CLI run, two at a time (each a separate run: seconds of imports and checks)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(breaker):
        tmp = tmp_path_factory.mktemp(breaker.__name__)
        data = _copy(tiny, tmp)
        names, extra = breaker(data)
        out = tmp / "out"
        return _pipeline(tiny, data, out, *extra), out, names

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(DATA_CASES, pool.map(one, DATA_CASES), strict=True))


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("breaker", DATA_CASES, ids=[b.__name__[len("break_") :] for b in DATA_CASES])
def test_cli_broken_data_exits_2_in_preflight(data_results, breaker):
    r, out, names = data_results[breaker]
    assert_preflight_error(r, out, *names)


@pytest.mark.slow
def test_cli_missing_data_dir(tiny, tmp_path):
    out = tmp_path / "out"
    r = _pipeline(tiny, tmp_path / "no-such-dir", out)
    assert_preflight_error(r, out, tmp_path / "no-such-dir", "--data-dir")


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, words",
    [
        ("bcbl.epochz=3", ["bcbl.epochz", "epochs"]),
        ("bcbl.epochs=three", ["bcbl.epochs", "integer"]),
    ],
)
def test_cli_bad_config_is_refused_before_ray_is_imported(tiny, tmp_path, override, words):
    out = tmp_path / "out"
    modules = tmp_path / "modules.txt"
    env = cli_env(tiny["uri"], probe=True, ASC_RAY_PROBE_MODULES=str(modules))
    r = _pipeline(tiny, tiny["data"], out, override, env=env)
    assert_preflight_error(r, out, *words)
    assert "ray" not in modules.read_text().split()  # parsed before Ray is even imported
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_cli_bad_config_file(tiny, tmp_path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("bcbl:\n  epochs: [1, 2]\n")
    out = tmp_path / "out"
    r = _pipeline(tiny, tiny["data"], out, "--config", str(cfg))
    assert_preflight_error(r, out, "my.yaml", "bcbl.epochs")


@pytest.mark.slow
def test_cli_unreachable_mlflow_server_is_named_before_ray_starts(tiny, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    r = _pipeline(tiny, tiny["data"], out, env=cli_env(uri))
    assert_preflight_error(r, out, uri, "MLFLOW_TRACKING_URI")
    assert not (out / "cache").exists()  # checked first: no data work either


# --------------------------------------------------------------------------- python -m asc_ray.train
def _train(tiny, out, *args):
    return run_py(
        [
            "-m",
            "asc_ray.train",
            "--split",
            "25",
            "--output-dir",
            str(out),
            "--profile",
            "smoke",
            "--epochs",
            "1",
            *args,
        ],
        cli_env(tiny["uri"]),
        out.parent,
        PREFLIGHT_S * 2,
    )


@pytest.mark.slow
def test_train_cli_corrupt_wav(tiny, tmp_path):
    data = _copy(tiny, tmp_path)
    (names, _) = break_truncated_wav_in_test_set(data)
    r = _train(tiny, tmp_path / "out", "--system", "baseline", "--data-dir", str(data))
    assert_preflight_error(r, tmp_path / "out", *names)
    assert not Layout(tmp_path / "out").unit(UnitRef("baseline", 25, 0)).checkpoint.exists()


@pytest.mark.slow
def test_train_cli_refuses_a_checkpoint_of_another_architecture(tiny, make_trainer, tmp_path):
    """A bcbl24 checkpoint (a real one, written by the Trainer) in the baseline's checkpoint folder."""
    out = tmp_path / "out"
    wrong = Layout(out).unit_dir(UnitRef("baseline", 25, 0))  # where `--system baseline` resumes from
    make_trainer("bcbl24", split=25, data_dir=tiny["data"], out=wrong).save_checkpoint()
    ckpt = wrong / "checkpoint" / "checkpoint.pt"
    before = ckpt.read_bytes()
    r = _train(tiny, out, "--system", "baseline", "--data-dir", str(tiny["data"]))
    text = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in text, text[-3000:]
    msg = r.stderr[r.stderr.index("error: ") :]
    assert str(ckpt) in msg and "--fresh" in msg.split("fix: ", 1)[1], msg
    assert "baseline" in msg and "delete" not in msg  # never advice that loses work
    assert ckpt.read_bytes() == before  # left alone for the user to inspect
    assert not (wrong / "model.pt").exists()


def test_a_checkpoint_of_another_architecture_is_left_alone(make_trainer, tmp_path):
    """The same refusal in this process: the file named, the fix, the checkpoint untouched."""
    wrong = tmp_path / "unit"
    make_trainer("bcbl24", split=25, out=wrong).save_checkpoint()
    ckpt = wrong / "checkpoint" / "checkpoint.pt"
    before = ckpt.read_bytes()
    with pytest.raises(AscRayError) as e:
        make_trainer("baseline", split=25, out=wrong).load_checkpoint(wrong / "checkpoint")
    assert e.value.path == str(ckpt) and "--fresh" in e.value.fix and "delete" not in str(e.value)
    assert ckpt.read_bytes() == before
