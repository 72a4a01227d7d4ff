"""`polytask compare`: probe / single / multi runs per seed, delta-m, reports, plots and reuse of finished runs."""

from __future__ import annotations

import json

import pytest

from polytask.cli import main
from polytask.compare.report import delta_m, verdict
from polytask.compare.runner import mean_std, plan_variants, variant_config


def test_delta_m_is_sign_adjusted_relative_difference():
    # +10% on a higher-is-better task, -10% relative on a lower-is-better one (which is an improvement)
    assert delta_m({"a": 0.55, "b": 0.9}, {"a": 0.5, "b": 1.0}, {"a": True, "b": False}) == pytest.approx(10.0)
    assert delta_m({"a": 0.45}, {"a": 0.5}, {"a": True}) == pytest.approx(-10.0)


def test_verdict_respects_seed_spread():
    assert verdict([0.80, 0.82, 0.81], [0.70, 0.71, 0.72], True) == "helped"
    assert verdict([0.70, 0.71, 0.72], [0.80, 0.82, 0.81], True) == "hurt"
    assert verdict([0.80, 0.70, 0.90], [0.81, 0.71, 0.91], True) == "no clear difference"
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, 2 ** 0.5))


def test_variant_configs(toy_config, build_config, tmp_path):
    cfg = build_config(toy_config(("classification", "token"),
                                  train={"early_stopping": {"metric": "token.f1"}}))
    variants = plan_variants(cfg, [5, 6], tmp_path)
    assert [v.label for v in variants[:5]] == ["seed 5 probe/classification", "seed 5 probe/token",
                                               "seed 5 single/classification", "seed 5 single/token", "seed 5 multi"]
    probe = variant_config(cfg, "probe", "classification", 5, tmp_path / "p", probe_lr=0.01)
    assert list(probe.tasks) == ["classification"] and probe.model.freeze == "encoder"
    assert probe.train.head_lr == 0.01 and probe.train.seed == 5
    assert probe.train.early_stopping.metric == "mean"  # token.f1 names a task this run does not have
    single = variant_config(cfg, "single", "token", 6, tmp_path / "s")
    assert single.model.freeze == "none" and single.train.early_stopping.metric == "token.f1"
    multi = variant_config(cfg, "multi", None, 6, tmp_path / "m")
    assert list(multi.tasks) == ["classification", "token"] and multi.train.lr == cfg.train.lr


def test_compare_end_to_end(toy_config, tmp_path, capsys):
    import yaml

    data = toy_config(("classification", "token"), n_train=32, n_eval=12, train={"epochs": 2})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "cmp"
    args = ["compare", str(cfg_path), "--seeds", "2", "--output", str(out), "--inference-samples", "16"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "delta-m:" in printed and "classification (accuracy)" in printed
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["seeds"] == [42, 43]
    for task in ("classification", "token"):
        entry = summary["tasks"][task]
        for kind in ("probe", "single", "multi"):
            assert len(entry[kind]["values"]) == 2
            assert all(0.0 <= v <= 1.0 for v in entry[kind]["values"])
        assert entry["split"] == "test"
    # delta-m recomputed from the per-run values must match the report
    runs = summary["runs"]
    per_seed = []
    for seed in (42, 43):
        m = next(r for r in runs if r["kind"] == "multi" and r["seed"] == seed)["metrics"]
        s = {r["task"]: r["metrics"][r["task"]] for r in runs if r["kind"] == "single" and r["seed"] == seed}
        terms = [(m[t]["value"] - s[t]["value"]) / s[t]["value"] for t in s if s[t]["value"] != 0]
        per_seed.append(100 * sum(terms) / len(terms) if terms else float("nan"))
    assert summary["delta_m"]["per_seed"] == pytest.approx(per_seed, nan_ok=True)
    # the probe trains only its head; single and multi train everything
    probe = next(r for r in runs if r["kind"] == "probe")
    single = next(r for r in runs if r["kind"] == "single")
    assert probe["trainable_parameters"] < single["trainable_parameters"] // 10
    params = summary["parameters"]
    assert params["single"]["models"] == 2 and params["multi"]["models"] == 1
    assert params["multi"]["total"] < params["single"]["total"]
    inf = summary["inference"]
    assert inf["inputs"] == 16 and inf["tasks"] == 2 and inf["speedup"] > 0
    md = (out / "comparison.md").read_text()
    assert "Δm =" in md and "| classification | accuracy | test |" in md
    for png in ("comparison_bars.png", "comparison_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md
    # a second run reuses every finished run (nothing retrained) and reproduces the same numbers
    stamp = (out / "seed42" / "multi" / "metrics.jsonl").stat().st_mtime_ns
    assert main(args) == 0
    assert "(reused)" in capsys.readouterr().out
    assert (out / "seed42" / "multi" / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert json.loads((out / "comparison.json").read_text())["delta_m"] == summary["delta_m"]
    # a run saved before an option existed (here train.report_to / train.tracking) is the same run: reused
    result = out / "seed42" / "multi" / "result.json"
    old = json.loads(result.read_text())
    del old["config"]["train"]["report_to"], old["config"]["train"]["tracking"]
    result.write_text(json.dumps(old))
    assert main(args) == 0
    assert (out / "seed42" / "multi" / "metrics.jsonl").stat().st_mtime_ns == stamp
    # but a saved config that differs in what it trained with is not the same run
    from polytask.compare.runner import same_config
    from polytask.config import Config

    wanted = Config.from_dict(old["config"]).to_dict()
    assert same_config(old["config"], wanted)
    old["config"]["train"]["lr"] = 0.5
    assert not same_config(old["config"], wanted)


def test_compare_bad_input(toy_config, tmp_path, capsys):
    import yaml

    one = toy_config(("classification",))
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(one), encoding="utf-8")
    assert main(["compare", str(path), "--output", str(tmp_path / "c1")]) == 2
    assert "at least two tasks" in capsys.readouterr().err
    two = toy_config(("classification", "token"))
    path.write_text(yaml.safe_dump(two), encoding="utf-8")
    assert main(["compare", str(path), "--only", "single,magic", "--output", str(tmp_path / "c2")]) == 2
    assert "magic" in capsys.readouterr().err
    assert main(["compare", str(path), "--seeds", "0", "--output", str(tmp_path / "c3")]) == 2
    other = tmp_path / "not-a-comparison"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["compare", str(path), "--output", str(other)]) == 2
    assert "not a comparison folder" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"


def test_compare_refuses_several_processes(toy_config, tmp_path, capsys, monkeypatch):
    import yaml

    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(toy_config(("classification", "token"))), encoding="utf-8")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["compare", str(path), "--output", str(tmp_path / "c")]) == 2
    assert "one process" in capsys.readouterr().err


def test_overall_statement_respects_spread():
    from polytask.compare.report import overall

    assert "worse" in overall({"mean": -3.3, "std": 0.1, "per_seed": [-3.4, -3.2]})
    assert "better" in overall({"mean": 2.0, "std": 0.5, "per_seed": [1.5, 2.5]})
    assert "no clear difference" in overall({"mean": -0.04, "std": 0.5, "per_seed": [-0.6, 0.2, 0.3]})
    assert "worse" in overall({"mean": -0.04, "std": 0.0, "per_seed": [-0.04]})
