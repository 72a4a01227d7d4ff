"""Every bench/ script runs in --quick mode and ends with its `ratio: <number>` line.

The ratios themselves are not asserted (this machine is shared and noisy; BENCHMARKS.md records the full
runs); only that both sides ran and the line is well-formed and finite.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["train_speed", "loop_overhead", "infer_speed", "precision", "char_alignment",
                                    "weighting_overhead", "weighting_methods", "adversarial"])
def test_bench_quick(script):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), "--quick"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"ratio: (\S+)", last)
    assert m, f"last line was {last!r}"
    value = float(m.group(1))
    assert math.isfinite(value) and value > 0
    assert "machine:" in proc.stdout
