"""asc-ray-predict on recordings a person has: WAVs of other sample rates, channel counts and lengths written
here, a trained student's unit folder (or its fp16 export) as the model; bad input ends in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from helpers.procs import PY
from helpers.serving import read_probs

from asc_ray.console import run_cli
from asc_ray.data.tau import TauDataset
from asc_ray.predict import Classifier, load_classifier, main, read_audio, read_unit_spec

SR = 32000  # the baseline student's rate


@pytest.fixture(scope="module")
def clips(synth_dataset):
    """Three 1-s clips of different scenes from the synthetic set, at 44.1 kHz (as recorded) and 32 kHz."""
    ds = TauDataset.open(synth_dataset)
    files = ds.test_files()
    picked, scenes = [], set()
    for f in files:
        if ds.clips[f].scene_label not in scenes:
            scenes.add(ds.clips[f].scene_label)
            picked.append(f)
        if len(picked) == 3:
            break
    return {f: synth_dataset / f for f in picked}


def _run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main([str(a) for a in argv]))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_long_clips_are_the_mean_of_their_1s_windows_and_short_ones_padded(
    student_unit, clips, tmp_path, capsys
):
    waves = [read_audio(p, SR) for p in clips.values()]
    d = tmp_path / "in"
    d.mkdir()
    for i, w in enumerate(waves):
        sf.write(d / f"one_{i}.wav", w, SR, subtype="FLOAT")
    sf.write(d / "three_s.wav", np.concatenate(waves), SR, subtype="FLOAT")
    # 2.5 s: windows at 0, 1 s and the last one ending at the end (1.5-2.5 s)
    tail = np.concatenate([waves[0], waves[1], waves[2][: SR // 2]])
    sf.write(d / "two_and_a_half_s.wav", tail, SR, subtype="FLOAT")
    sf.write(d / "last_window.wav", tail[-SR:], SR, subtype="FLOAT")
    short = waves[0][: int(0.3 * SR)]
    sf.write(d / "short.wav", short, SR, subtype="FLOAT")
    sf.write(d / "short_padded.wav", np.pad(short, (0, SR - len(short))), SR, subtype="FLOAT")
    code, _, err = _run(capsys, student_unit, d, "--out", tmp_path / "p.csv")
    assert code == 0, err
    p = read_probs(tmp_path / "p.csv")
    assert len(p) == 8 and all(abs(v.sum() - 1) < 1e-6 for v in p.values())
    one = [p[str(d / f"one_{i}.wav")] for i in range(3)]
    assert (
        np.ptp(np.stack(one), axis=0).max() > 1e-4
    )  # three different answers: the check below means something
    np.testing.assert_allclose(p[str(d / "three_s.wav")], np.mean(one, axis=0), atol=1e-6)
    np.testing.assert_allclose(
        p[str(d / "two_and_a_half_s.wav")],
        np.mean([one[0], one[1], p[str(d / "last_window.wav")]], axis=0),
        atol=1e-6,
    )
    np.testing.assert_allclose(p[str(d / "short.wav")], p[str(d / "short_padded.wav")], atol=1e-6)


def test_other_rates_and_channels_are_resampled_and_mixed_down(
    student_unit, clips, synth_dataset, tmp_path, capsys
):
    name, path = next(iter(clips.items()))
    wave44, sr = sf.read(path, dtype="float32")
    assert sr == 44100
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(path, d / "orig_44k.wav")
    sf.write(d / "stereo_44k.wav", np.stack([wave44, wave44], axis=1), 44100, subtype="FLOAT")
    up48 = AF.resample(torch.from_numpy(wave44), 44100, 48000).numpy()
    sf.write(d / "mono_48k.flac", up48, 48000)  # FLAC, 16 bit
    code, _, err = _run(capsys, student_unit, d, "--out", tmp_path / "p.csv")
    assert code == 0, err
    p = read_probs(tmp_path / "p.csv")
    orig = p[str(d / "orig_44k.wav")]
    np.testing.assert_allclose(p[str(d / "stereo_44k.wav")], orig, atol=1e-6)
    np.testing.assert_allclose(p[str(d / "mono_48k.flac")], orig, atol=2e-3)
    # the same clip through the pipeline's path (waveform cache at 32 kHz, int16) gives the same answer
    from asc_ray.config import load_config
    from asc_ray.data.cache import build_cache
    from asc_ray.predict import unit_spec
    from asc_ray.systems import get_system

    store = build_cache(TauDataset.open(synth_dataset), [name], SR, tmp_path / "cache", progress=False)
    spec = unit_spec(get_system("baseline"), load_config("smoke", None, []))
    assert spec == read_unit_spec(student_unit)  # what the unit folder says is what training built
    logits = Classifier.from_weights(spec, student_unit / "model.pt").logits_of(store, [name])
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy()[0], orig, atol=1e-3)


def test_fp16_export_alone_is_a_model_too(student_unit, clips, tmp_path):
    lone = tmp_path / "elsewhere" / "model_fp16.pt"  # no unit.json beside it: the architecture is recognised
    lone.parent.mkdir()
    shutil.copy(student_unit / "model_fp16.pt", lone)
    waves = [read_audio(p, SR) for p in clips.values()]
    full = load_classifier(str(student_unit / "model.pt")).probabilities(waves)  # the fp32 weights
    half = load_classifier(str(lone))
    assert half.spec["model"] == "bcbl32" and half.sample_rate == SR
    assert next(half.model.parameters()).dtype == torch.float16  # the deployed model runs in fp16
    np.testing.assert_allclose(half.probabilities(waves), full, atol=5e-3)
    # a unit folder means its deployed model too: the same fp16 numbers as the lone export
    np.testing.assert_allclose(
        load_classifier(str(student_unit)).probabilities(waves), half.probabilities(waves)
    )


def test_a_batch_with_unreadable_files_classifies_the_rest_and_lists_them(
    student_unit, clips, tmp_path, capsys
):
    d = tmp_path / "in"
    d.mkdir()
    for f in clips.values():
        shutil.copy(f, d / f.name)
    (d / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really")
    (d / "empty.wav").write_bytes(b"")
    code, _, err = _run(capsys, student_unit, d, "--out", tmp_path / "p.csv")
    assert code == 1
    assert set(read_probs(tmp_path / "p.csv")) == {str(d / f.name) for f in clips.values()}
    assert "2 file(s)" in err  # how many, then which
    assert str(d / "broken.wav") in err and str(d / "empty.wav") in err and "Traceback" not in err


@pytest.mark.parametrize(
    "case", ["missing_audio", "empty_folder", "no_unit", "other_system", "only_unreadable"]
)
def test_bad_input_is_one_line_and_exit_2(case, student_unit, clips, tmp_path, capsys):
    """Exit 2, one error line naming the file, one fix line; nothing on stdout."""
    model, audio = student_unit, [next(iter(clips.values()))]
    if case == "missing_audio":
        audio = [tmp_path / "nope.wav"]
        named = audio[0]
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        audio = [tmp_path / "empty"]
        named = audio[0]
    elif case == "no_unit":
        model = named = student_unit.parent  # split100/: a folder, not a unit
    elif case == "other_system":  # a unit folder whose weights are another system's
        model = tmp_path / "unit"
        shutil.copytree(student_unit, model)
        spec = json.loads((model / "unit.json").read_text())
        (model / "unit.json").write_text(json.dumps({**spec, "system": "bcbl24", "model": "bcbl24"}))
        named = model / "model_fp16.pt"
    elif case == "only_unreadable":
        (tmp_path / "x.wav").write_text("not audio")
        audio = [tmp_path / "x.wav"]
        named = audio[0]
    code, out, err = _run(capsys, model, *audio)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and str(named) in lines[0], err
    assert lines[1].startswith("  fix: ") and out == ""
    if case == "other_system":
        assert "bcbl24" in lines[0]  # which architecture it was asked to be


@pytest.mark.slow
def test_console_script_and_progress_bar_on_many_files(student_unit, clips, tmp_path):
    exe = Path(PY).parent / "asc-ray-predict"
    assert exe.is_file(), "pip install -e . installs the asc-ray-predict console script"
    wave = read_audio(next(iter(clips.values())), SR)
    d = tmp_path / "many"
    d.mkdir()
    for i in range(220):  # over the progress bar's threshold (200)
        sf.write(d / f"c{i:03d}.wav", wave[: SR // 10] * (1 + i / 220), SR)
    r = subprocess.run(
        [str(exe), str(student_unit), str(d / "*.wav")], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "220/220" in r.stderr  # the progress bar counted every file
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 221 and lines[0].split()[:2] == ["filename", "scene_label"]


def test_help_says_how_long_clips_are_handled(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "1-s" in out and "averaged" in out and "padded" in out


def test_classifier_windows():
    clf = Classifier({"sample_rate": 10, "clip_seconds": 1.0, "classes": []}, None, None, None, "")
    assert clf.windows(np.arange(4)).tolist() == [[0, 1, 2, 3, 0, 0, 0, 0, 0, 0]]
    w = clf.windows(np.arange(25))
    assert [r[0] for r in w] == [0, 10, 15] and all(len(r) == 10 for r in w)
    assert len(clf.windows(np.arange(20))) == 2


def test_cpu_batches_give_the_logits_of_one_pass_over_every_window(student_unit, monkeypatch):
    """On a CPU the classifier runs small batches (CPU_BATCH: ~3x faster there), the last one padded: a window's
    logits are bit for bit those of one pass over all windows, in fp32 (both memory layouts, as trained) and in
    the deployed fp16 model. Unpadded, channels-last kernels of another batch size round differently."""
    from asc_ray.predict import classifier

    spec = read_unit_spec(student_unit)
    waves = np.random.default_rng(0).standard_normal((40, SR)).astype(np.float32) * 0.1  # 16 + 16 + 8
    for weights, cl in (("model.pt", False), ("model.pt", True), ("model_fp16.pt", False)):
        clf = Classifier.from_weights(spec, student_unit / weights, device="cpu", channels_last=cl)
        assert clf.batch == classifier.CPU_BATCH < len(waves)
        small = clf.logits(waves)
        with monkeypatch.context() as m:
            m.setattr(classifier, "CPU_BATCH", len(waves))
            one = clf.logits(waves)
        np.testing.assert_array_equal(small, one, err_msg=f"{weights}, channels_last={cl}")


def test_fp16_convolutions_on_a_cpu_run_in_fp32_kernels_within_an_ulp_of_torchs_fp16(student_unit):
    """The deployed fp16 model on a CPU convolves through the fp32 kernels (torch's fp16 fallback is ~4x
    slower): no call of that fallback, and logits within one fp16 ulp (at the clip's scale) of torch's own fp16
    path, the same classes."""
    from torch.profiler import profile

    from asc_ray.predict.classifier import Fp16ConvolutionsInFp32Kernels

    clf = Classifier.from_weights(read_unit_spec(student_unit), student_unit / "model_fp16.pt", device="cpu")
    waves = np.random.default_rng(1).standard_normal((32, SR)).astype(np.float32) * 0.1
    with profile() as prof:
        ours = clf.logits(waves)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::mkldnn_convolution" in ops and "aten::_slow_conv2d_forward" not in ops, sorted(ops)
    with torch.no_grad():
        x = clf.frontend(torch.from_numpy(waves)).half()
        torchs = clf.model(x).float().numpy()
        with Fp16ConvolutionsInFp32Kernels():  # the mode alone: bit for bit what the classifier returned
            np.testing.assert_array_equal(clf.model(x).float().numpy(), ours)
    # one ulp at each clip's largest logit: an error upstream reaches a logit near zero at that scale
    ulp = np.spacing(np.abs(torchs).max(1, keepdims=True).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(ours - torchs) <= ulp), np.abs(ours - torchs).max()
    assert (ours.argmax(1) == torchs.argmax(1)).all()


def test_a_student_at_fp32_and_fp16_shares_one_front_end_pass_with_each_ones_own_logits(student_unit):
    """The test pass of a student's fp32 weights and of its fp16 export runs the front-end once per batch for
    both (it costs a CPU as much as the model), and each gets bit for bit the logits of its own pass, whatever
    its layout."""
    from asc_ray.predict.classifier import one_pass

    spec = read_unit_spec(student_unit)
    waves = torch.from_numpy(np.random.default_rng(2).standard_normal((40, SR)).astype(np.float32) * 0.1)
    fp32 = Classifier.from_weights(spec, student_unit / "model.pt", device="cpu", channels_last=True)
    fp16 = Classifier.from_weights(spec, student_unit / "model_fp16.pt", device="cpu")
    own = [fp32.logits(waves), fp16.logits(waves)]
    calls = []
    fp32.frontend.register_forward_hook(lambda *_: calls.append(1))
    fp16.frontend.register_forward_hook(lambda *_: calls.append(16))
    shared = one_pass([fp32, fp16], len(waves), lambda i, j: waves[i:j])
    assert calls == [1, 1, 1]  # 16 + 16 + 8 windows: three batches, one front-end
    for got, want in zip(shared, own, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(*shared)  # (two models: fp16 rounds)


def test_a_pass_over_clips_another_pass_made_reads_its_front_end_output_back(
    student_unit, synth_dataset, tmp_path, monkeypatch
):
    """Every CNN unit of a run tests on the same clips: the first pass keeps its front-end output beside the
    waveform cache, the next reads it instead of running the front-end, with bit for bit the same logits. Other
    clips, another order or another thread count get their own entry; a cut-short entry is computed again; an
    interrupted pass leaves no temporary; a cache that cannot be written costs nothing but the sharing; PaSST's
    front-end (random draws) is not shared."""
    from asc_ray.data.cache import build_cache
    from asc_ray.features import build_frontend
    from asc_ray.predict import logits_of_each, shared_features
    from asc_ray.predict.classifier import _clips, one_pass

    ds = TauDataset.open(synth_dataset)
    files = ds.test_files()[:40]
    store = build_cache(ds, files, SR, tmp_path / "cache", progress=False)
    clf = Classifier.from_weights(read_unit_spec(student_unit), student_unit / "model.pt", device="cpu")
    calls = []
    clf.frontend.register_forward_hook(lambda *_: calls.append(1))
    alone = one_pass([clf], *_clips(store, files))[0]  # no sharing: the front-end on every batch
    assert len(calls) == 3
    entries = lambda: sorted((tmp_path / "cache" / shared_features.FOLDER).glob("*"))  # noqa: E731
    first = logits_of_each([clf], store, files)[0]
    assert len(calls) == 6 and [p.suffix for p in entries()] == [".npy"]
    again = clf.logits_of(store, files)
    assert len(calls) == 6  # read back: no front-end
    np.testing.assert_array_equal(first, alone)
    np.testing.assert_array_equal(again, alone)

    np.testing.assert_array_equal(clf.logits_of(store, files[::-1]), alone[::-1])
    assert len(calls) == 9 and len(entries()) == 2  # another order, its own entry
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        clf.logits_of(store, files)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 12 and len(entries()) == 3

    whole = shared_features.entry(clf.frontend, store, files, 16, True)
    whole.write_bytes(whole.read_bytes()[:1000])  # cut short
    np.testing.assert_array_equal(clf.logits_of(store, files), alone)
    assert len(calls) == 15 and np.load(whole).shape[0] == 48  # computed and written again, padding kept

    n, take = _clips(store, files[:30])

    def interrupted(i, j):
        if i:
            raise KeyboardInterrupt
        return take(i, j)

    with pytest.raises(KeyboardInterrupt):
        one_pass([clf], n, interrupted, share=(store, files[:30]))
    assert len(entries()) == 3  # the half-written temporary is gone

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    other = files[:20]
    np.testing.assert_array_equal(clf.logits_of(store, other), alone[:20])
    assert len(entries()) == 3  # nothing written, no temporary left
    assert shared_features.entry(build_frontend("passt"), store, files, 16, True) is None
