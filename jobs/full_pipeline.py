"""The whole pipeline: teachers -> logits -> students -> results.

    python jobs/full_pipeline.py --data-dir D --output-dir O [--splits 5,10,25,50,100] [--profile smoke|full]
                      [--config FILE] [--epochs N] [--fresh] [key=value ...]

Alone it starts a local Ray; under `ray job submit` it joins that cluster (RAY_ADDRESS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from asc_ray.cli.jobs import run_stages  # noqa: E402
from asc_ray.console import run_cli  # noqa: E402
from asc_ray.layout import STAGES  # noqa: E402

if __name__ == "__main__":
    run_cli(lambda: run_stages(None, STAGES, __doc__.splitlines()[0]))
