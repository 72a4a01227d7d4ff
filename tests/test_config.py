"""Config loading: overrides, types, Python-built configs, and every shipped example validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytask.config import Config, ModelConfig, TaskConfig, TrainConfig, load_config
from polytask.errors import UserError

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml")) + sorted(
    (Path(__file__).parent.parent / "examples" / "tune").glob("*.yaml"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(path):
    cfg = load_config(path)
    assert cfg.tasks
    for name, t in cfg.tasks.items():
        assert t.dataset or Path(t.train).exists(), name


def test_overrides_are_parsed_as_yaml(tmp_path):
    cfg = load_config(EXAMPLES[0], ["train.epochs=7", "train.lr=1e-4", "train.max_steps=null",
                                    "tasks.intent.weight=2", "train.early_stopping.patience=null"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 1e-4 and cfg.train.max_steps is None
    assert cfg.tasks["intent"].weight == 2.0 and isinstance(cfg.tasks["intent"].weight, float)
    assert cfg.train.early_stopping.patience is None


@pytest.mark.parametrize("override, needle", [
    ("train.epochs=0", "train.epochs"),
    ("train.sampling=random", "proportional"),
    ("model.freeze=top:2", "bottom:N"),
    ("train.precision=fp16", "bf16"),
    ("train.early_stopping.metric=nosuch.f1", "train.early_stopping.metric"),
    ("train.early_stopping.metric=slots.accuracyy", "slots.accuracyy"),
    ("train.weighting.method=famous", "static"),
    ("train.weighting.alpha=1.5", "train.weighting.alpha"),
    ("tasks.intent.threshold=1.5", "tasks.intent.threshold"),
    ("tasks.intent.train=x.jsonl", "exclusive"),
    ("tasks.intent.dataset=nosuch", "atis"),
    ("epochs", "key.path=value"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(UserError) as e:
        load_config(EXAMPLES[0], [override])
    assert needle in str(e.value)


def test_config_built_in_python(tmp_path):
    cfg = Config(model=ModelConfig(encoder="minilm"),
                 tasks={"intent": TaskConfig(type="multilabel_classification", dataset="atis", label="intents")},
                 train=TrainConfig(output_dir=str(tmp_path))).validate()
    again = Config.from_dict(cfg.to_dict()).validate()
    assert again == cfg


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    (tmp_path / "cfgdir").mkdir()
    (tmp_path / "cfgdir" / "train.jsonl").write_text('{"text": "a", "label": "x"}\n')
    (tmp_path / "cfgdir" / "c.yaml").write_text(
        "tasks:\n  t:\n    type: classification\n    train: train.jsonl\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(tmp_path / "cfgdir" / "c.yaml")
    assert Path(cfg.tasks["t"].train) == tmp_path / "cfgdir" / "train.jsonl"
