"""Front-ends: milliseconds per training batch of asc-ray's log-mel front-ends against the code they replace.

    python bench/frontend_throughput.py [--batch 8] [--repeats 30] [--threads 1]

For each front-end (train mode, 1 s clips of noise): asc-ray's (`asc_ray.features.build_frontend`) and the
reference it must equal - torchaudio's MelSpectrogram (power 2, log, the same frequency masking) for mel32k /
mel44k, hear21passt's AugmentMelSTFT.forward for passt. Prints `<name>_ms`, `<name>_ref_ms` and
`<name>_speedup` lines; the last line is their geometric mean. --threads 1 is the smoke profile's
setting (one thread per training, several trainings per laptop).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import figure, footer, header  # noqa: E402

from asc_ray.augment import freq_mask  # noqa: E402
from asc_ray.features import (  # noqa: E402
    FRONTENDS,
    LOG_OFFSET,
    build_frontend,
    frontend_sample_rate,
    torchaudio_mel,
)


def torchaudio_log_mel(name: str):
    """The pre-change LogMel: torchaudio's MelSpectrogram as the DCASE baseline calls it (|X|.pow(2))."""
    c = FRONTENDS[name]
    mel = torchaudio_mel(c)

    def forward(wave):
        x = freq_mask(mel(wave).unsqueeze(1), c.freqm).squeeze(1)
        return (x + LOG_OFFSET).log().unsqueeze(1)

    return forward


def ms_per_call(fn, wave, repeats: int) -> float:
    fn(wave)  # warm-up: allocator, FFT plans
    t = time.perf_counter()
    for _ in range(repeats):
        fn(wave)
    return (time.perf_counter() - t) / repeats * 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="clips per batch (the smoke profile's batch size)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    header(f"frontend_throughput (batch {a.batch}, {torch.get_num_threads()} thread(s))")
    warnings.simplefilter("ignore")  # hear21passt's own stft/autocast deprecation warnings
    speedups = []
    for name in ("mel32k", "mel44k", "passt"):
        fe = build_frontend(name).train()
        ref = fe.mel.forward if name == "passt" else torchaudio_log_mel(name)
        wave = 0.1 * torch.randn(
            a.batch, frontend_sample_rate(name), generator=torch.Generator().manual_seed(0)
        )
        with torch.no_grad():
            ours, theirs = ms_per_call(fe, wave, a.repeats), ms_per_call(ref, wave, a.repeats)
        figure(f"{name}_ms", ours, ".2f")
        figure(f"{name}_ref_ms", theirs, ".2f")
        figure(f"{name}_speedup", theirs / ours, ".2f")
        speedups.append(theirs / ours)
    footer()
    figure("mean_speedup", math.prod(speedups) ** (1 / len(speedups)), ".2f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
