"""Every bench/ script (each bench/*.py but the helper modules common.py and recommend_baselines.py, and gpu.py)
runs in --quick mode and ends with its `ratio: <number>` line.

The ratios themselves are not asserted (this machine is shared and noisy; BENCHMARKS.md records the full
runs); only that both sides ran and the line is well-formed and finite. Quick modes are tiny (a few steps on
a few dozen examples, 32 tokens) and run in the precision the hardware runs natively, so they stay fast on
AVX2-only CPUs too. bench/gpu.py needs a GPU: here it must say so and exit 0, and its --dry-run (the same
pipeline on the CPU with a tiny encoder) must reach its table.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def scratch_in_tmp_path(tmp_path, monkeypatch):
    """A script's temporary folders go under the test's tmp_path (TMPDIR), which pytest removes once the test
    has passed: a script killed by the time limit cannot clean up after itself."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def ratio(proc: subprocess.CompletedProcess) -> float:
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"ratio: (\S+)", last)
    assert m, f"last line was {last!r}"
    return float(m.group(1))


# every bench/ script but the shared helpers and the GPU-only one (tested below); recommend_baselines is a
# helper module of the baselines only (no polytask side, so no ratio line), tested in test_recommend_baselines.py
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("common", "gpu",
                                                                               "recommend_baselines"))


def test_known_scripts_are_found():
    assert {"train_speed", "loop_overhead", "infer_speed", "precision", "char_alignment", "weighting_overhead",
            "weighting_methods", "adversarial", "distill", "mutual", "lora", "continual", "fewshot",
            "serve_load", "monitor_speed"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_quick(script):
    proc = run_bench(script, "--quick")
    value = ratio(proc)
    assert math.isfinite(value) and value > 0
    assert "machine:" in proc.stdout
    if script != "char_alignment":  # the others train or infer: the auto precision decision is on the machine line
        assert "precision auto -> " in proc.stdout
    if script == "precision":  # which bf16 path it measured: oneDNN's own report
        assert "oneDNN isa: " in proc.stdout and "oneDNN bf16 matmul: " in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, bench/gpu.py runs the full measurement")
def test_gpu_bench_without_gpu():
    proc = run_bench("gpu")
    assert proc.stdout.strip().splitlines() == [proc.stdout.strip()]  # one line
    assert "needs an NVIDIA GPU" in proc.stdout and "python bench/gpu.py" in proc.stdout


def test_gpu_bench_dry_run():
    proc = run_bench("gpu", "--dry-run", "--peak-tflops", "1")
    assert "| lengths | joint batches |" in proc.stdout
    assert math.isfinite(ratio(proc))


def test_cached_cells_are_reused_only_under_the_same_settings(tmp_path, monkeypatch, capsys):
    """bench/common.cached: an interrupted benchmark continues from its finished cells, but a cell measured under
    other settings (or before settings were recorded) is measured again, not reported as it was."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from common import cached

    calls = []

    def make(value):
        calls.append(value)
        return {"score": value}

    cell = tmp_path / "cell"
    key = {"method": "plain", "seed": 42, "adapt": {"head_lr": 0.01, "sizes": (8, 16)}}
    assert cached(cell, key, lambda: make(1.0))["score"] == 1.0
    assert cached(cell, dict(key), lambda: make(2.0))["score"] == 1.0  # same settings (tuples read back as lists)
    assert calls == [1.0]
    assert cached(cell, {**key, "seed": 43}, lambda: make(3.0))["score"] == 3.0
    assert "measured with other settings" in capsys.readouterr().out
    (cell / "result.json").write_text('{"score": 4.0}')  # a cell from before keys were written
    assert cached(cell, key, lambda: make(5.0))["score"] == 5.0
    assert calls == [1.0, 3.0, 5.0]


def test_fewshot_intent_split_keeps_the_held_out_intents_apart(tmp_path, monkeypatch):
    """bench/fewshot.py's new-intents: the held-out task reads only rows with one held-out intent, the starts'
    intent task only rows with none of them, on every split — the starts never see a held-out intent."""
    import json

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from fewshot import NEW_INTENTS, split_intents

    from polytask.config import load_config

    tasks = load_config(ROOT / "examples" / "english3.yaml").to_dict()["tasks"]
    new, others = split_intents(tasks, tmp_path / "data")
    assert set(others) == {"intent", "topic", "sentiment"} and others["topic"] == tasks["topic"]
    assert others["intent"]["type"] == "multilabel_classification" and new["type"] == "classification"
    for split in ("train", "validation", "test"):
        held = [json.loads(line) for line in Path(new[split]).read_text().splitlines()]
        kept = [json.loads(line) for line in Path(others["intent"][split]).read_text().splitlines()]
        assert held and kept
        assert {r["intent"] for r in held} <= set(NEW_INTENTS)
        assert not any(set(r["intents"]) & set(NEW_INTENTS) for r in kept)
    train = [json.loads(line)["intent"] for line in Path(new["train"]).read_text().splitlines()]
    assert set(train) == set(NEW_INTENTS) and min(train.count(i) for i in NEW_INTENTS) >= 32  # K = 32 is drawable
