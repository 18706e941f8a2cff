import filecmp

import pytest
import soundfile as sf

from asc_ray.data.synth import generate, main
from asc_ray.data.tau import TauDataset
from asc_ray.errors import AscRayError


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = (generate(tmp_path / n, clips_per_class=3, seed=s) for n, s in (("a", 7), ("b", 7), ("c", 8)))
    assert _files(a) == _files(b)
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(p) for p in _files(a)], shallow=False)
    assert not mismatch and not errors
    assert (a / "meta.csv").read_bytes() != (c / "meta.csv").read_bytes()


def test_layout_and_format(synth_dataset):
    ds = TauDataset.open(synth_dataset)
    assert len(ds.clips) == 200
    assert (synth_dataset / "meta.csv").read_text().splitlines()[
        0
    ] == "filename\tscene_label\tidentifier\tsource_label"
    for f in list(ds.clips)[:5]:
        info = sf.info(ds.audio_path(f))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 1, 44100, "PCM_16")
    irs = [sf.info(p) for p in sorted((synth_dataset / "irs").glob("*.wav"))]
    assert len({i.samplerate for i in irs}) > 2 and {i.channels for i in irs} == {1, 2}
    assert len({i.frames for i in irs}) == len(irs)


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "d"), "--clips-per-class", "3", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "d") in out and "30 clips" in out
    assert main(["--out", str(tmp_path / "d")]) == 2  # not empty: refused, one message
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(AscRayError, match="clips-per-class"):
        generate(tmp_path / "e", clips_per_class=2)
