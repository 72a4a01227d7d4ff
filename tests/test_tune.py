"""polytask tune: the search space and its errors, a 3-trial study on the tiny encoder (one objective with
pruning; Pareto over the tasks), --resume after an interrupted trial, and the best config training again."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml

import polytask
from polytask.cli import main
from polytask.errors import NotSupportedError, UserError

optuna = pytest.importorskip("optuna")


def with_tune(data: dict, **tune) -> dict:
    return {**data, "tune": tune}


@pytest.mark.parametrize("space, message", [
    ({"train.lrr": {"uniform": [1e-4, 1e-3]}}, r"tune.space.train.lrr.*unknown config key 'train.lrr' \(did you mean "
                                               r"'lr'\?\)"),
    ({"train.lr": {"gaussian": [0, 1]}}, r"tune.space.train.lr' has bad value .*allowed: one of \{uniform: ...\}"),
    ({"train.lr": {"uniform": [1e-3, 1e-4]}}, r"tune.space.train.lr.uniform' .*low < high"),
    ({"train.lr": {"log_uniform": [0, 1e-3]}}, r"low > 0 on a log scale"),
    ({"train.batch_size": {"int": [8.5, 16]}}, r"tune.space.train.batch_size.int.*\(integers\)"),
    ({"train.lr": {"choice": []}}, r"tune.space.train.lr.choice' .*a non-empty list"),
    ({"train.weighting.method": {"choice": ["static", "uwx"]}},
     r"tune.space.train.weighting.method': the config with train.weighting.method='uwx' is not valid: .*unknown "
     r"weighting method 'uwx'; allowed: cagrad"),
    ({"train.lr": {"uniform": [-1.0, 1e-3]}}, r"train.lr=-1.0 is not valid: .*train.lr' has bad value -1.0"),
    ({"tasks.nope.weight": {"uniform": [0.5, 2]}}, r"tune.space.tasks.nope.weight': no task 'nope'; tasks: "
                                                   r"classification, token"),
    ({"train.seed": {"int": [1, 5]}}, r"tune.space.train.seed.*the config's seed"),
    ({}, r"tune.space' is empty"),
])
def test_bad_search_space_names_the_key(toy_config, build_config, space, message):
    data = with_tune(toy_config(), space=space) if space else with_tune(toy_config(), trials=3)
    with pytest.raises(UserError, match=message):
        build_config(data)


def test_bad_objectives_and_combinations(toy_config, build_config):
    space = {"train.lr": {"log_uniform": [1e-4, 1e-2]}}
    with pytest.raises(UserError, match=r"tune.objective' has bad value 'intent'; allowed: mean, loss, pareto, noisy, "
                                        r"robust, a task \(classification, token\)"):
        build_config(with_tune(toy_config(), space=space, objective="intent"))
    with pytest.raises(UserError, match=r"for a token_classification task: .*f1"):
        build_config(with_tune(toy_config(), space=space, objective="token.recall@5"))
    with pytest.raises(NotSupportedError, match=r"tune.pruner: median with tune.objective: pareto"):
        build_config(with_tune(toy_config(), space=space, objective="pareto", pruner="median"))
    with pytest.raises(NotSupportedError, match=r"tune.pruner: halving with tune.objective: robust"):
        build_config(with_tune(toy_config(), space=space, objective="robust", pruner="halving"))
    with pytest.raises(UserError, match=r"tune.robustness.noises' has unknown noise 'typo'; choose from typo_swap"):
        build_config(with_tune(toy_config(), space=space, objective="noisy", robustness={"noises": ["typo"]}))
    with pytest.raises(UserError, match=r"tune.robustness.rate' has bad value 0"):
        build_config(with_tune(toy_config(), space=space, objective="noisy", robustness={"rate": 0}))
    with pytest.raises(UserError, match=r"tune.robustness' is set but tune.objective is 'mean'"):
        build_config(with_tune(toy_config(), space=space, robustness={"rate": 0.2}))
    with pytest.raises(UserError, match=r"unknown config key 'tune.spaces'"):
        build_config(with_tune(toy_config(), spaces=space))
    cfg = build_config(with_tune(toy_config(), space=space, objective="token"))
    assert cfg.tune.enabled and "tune" not in cfg.to_dict()  # runs and checkpoints are saved without it
    # --set tune.space.train.head_lr=... nests the key; it reads as the dotted one
    cfg = build_config(with_tune(toy_config(), space=space), ["tune.space.train.head_lr={uniform: [1.0e-4, 1.0e-3]}"])
    from polytask.tune import parse_space

    assert [p.key for p in parse_space(cfg.tune.space)] == ["train.lr", "train.head_lr"]
    with pytest.raises(UserError, match=r"tune.space.train.lrr.*unknown config key 'train.lrr'"):
        build_config(with_tune(toy_config(), space=space), ["tune.space.train.lrr={uniform: [1.0e-4, 1.0e-3]}"])
    # the CLI: exit 2 with one message, nothing written
    assert main(["tune", "/nonexistent.yaml"]) == 2


def toy_tune_yaml(tmp_path, toy_config, **tune) -> tuple[str, dict]:
    data = toy_config(["classification", "token"], n_train=24, n_eval=8, train={"epochs": 3, "batch_size": 8})
    data["tune"] = tune
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path), data


def test_single_objective_with_pruning_and_the_best_config_trains(tmp_path, toy_config, capsys):
    # a learning rate that learns and one that cannot: with the median pruner (1 startup trial) the hopeless
    # trials are stopped at their first validation, whose loss is above the finished trial's
    path, _ = toy_tune_yaml(tmp_path, toy_config, objective="loss", sampler="random", pruner="median",
                            startup_trials=1, space={"train.lr": {"choice": [3e-3, 1e-12]},
                                                     "tasks.token.weight": {"uniform": [0.5, 2.0]}})
    study_dir = tmp_path / "study"
    assert main(["tune", path, "--trials", "4", "--study-dir", str(study_dir)]) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="polytask", storage=f"sqlite:///{study_dir / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 4 and "COMPLETE" in states and "PRUNED" in states, states
    for t in study.trials:  # each trial an ordinary run in its own folder, with the sampled values in its config
        cfg = json.loads((study_dir / f"trial-{t.number:03d}" / "config.json").read_text())
        assert cfg["train"]["lr"] == t.params["train.lr"] and cfg["tasks"]["token"]["weight"] == \
            pytest.approx(t.params["tasks.token.weight"])
        assert "tune" not in cfg
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    hopeless = [t for t in study.trials if t.params["train.lr"] == 1e-12]
    assert hopeless and all(t.state.name == "PRUNED" and len(t.intermediate_values) == 1 for t in hopeless)
    for t in pruned:  # stopped at a validation before the last: fewer validations than a finished trial
        log = study_dir / f"trial-{t.number:03d}" / "metrics.jsonl"
        logged = [json.loads(x) for x in log.read_text().splitlines()]
        assert len([r for r in logged if r["type"] == "eval"]) == len(t.intermediate_values) < 3
    best = study.best_trial
    assert best.params["train.lr"] == 3e-3
    report = (study_dir / "tune.md").read_text()
    assert f"## Best trial: {best.number}" in report and "pruned" in report and "![history](history.png)" in report
    assert (study_dir / "history.png").stat().st_size > 1000 and (study_dir / "importances.png").is_file()
    assert f"best trial {best.number}: validation loss=" in out and "its test split:" in out
    # best.yaml: the user's config with the best values, no tune section, trains as it is
    best_yaml = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert "tune" not in best_yaml and best_yaml["train"]["lr"] == 3e-3
    assert best_yaml["tasks"]["token"]["weight"] == pytest.approx(best.params["tasks.token.weight"])
    assert best_yaml["train"]["early_stopping"]["metric"] == "loss"  # as every trial kept its best/ by the objective
    rerun = tmp_path / "rerun"
    assert main(["train", str(study_dir / "best.yaml"), "--set", f"train.output_dir={rerun}"]) == 0
    state = json.loads((rerun / "last" / "training_state" / "trainer_state.json").read_text())
    again = [json.loads(x) for x in (rerun / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    at_best = [r for r in again if r["step"] == state["early_stopping"]["best_step"]]
    assert at_best[0]["loss"] == pytest.approx(best.value, rel=1e-4)  # the same run, reproduced
    # an existing study is not overwritten by accident
    assert main(["tune", path, "--trials", "4", "--study-dir", str(study_dir)]) == 2


def test_pareto_study_over_the_tasks(tmp_path, toy_config):
    path, _ = toy_tune_yaml(tmp_path, toy_config, objective="pareto",
                            space={"train.lr": {"log_uniform": [1e-4, 1e-2]},
                                   "tasks.token.weight": {"uniform": [0.5, 3]}})
    study_dir = tmp_path / "pareto-study"
    result = polytask.tune(polytask.load_config(path), trials=3, study_dir=study_dir, progress=False)
    study = result.study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    assert all(t.state.name == "COMPLETE" and len(t.values) == 2 for t in study.trials) and len(study.trials) == 3
    front = study.best_trials
    summary = json.loads((study_dir / "tune_result.json").read_text())
    assert {p["trial"] for p in summary["pareto"]} == {t.number for t in front}
    assert summary["best_trial"] in {t.number for t in front}
    report = (study_dir / "tune.md").read_text()
    assert "## Pareto front" in report and "![pareto](pareto.png)" in report
    assert (study_dir / "pareto.png").is_file() and (study_dir / "best.yaml").is_file()
    assert len(result.best_configs) == len(front)


def test_resume_after_an_interrupted_trial(tmp_path, toy_config, monkeypatch):
    path, _ = toy_tune_yaml(tmp_path, toy_config, objective="mean", pruner="none",
                            space={"train.lr": {"log_uniform": [1e-4, 1e-2]}})
    study_dir = tmp_path / "resumed"
    loop = importlib.import_module("polytask.train.loop")
    real_step, calls = loop.train_step, []

    def interrupted(accelerator, model, run, window, step, epoch=0):
        calls.append(step)
        if len(calls) == 18 + 5:  # in the second trial (3 epochs x 6 steps each), at its sixth step
            raise KeyboardInterrupt
        return real_step(accelerator, model, run, window, step, epoch)

    monkeypatch.setattr(loop, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        polytask.tune(polytask.load_config(path), trials=3, study_dir=study_dir, progress=False)
    monkeypatch.setattr(loop, "train_step", real_step)
    study = optuna.load_study(study_name="polytask", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    cut = study.trials[1]
    with pytest.raises(UserError, match="already holds a study; add --resume"):
        polytask.tune(polytask.load_config(path), trials=3, study_dir=study_dir, progress=False)
    result = polytask.tune(polytask.load_config(path), trials=3, study_dir=study_dir, resume=True, progress=False)
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == cut.params and trials[2].user_attrs["retry_of"] == cut.number
    assert trials[3].params != cut.params
    # resuming a finished study runs nothing more
    again = polytask.tune(polytask.load_config(path), trials=3, study_dir=study_dir, resume=True, progress=False)
    assert len(again.study.trials) == 4
    # a study is continued as it was started: another space is refused, naming the key
    with pytest.raises(UserError, match=r"tune.space' differs from the study"):
        polytask.tune(polytask.load_config(path, ["tune.space.train.head_lr={uniform: [1.0e-4, 1.0e-3]}"]),
                      trials=4, study_dir=study_dir, resume=True, progress=False)


def test_an_objective_needs_validation_data(tmp_path, toy_config):
    path, data = toy_tune_yaml(tmp_path, toy_config, objective="token",
                               space={"train.lr": {"log_uniform": [1e-4, 1e-2]}})
    cfg = polytask.load_config(path, ["tasks.token.validation=null"])
    with pytest.raises(UserError, match=r"tasks.token.validation' is missing: tune.objective reads task 'token'"):
        polytask.tune(cfg, trials=1, study_dir=tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def noisy_mean(checkpoint, noises, rate, seed) -> tuple[float, float]:
    """The clean and noisy validation means of a checkpoint, computed here from polytask robustness itself."""
    from polytask.robustness.runner import robustness

    tasks = robustness(polytask.load(checkpoint), split="validation", noises=noises, rate=rate, seed=seed,
                       progress=False)["tasks"].values()
    return (sum(e["clean"] for e in tasks) / len(tasks), sum(e["noisy"] for e in tasks) / len(tasks))


def test_noisy_objective_scores_each_trials_best_checkpoint_under_noise(tmp_path, toy_config):
    noise = {"noises": ["typo_swap", "casing"], "rate": 0.3, "seed": 3}
    path, _ = toy_tune_yaml(tmp_path, toy_config, objective="noisy", pruner="none", sampler="random",
                            robustness=noise, space={"train.lr": {"choice": [3e-3, 1e-4]}})
    study_dir = tmp_path / "noisy-study"
    result = polytask.tune(polytask.load_config(path), trials=2, study_dir=study_dir, progress=False)
    study = result.study
    assert [d.name for d in study.directions] == ["MAXIMIZE"]
    for t in study.trials:
        assert t.state.name == "COMPLETE"
        folder = study_dir / f"trial-{t.number:03d}"
        assert (folder / "best").is_dir() and not (folder / "last").exists()  # a finished trial keeps best/ only
        clean, noisy = noisy_mean(folder / "best", noise["noises"], noise["rate"], noise["seed"])
        assert t.value == pytest.approx(noisy, abs=1e-9)
        assert t.user_attrs["robustness"] == pytest.approx({"clean": clean, "noisy": noisy, "drop": clean - noisy})
        # the best checkpoint was kept by the clean validation mean, as early stopping does by default
        assert t.user_attrs["validation"]["mean"] == pytest.approx(clean, abs=1e-6)
    # another noise seed draws other typos: the objective depends on tune.robustness, not only on the model
    folder = study_dir / f"trial-{study.best_trial.number:03d}" / "best"
    assert {noisy_mean(folder, noise["noises"], 0.3, s)[1] for s in (3, 4, 5)} != {study.best_value}
    report = (study_dir / "tune.md").read_text()
    assert "| trial | state | noisy | clean | drop |" in report


def test_robust_objective_is_a_pareto_front_of_clean_and_noisy(tmp_path, toy_config):
    path, _ = toy_tune_yaml(tmp_path, toy_config, objective="robust", robustness={"noises": ["typo_drop"]},
                            space={"train.lr": {"log_uniform": [1e-4, 1e-2]}})
    study = polytask.tune(polytask.load_config(path), trials=2, study_dir=tmp_path / "robust-study",
                          progress=False).study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    for t in study.trials:
        noisy = t.user_attrs["robustness"]
        assert t.values == pytest.approx([noisy["clean"], noisy["noisy"]])
    report = (tmp_path / "robust-study" / "tune.md").read_text()
    assert "| trial | state | clean | noisy | drop |" in report


def test_robustness_settings_are_checked_before_training_and_on_resume(tmp_path, toy_config, build_config):
    space = {"train.lr": {"choice": [3e-3]}}
    # Chinese noises on English text: refused before the first trial, nothing trained
    path, _ = toy_tune_yaml(tmp_path, toy_config, objective="noisy", robustness={"noises": ["char_swap"]}, space=space)
    with pytest.raises(UserError, match=r"tune.robustness.noises': none of char_swap applies"):
        polytask.tune(polytask.load_config(path), trials=1, study_dir=tmp_path / "none-applies", progress=False)
    assert not list((tmp_path / "none-applies").glob("trial-*"))
    # a study scored under one noise is not continued under another
    path, data = toy_tune_yaml(tmp_path, toy_config, objective="noisy", robustness={"noises": ["typo_drop"]},
                               space=space)
    polytask.tune(polytask.load_config(path), trials=1, study_dir=tmp_path / "s", progress=False)
    data["tune"]["robustness"]["rate"] = 0.3
    with pytest.raises(UserError, match=r"tune.robustness' differs from the study"):
        polytask.tune(build_config(data), trials=2, study_dir=tmp_path / "s", resume=True, progress=False)
    # objective names are not task names
    with pytest.raises(UserError, match=r"config key 'tasks.noisy' has bad value 'noisy'; allowed: a task name other "
                                        r"than mean, loss, pareto, noisy, robust"):
        build_config({**data, "tasks": {"noisy": data["tasks"]["classification"]}})
