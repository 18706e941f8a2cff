"""A student's test pass on a CPU: CPU seconds per 1,000 one-second clips in fp32 and in the deployed fp16, the
fp16 both as asc-ray runs it (convolutions through the fp32 kernels) and through torch's own fp16 kernels.

    python bench/inference_cpu.py [--system kd_ensemble] [--clips 320] [--threads 1] [--unit DIR]

Untrained weights of the system's architecture (smoke profile) unless --unit names a unit folder (its model.pt
and model_fp16.pt): speed does not depend on them. Batches and layouts are the Classifier's (CPU_BATCH windows;
fp32 in the architecture's training layout, fp16 in the default one). Prints `fp32_s`, `fp16_s` (asc-ray's) and
`fp16_torch_s` per 1,000 clips; the last line is `fp16_speedup` (torch's fp16 kernels' time over ours).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import figure, footer, header  # noqa: E402

from asc_ray.complexity import export_fp16  # noqa: E402
from asc_ray.config import load_config  # noqa: E402
from asc_ray.models import ARCHITECTURES  # noqa: E402
from asc_ray.predict.classifier import (  # noqa: E402
    Classifier,
    Fp16ConvolutionsInFp32Kernels,
    build_from_spec,
    read_unit_spec,
    unit_spec,
)
from asc_ray.systems import get_system  # noqa: E402


def cpu_s_per_1000(clf: Classifier, waves: torch.Tensor) -> float:
    clf.logits(waves[: clf.batch])  # warm-up: kernels' first-call set-up
    t = time.process_time()
    clf.logits(waves)
    return (time.process_time() - t) / len(waves) * 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="kd_ensemble", help="a student system (untrained weights)")
    p.add_argument("--unit", type=Path, help="a student's unit folder instead (its trained weights)")
    p.add_argument("--clips", type=int, default=320)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the smoke profile's: 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if a.unit:
            spec, fp32_w, fp16_w = read_unit_spec(a.unit), a.unit / "model.pt", a.unit / "model_fp16.pt"
        else:
            spec = unit_spec(get_system(a.system), load_config("smoke"))
            model = build_from_spec(spec).eval()
            fp32_w, fp16_w = model.state_dict(), export_fp16(model, Path(tmp) / "model_fp16.pt")
        header(f"inference_cpu ({spec['system']}, {a.clips} clips, {torch.get_num_threads()} thread(s))")
        # the layout training ran in (the Classifier runs fp16 on a CPU in the default layout regardless)
        cl = ARCHITECTURES[spec["model"]].channels_last
        fp32 = Classifier.from_weights(spec, fp32_w, device="cpu", channels_last=cl)
        fp16 = Classifier.from_weights(spec, fp16_w, device="cpu", channels_last=cl)
        waves = 0.1 * torch.randn(a.clips, fp32.window, generator=torch.Generator().manual_seed(0))
        ours = cpu_s_per_1000(fp16, waves)
        with mock.patch.object(Fp16ConvolutionsInFp32Kernels, "CONVS", ()):  # every call passes through
            theirs = cpu_s_per_1000(fp16, waves)
        figure("fp32_s", cpu_s_per_1000(fp32, waves), ".2f")
        figure("fp16_s", ours, ".2f")
        figure("fp16_torch_s", theirs, ".2f")
    footer()
    figure("fp16_speedup", theirs / ours, ".2f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
