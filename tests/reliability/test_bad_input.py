"""Bad input, end to end: `python jobs/full_pipeline.py` (and `python -m asc_ray.train`) run as users run them,
on a broken copy of a small synthetic dataset. Each case must end in pre-flight with exit status 2 and one
message on stderr that names the file or setting and the fix; never a traceback, never a started Ray or a
teacher folder, within seconds.

These runs are local (no RAY_ADDRESS): joining a cluster adds checks of its own before the data
(tests/cluster/test_shared_storage.py). A case that got past pre-flight would start a local Ray and train a
one-epoch smoke model: its test then fails on the exit status.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
from rel_helpers import ROOT, cli_env, closed_port, run_cli

from asc_ray.data.synth import generate
from asc_ray.data.tau import TauDataset

PIPELINE = [str(ROOT / "jobs" / "full_pipeline.py")]
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
PREFLIGHT_S = 150  # generous for a loaded 2-core machine; a pre-flight failure takes ~5-15 s on an idle one


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
    return run_cli(
        [*PIPELINE, "--data-dir", str(data), "--output-dir", str(out), *SMALL, *extra],
        env,
        out.parent,
        timeout,
    )


def assert_preflight_error(r, seconds, out, *names, limit=PREFLIGHT_S):
    text = r.stdout + r.stderr
    assert r.returncode == 2, f"exit {r.returncode}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert "error: " in r.stderr and "fix: " in r.stderr, r.stderr[-2000:]
    msg = r.stderr[r.stderr.index("error: ") :]
    for name in names:
        assert str(name) in msg, f"{name!r} not in:\n{msg}"
    # pre-flight: Ray never started, no teacher was launched, nothing to resume from was written
    assert "Ray: " not in r.stdout and "teachers: " not in r.stdout, r.stdout[-2000:]
    for sub in ("ray_results", "teachers", "students", "units", "logits"):
        assert not (out / sub).exists(), sub
    assert seconds < limit, f"took {seconds:.0f}s"


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


@pytest.fixture(scope="module")
def data_results(tiny, tmp_path_factory):
    """Every broken-data case, run two at a time (each is a separate CLI run: seconds of imports and checks)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(breaker):
        tmp = tmp_path_factory.mktemp(breaker.__name__)
        data = _copy(tiny, tmp)
        names, extra = breaker(data)
        out = tmp / "out"
        r, secs = _pipeline(tiny, data, out, *extra)
        return r, secs, out, names

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(DATA_CASES, pool.map(one, DATA_CASES), strict=True))


@pytest.mark.parametrize("breaker", DATA_CASES, ids=[b.__name__[len("break_") :] for b in DATA_CASES])
def test_broken_data_fails_in_preflight(data_results, breaker):
    r, secs, out, names = data_results[breaker]
    assert_preflight_error(r, secs, out, *names)


def test_missing_data_dir(tiny, tmp_path):
    out = tmp_path / "out"
    r, secs = _pipeline(tiny, tmp_path / "no-such-dir", out)
    assert_preflight_error(r, secs, out, tmp_path / "no-such-dir", "--data-dir")


# ----------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override, words",
    [
        ("bcbl.epochz=3", ["bcbl.epochz", "epochs"]),
        ("bcbl.epochs=three", ["bcbl.epochs", "integer"]),
    ],
)
def test_bad_config_fails_within_seconds(tiny, tmp_path, override, words):
    out = tmp_path / "out"
    r, secs = _pipeline(tiny, tiny["data"], out, override)
    assert_preflight_error(r, secs, out, *words, limit=20)  # parsed before Ray / torch are even imported
    assert not out.exists() or not any(out.iterdir())


def test_bad_config_file(tiny, tmp_path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("bcbl:\n  epochs: [1, 2]\n")
    out = tmp_path / "out"
    r, secs = _pipeline(tiny, tiny["data"], out, "--config", str(cfg))
    assert_preflight_error(r, secs, out, "my.yaml", "bcbl.epochs", limit=30)


# ------------------------------------------------------------------------------------ MLflow, PaSST
def test_unreachable_mlflow_server_is_named_before_ray_starts(tiny, tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    out = tmp_path / "out"
    r, secs = _pipeline(tiny, tiny["data"], out, env=cli_env(uri))
    assert_preflight_error(r, secs, out, uri, "MLflow", "MLFLOW_TRACKING_URI")
    assert not (out / "cache").exists()  # checked first: no data work either


def test_passt_weights_absent_without_network(tiny, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    dead = f"http://127.0.0.1:{closed_port()}"  # every download goes to a closed proxy: no network
    env = cli_env(
        tiny["uri"], HOME=str(home), https_proxy=dead, HTTPS_PROXY=dead, http_proxy=dead, HTTP_PROXY=dead
    )
    for k in ("no_proxy", "NO_PROXY"):
        env.pop(k, None)
    out = tmp_path / "out"
    r, secs = _pipeline(
        tiny,
        tiny["data"],
        out,
        "teachers.systems=[passt_fms]",
        "passt.pretrained=true",
        "passt.size=full",
        env=env,
    )
    assert_preflight_error(
        r,
        secs,
        out,
        "passt-s-f128-p16-s10-ap.476-swa.pt",
        "ASC_RAY_PASST_CHECKPOINT",
        "passt.pretrained=false",
    )


# --------------------------------------------------------------------------- python -m asc_ray.train
def _train(tiny, out, *args):
    env = cli_env(tiny["uri"])
    return run_cli(
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
        env,
        out.parent,
        PREFLIGHT_S * 2,
    )


def test_train_cli_corrupt_wav(tiny, tmp_path):
    data = _copy(tiny, tmp_path)
    (names, _) = break_truncated_wav_in_test_set(data)
    r, secs = _train(tiny, tmp_path / "out", "--system", "baseline", "--data-dir", str(data))
    assert_preflight_error(r, secs, tmp_path / "out", *names)
    assert not (tmp_path / "out" / "split25" / "baseline" / "checkpoint").exists()


def test_train_cli_refuses_a_checkpoint_of_another_architecture(tiny, tmp_path):
    """A bcbl24 checkpoint (a real one, written by the Trainer) in the baseline's checkpoint folder."""
    from asc_ray.config import load_config
    from asc_ray.systems import get_system
    from asc_ray.train import Trainer, prepare_data

    out = tmp_path / "out"
    cfg = load_config("smoke", None, [])
    s24 = get_system("bcbl24")
    data = prepare_data(cfg, tiny["data"], out, 25, s24, progress=False)
    wrong = out / "split25" / "baseline"
    Trainer(s24, cfg, data, wrong, 25, log=lambda m: None).save_checkpoint()
    ckpt = wrong / "checkpoint" / "checkpoint.pt"
    before = ckpt.read_bytes()
    r, secs = _train(tiny, out, "--system", "baseline", "--data-dir", str(tiny["data"]))
    text = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in text, text[-3000:]
    assert str(ckpt) in r.stderr and "fix: " in r.stderr and "--fresh" in r.stderr, r.stderr
    assert "does not fit baseline" in r.stderr and "delete" not in r.stderr  # never advice that loses work
    assert ckpt.read_bytes() == before  # left alone for the user to inspect
    assert not (wrong / "model.pt").exists()
