"""`python tests/reliability/chaos [options]` (or `python -m reliability.chaos` with tests/ on PYTHONPATH)."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]
for path in (TESTS.parent, TESTS):  # the checkout (asc_ray, uninstalled too) and the tests' helpers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from reliability.chaos.run import main  # noqa: E402

sys.exit(main())
