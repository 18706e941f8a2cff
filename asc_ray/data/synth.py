"""A small synthetic dataset in the exact TAU22 + DCASE 2024 layout, for tests and smoke runs.

    asc-ray synth --out DIR [--clips-per-class N] [--test-clips-per-class N] [--seed S]
    asc-ray synth --corpus --out DIR [--classes N] [--clips-per-class N] [--seed S]   (asc_ray.data.corpus)

Writes DIR/meta.csv, DIR/audio/*.wav (1 s, 44.1 kHz, mono, PCM_16), DIR/split{5,10,25,50,100}.csv,
DIR/test.csv and DIR/irs/*.wav (impulse responses of mixed lengths, channel counts and rates, like MicIRP).

Scenes are textures a small CNN can learn but not perfectly: each scene has a noise colour, a spectral
band, tonal components, an amplitude-modulation rate and a density of transients; similar scenes
(metro/tram, airport/shopping_mall, public_square/street_pedestrian) have similar parameters, and every
recording and clip jitters them, under background noise. Devices are fixed filters + gain + noise floor;
device a dominates train, s4-s6 appear only in test (as in TAU). Same seed -> same bytes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from asc_ray.data.corpus import generate_corpus
from asc_ray.data.tau import DEVICES, SCENES, SPLITS
from asc_ray.data.textures import (
    CHUNK,
    FREQS,
    LOGF,
    REC_BAND_OCT_SD,
    REC_SLOPE_SD,
    SR,
    N,
    bump,
    texture_clips,
)
from asc_ray.errors import AscRayError

TEST_SHARE = 0.3  # of each scene's clips, as whole recordings
CLIPS_PER_RECORDING = 5  # on average (train); test recordings hold ~4
CITIES = (
    "barcelona",
    "helsinki",
    "lisbon",
    "london",
    "lyon",
    "milan",
    "paris",
    "prague",
    "stockholm",
    "vienna",
)
TRAIN_DEVICES, TRAIN_P = ("a", "b", "c", "s1", "s2", "s3"), (0.7, 0.06, 0.06, 0.06, 0.06, 0.06)

# scene -> (noise slope, band centre Hz, band width oct, band gain dB, tones Hz, tone level,
#           AM rate Hz, AM depth, transients per s, transient decay s, transient centre Hz)
SCENE_PARAMS = {
    "airport": (1.0, 500, 1.5, 18, (), 0.0, 0.3, 0.2, 1.0, 0.08, 1000),
    "bus": (1.6, 120, 1.0, 22, (95, 190), 0.9, 1.5, 0.3, 0.5, 0.05, 300),
    "metro": (1.3, 250, 1.0, 20, (400, 800), 0.75, 4.0, 0.4, 2.0, 0.03, 2000),
    "metro_station": (1.1, 800, 1.5, 16, (400,), 0.3, 0.5, 0.3, 2.5, 0.06, 1500),
    "park": (0.6, 4000, 1.0, 20, (3200, 4100), 0.45, 8.0, 0.5, 3.0, 0.02, 4000),
    "public_square": (0.9, 1500, 2.0, 16, (), 0.0, 1.0, 0.3, 4.0, 0.025, 2500),
    "shopping_mall": (1.0, 700, 1.5, 17, (), 0.0, 0.4, 0.2, 1.5, 0.1, 1200),
    "street_pedestrian": (0.9, 1800, 2.0, 16, (), 0.0, 1.5, 0.4, 5.0, 0.015, 3000),
    "street_traffic": (1.8, 80, 1.5, 22, (), 0.0, 0.2, 0.6, 0.5, 0.2, 500),
    "tram": (1.3, 300, 1.0, 20, (600, 1200), 0.6, 3.0, 0.4, 1.5, 0.04, 1800),
}
# scene -> typical level (RMS dBFS): a street is louder than a park
SCENE_LEVEL_DB = {
    "airport": -24,
    "bus": -20,
    "metro": -19,
    "metro_station": -23,
    "park": -30,
    "public_square": -25,
    "shopping_mall": -26,
    "street_pedestrian": -22,
    "street_traffic": -17,
    "tram": -21,
}
# device -> (high-pass Hz, low-pass Hz, (resonance Hz, gain dB), tilt dB/oct above 1 kHz, noise floor)
DEVICE_PARAMS = {
    "a": (30, 20000, (1000, 0), 0.0, 1e-4),
    "b": (200, 16000, (3000, 3), 0.0, 3e-4),
    "c": (60, 8000, (1000, 4), 0.0, 3e-4),
    "s1": (40, 18000, (2000, 0), -3.0, 2e-4),
    "s2": (400, 18000, (5000, 8), 0.0, 2e-4),
    "s3": (80, 6000, (2000, -8), 0.0, 2e-4),
    "s4": (300, 4000, (1500, 3), 0.0, 5e-4),
    "s5": (50, 20000, (8000, 4), 3.0, 2e-4),
    "s6": (100, 3000, (800, 6), 0.0, 5e-4),
}
IR_SPECS = [  # (sample rate, channels, length, subtype): deliberately mixed, like MicIRP
    (44100, 1, 2205, "PCM_16"),
    (48000, 2, 4800, "PCM_24"),
    (16000, 1, 640, "PCM_32"),  # not FLOAT: its PEAK chunk holds a timestamp (bytes would differ)
    (32000, 2, 4000, "PCM_16"),
    (22050, 1, 1500, "PCM_16"),
]


def _device_response(device: str) -> np.ndarray:
    hp, lp, (rc, rg), tilt, _ = DEVICE_PARAMS[device]
    f = np.maximum(FREQS, 1.0)
    h = 1 / np.sqrt(1 + (hp / f) ** 4) / np.sqrt(1 + (f / lp) ** 8)  # 2nd/4th-order-like edges
    h = h * bump(np.array([rc]), [0.5], [rg])[0]
    h = h * 10 ** (tilt * np.maximum(LOGF - np.log2(1000), 0) / 20)
    return h


def _scene_clips(rng, scene: str, rec_jitter: np.ndarray, devices: list[str]) -> np.ndarray:
    """float [n, N] clips of one scene; rec_jitter [n, 2] = per-recording (slope, log2 band) offsets."""

    def colour(x: np.ndarray) -> None:  # device: fixed filter, gain and noise floor
        for dev in set(devices):
            m = np.array([d == dev for d in devices])
            x[m] = np.fft.irfft(np.fft.rfft(x[m]) * _device_response(dev)[None], n=N)

    floor = np.array([DEVICE_PARAMS[d][4] for d in devices])[:, None]
    return texture_clips(rng, SCENE_PARAMS[scene], SCENE_LEVEL_DB[scene], rec_jitter, colour, floor)


def _impulse_response(rng, sr: int, channels: int, length: int) -> np.ndarray:
    """A microphone-like impulse response (MicIRP holds microphones' responses, not rooms): a minimum-phase
    filter with a random band edge at each end, a resonance and a tilt - the same kind of colouring that tells
    the synthetic devices apart - so DIR teaches what it does on real data: that a device's colouring is not
    the scene. One filter per channel."""
    n_fft = 1 << int(np.ceil(np.log2(max(4 * length, 2048))))
    f = np.maximum(np.fft.rfftfreq(n_fft, 1 / sr), 1.0)
    logf = np.log2(np.maximum(f, 20.0))
    ir = np.zeros((length, channels))
    for c in range(channels):
        hp = 10 ** rng.uniform(np.log10(30), np.log10(400))
        lp = min(10 ** rng.uniform(np.log10(3000), np.log10(20000)), 0.45 * sr)
        centre, gain_db, tilt = (
            10 ** rng.uniform(np.log10(500), np.log10(8000)),
            rng.choice([-1, 1]) * rng.uniform(10, 14),  # a resonance or a notch always: a microphone colours
            rng.uniform(-3, 3),
        )
        mag = 1 / np.sqrt(1 + (hp / f) ** 4) / np.sqrt(1 + (f / lp) ** 8)
        mag *= 10 ** (
            (
                gain_db * np.exp(-0.5 * ((logf - np.log2(centre)) / 0.5) ** 2)
                + tilt * np.maximum(logf - np.log2(1000), 0)
            )
            / 20
        )
        # minimum phase from the magnitude (folded real cepstrum): the energy comes first, like a real response
        cep = np.fft.irfft(np.log(np.maximum(mag, 1e-5)), n_fft)
        fold = np.zeros(n_fft)
        fold[0], fold[n_fft // 2] = cep[0], cep[n_fft // 2]
        fold[1 : n_fft // 2] = 2 * cep[1 : n_fft // 2]
        ir[:, c] = np.fft.irfft(np.exp(np.fft.rfft(fold)), n_fft)[:length]
    return (ir / np.abs(ir).max() * 0.9).astype(np.float32)


def _recordings(rng, n_clips: int, n_rec: int, first_loc: int) -> list[tuple[str, str, str, int]]:
    """n_rec recordings (identifier, city, location, clips) holding n_clips clips, at least one each."""
    recs = []
    for k, size in enumerate(1 + rng.multinomial(n_clips - n_rec, np.ones(n_rec) / n_rec)):
        city = CITIES[rng.integers(len(CITIES))]
        recs.append((f"{city}-{first_loc + k}", city, str(first_loc + k), int(size)))
    return recs


def _write_clips(rng, out: Path, scene: str, recs: list, devices) -> list[tuple[str, str, str]]:
    """Synthesise and write every clip of `recs`; (filename, identifier, device) each. `devices(rng)` picks a
    clip's device."""
    slots, rec_jitter = [], []
    for ident, city, location, size in recs:
        jit = (
            rng.normal(0, REC_SLOPE_SD),
            rng.normal(0, REC_BAND_OCT_SD),
        )  # the recording place's own character
        for j in range(size):
            dev = devices(rng)
            slots.append(
                (f"audio/{scene}-{city}-{location}-{1000 * (j // 10)}-{j % 10}-{dev}.wav", ident, dev)
            )
            rec_jitter.append(jit)
    rec_jitter = np.array(rec_jitter)
    for start in range(0, len(slots), CHUNK):
        part = slots[start : start + CHUNK]
        clips = _scene_clips(rng, scene, rec_jitter[start : start + CHUNK], [d for _, _, d in part])
        for (fn, _, _), wave in zip(part, clips, strict=True):
            sf.write(out / fn, wave.astype(np.float32), SR, subtype="PCM_16")
    return slots


def generate(
    out: Path, clips_per_class: int = 40, seed: int = 0, test_clips_per_class: int | None = None
) -> Path:
    """Write the dataset to `out` (must be empty or absent); returns `out`. Each scene has `clips_per_class`
    clips, TEST_SHARE of them in test, unless `test_clips_per_class` sets the test part's size: the training part
    (its clips, recordings and splits) is the same whatever the test part's size, since each has its own random
    stream and its own range of recording places."""
    out = Path(out).expanduser()
    if clips_per_class < 3 or (test_clips_per_class is not None and test_clips_per_class < 1):
        raise AscRayError(
            f"--clips-per-class must be >= 3 (two train recordings and one test recording per scene) and "
            f"--test-clips-per-class >= 1, got {clips_per_class} and {test_clips_per_class}",
            fix="use e.g. --clips-per-class 40 --test-clips-per-class 100",
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AscRayError(
            "output directory exists and is not empty",
            path=out,
            fix="choose a new --out directory or delete this one",
        )
    (out / "audio").mkdir(parents=True, exist_ok=True)
    train_rng, test_rng, ir_rng = (np.random.default_rng([seed, part]) for part in range(3))

    rows, train_rows, test_rows, splits = [], [], [], {p: [] for p in SPLITS}
    for s, scene in enumerate(SCENES):
        n_train = clips_per_class - max(1, round(TEST_SHARE * clips_per_class))
        n_test = test_clips_per_class or max(1, round(TEST_SHARE * clips_per_class))
        train_recs = _recordings(
            train_rng, n_train, max(2, round(n_train / CLIPS_PER_RECORDING)), 1000 + 1000 * s
        )
        test_recs = _recordings(test_rng, n_test, max(1, round(n_test / 4)), 100000 + 1000 * s)
        train = _write_clips(
            train_rng,
            out,
            scene,
            train_recs,
            lambda r: TRAIN_DEVICES[r.choice(len(TRAIN_DEVICES), p=TRAIN_P)],
        )
        # test devices cycle through all nine across scenes (balanced, every device present), shuffled
        test_devices = [DEVICES[(s * n_test + k) % len(DEVICES)] for k in test_rng.permutation(n_test)]
        test = _write_clips(test_rng, out, scene, test_recs, lambda r, devs=test_devices: devs.pop())
        rows += [(fn, scene, ident, dev) for fn, ident, dev in train + test]
        train_rows += [(fn, scene) for fn, _, _ in train]
        test_rows += [(fn, scene) for fn, _, _ in test]
        # nested splits: a shuffled order of this scene's train recordings; split p = the shortest prefix
        # holding >= p % of the scene's train clips (at least one recording), so 5 c 10 c ... c 100
        order = [train_recs[i] for i in train_rng.permutation(len(train_recs))]
        cum = np.cumsum([r[3] for r in order])
        for p in SPLITS:
            k = int(np.searchsorted(cum, p / 100 * n_train - 1e-9)) + 1
            chosen = {r[0] for r in order[:k]}
            splits[p] += [(fn, scene) for fn, ident, _ in train if ident in chosen]

    def write(name, header, table):
        with open(out / name, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(header)
            w.writerows(sorted(table))

    write("meta.csv", ("filename", "scene_label", "identifier", "source_label"), rows)
    for p in SPLITS:
        write(f"split{p}.csv", ("filename", "scene_label"), splits[p])
    write("test.csv", ("filename", "scene_label"), test_rows)

    (out / "irs").mkdir(exist_ok=True)
    for i, (sr, ch, length, subtype) in enumerate(IR_SPECS):
        ir = _impulse_response(ir_rng, sr, ch, length)
        sf.write(
            out / "irs" / f"ir{i:02d}_{sr}hz_{ch}ch.wav", ir if ch > 1 else ir[:, 0], sr, subtype=subtype
        )

    print(
        f"wrote a synthetic TAU22-layout dataset to {out}: {len(rows)} clips "
        f"(train {len(train_rows)}, test {len(test_rows)}), {len(SCENES)} scenes, splits "
        + ", ".join(f"{p}%={len(splits[p])}" for p in SPLITS)
        + f", {len(IR_SPECS)} impulse responses"
    )
    return out


def main(argv: list[str] | None = None, prog: str = "asc-ray synth") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output directory (new or empty)")
    ap.add_argument(
        "--clips-per-class",
        type=int,
        default=None,
        help="clips per scene: its training part is this less the test share (default: 40); with --corpus, "
        "clips per class (default: 80)",
    )
    ap.add_argument(
        "--test-clips-per-class",
        type=int,
        default=100,
        help="test clips per scene, whatever the training part (default: %(default)s: 1,000 test clips, "
        "enough to tell a few points apart)",
    )
    ap.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default: %(default)s)")
    ap.add_argument(
        "--corpus",
        action="store_true",
        help="the pretraining corpus instead (what stands in for AudioSet: sound textures of --classes classes, "
        "none of them a scene, --clips-per-class each; pretrain.corpus=synthetic makes it itself)",
    )
    ap.add_argument("--classes", type=int, default=40, help="--corpus: its classes (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        if args.corpus:
            generate_corpus(args.out, args.classes, args.clips_per_class or 80, args.seed)
        else:
            generate(args.out, args.clips_per_class or 40, args.seed, args.test_clips_per_class)
    except AscRayError as e:  # also the console script asc-ray-synth: one message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
