"""Where benchmark results go: `benchmarks/results`, or `$CLARA_BENCH_RESULTS` (tests use a
temporary folder so they never overwrite the committed figures)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("CLARA_BENCH_RESULTS") or ROOT / "benchmarks" / "results")
