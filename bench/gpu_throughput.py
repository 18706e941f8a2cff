"""GPU training throughput of the 32-BCBL student and the PaSST teacher, with GPU utilisation.

    python bench/gpu_throughput.py [--steps 30] [--student-batch 256] [--passt-batch 80] [--passt-size full]

Per model: the pipeline's front-end (log-mel on the GPU) + model + loss + optimiser step, bf16 autocast as
asc_ray.train does on CUDA, on random 1 s waveforms already on the GPU (the data path is measured on the CPU
by bench/student_throughput.py). PaSST uses random weights (pretrained=False: no download; the speed is the
same). Utilisation: nvidia-smi sampled every 0.2 s during the timed steps (mean of utilization.gpu).
Without CUDA it prints `no GPU: skipped` and exits 0.
Last line: `student samples/s <number>` (or `no GPU: skipped`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import figure, footer, header  # noqa: E402


class UtilSampler:
    def __init__(self):
        self.values: list[float] = []
        self._stop = False

    def _run(self):
        while not self._stop:
            try:
                out = subprocess.run(
                    [
                        "nvidia-smi",
                        "--query-gpu=utilization.gpu",
                        "--format=csv,noheader,nounits",
                        "-i",
                        str(torch.cuda.current_device()),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout.strip()
                self.values.append(float(out.splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            time.sleep(0.2)

    def __enter__(self):
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._th.join()

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else float("nan")


def measure(name: str, model_name: str, batch: int, steps: int, passt_size: str) -> tuple[float, float]:
    from asc_ray.features import build_frontend, frontend_sample_rate
    from asc_ray.models import bcbl, passt

    dev = torch.device("cuda")
    fe_name = "passt" if model_name == "passt" else "mel32k"  # the 32-BCBL student's front-end
    frontend = build_frontend(fe_name).to(dev).train()
    if model_name == "passt":
        model = passt(pretrained=False, size=passt_size, n_classes=10).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=2e-5)
    else:
        model = bcbl(32, 10).to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    n = frontend_sample_rate(fe_name)
    wave = torch.randn(batch, n, device=dev) * 0.1
    y = torch.randint(0, 10, (batch,), device=dev)

    def step():
        x = frontend(wave)
        if model_name != "passt":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            z = model(x)
        z = z[0] if isinstance(z, tuple) else z
        loss = torch.nn.functional.cross_entropy(z.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with UtilSampler() as u:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
    sps = steps * batch / dt
    print(f"  {name}: batch {batch}, {steps} steps in {dt:.2f}s", flush=True)
    return sps, u.mean


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--student-batch", type=int, default=256)
    p.add_argument("--passt-batch", type=int, default=80)
    p.add_argument("--passt-size", default="full", choices=("full", "small"))
    p.add_argument("--skip-passt", action="store_true")
    a = p.parse_args(argv)
    header("gpu_throughput")
    if not torch.cuda.is_available():
        print("no GPU: skipped", flush=True)
        return 0
    if not a.skip_passt:
        sps, util = measure("passt teacher", "passt", a.passt_batch, max(3, a.steps // 3), a.passt_size)
        figure("passt samples/s", sps)
        figure("passt gpu_util_pct", util, ".0f")
    sps, util = measure("32-BCBL student", "bcbl32", a.student_batch, a.steps, a.passt_size)
    figure("student gpu_util_pct", util, ".0f")
    footer()
    figure("student samples/s", sps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
