"""Parameter-efficient fine-tuning (model.peft): every method x sharing mode x task type through train -> save ->
load -> predict identically; only adapters and heads train and are saved; the PEFT head trap is caught; merged
export; resume; DDP; bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import polytask
from polytask.cli import main
from polytask.data.features import prepare_task_data
from polytask.errors import UserError
from polytask.model.encoder import load_encoder
from tests.test_resume_ddp import final_eval, interrupt_and_resume, train_two_processes, write_config
from tests.test_train_cycle import logits_of

KINDS = ("classification", "multilabel", "token", "regression")
METHODS = {"lora": {"method": "lora", "r": 4}, "ia3": {"method": "ia3"}, "prefix": {"method": "prefix",
                                                                                   "num_virtual_tokens": 4}}
TEXT = [{"text": "show me flights from boston to denver good", "text2": "boston",
         "words": ["show", "me", "flights", "boston", "good"]}]


def peft_data(toy_config, method: str, sharing: str = "shared", kinds=KINDS, **train) -> dict:
    d = toy_config(list(kinds), n_train=16, n_eval=8, train={"epochs": 1, **train})
    d["model"]["peft"] = {**METHODS[method], "sharing": sharing}
    return d


def validation_logits(model, loaded, cfg):
    data = prepare_task_data(loaded.tasks, loaded.tokenizer, cfg.model.max_length, splits=("validation",),
                             fit_labels=False)
    return logits_of(model, loaded.tasks, loaded.tokenizer, {n: d.features["validation"] for n, d in data.items()})


@pytest.mark.parametrize("sharing", ["shared", "per_task"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_and_task_type_trains_saves_loads_and_predicts_identically(method, sharing, toy_config,
                                                                               build_config, tiny_encoder):
    cfg = build_config(peft_data(toy_config, method, sharing))
    result = polytask.train(cfg)
    loaded = polytask.load(result.output_dir / "last")
    before, after = validation_logits(result.model, loaded, cfg), validation_logits(loaded.model, loaded, cfg)
    assert set(before) == set(KINDS)
    for name in before:
        assert torch.equal(before[name], after[name]), name  # bit-identical, like plain checkpoints
    from polytask.predict import Predictor

    trained = Predictor.from_loaded(result.output_dir / "last", loaded.config, loaded.tasks, loaded.tokenizer,
                                    result.model)
    assert loaded.predict(TEXT) == trained.predict(TEXT)  # the trained model itself answers the same

    # only the adapter(s) and the heads trained: the encoder's own weights are the pretrained ones
    pretrained = dict(load_encoder(tiny_encoder).named_parameters())
    base = loaded.model.encoder.get_base_model()
    for name, p in base.named_parameters():
        if not p.requires_grad:
            key = name.replace(".base_layer", "")
            assert torch.equal(p, pretrained[key]), name
    # and the checkpoint holds exactly those: every head, the adapter(s), no frozen weight
    saved = load_file(str(result.output_dir / "last" / "model.safetensors"))
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert set(saved) == trainable
    assert {k.split(".")[1] for k in saved if k.startswith("heads.")} == set(KINDS)
    adapters = {"shared"} if sharing == "shared" else set(KINDS)
    assert set(loaded.model.encoder.peft_config) == adapters
    encoder_saved = [k for k in saved if k.startswith("encoder.")]
    assert encoder_saved and all(any(f".{a}." in k or k.endswith(f".{a}") for a in adapters) for k in encoder_saved)


def test_per_task_adapters_each_serve_their_own_task(toy_config, build_config):
    cfg = build_config(peft_data(toy_config, "lora", "per_task", kinds=("classification", "regression")))
    model = polytask.train(cfg).model
    enc = model.encoder
    ids = torch.tensor([[101, 2265, 2033, 102]])
    mask = torch.ones_like(ids)
    model.eval()
    # a task's loss reaches its own adapter and no other one
    model.zero_grad()
    model(ids, mask, tasks=["classification"])["classification"].sum().backward()
    grads = {n: p.grad for n, p in enc.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".classification." in n)
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if ".regression." in n)
    # asking for both runs one pass per adapter, each as asked for alone
    both = model(ids, mask)
    for t in ("classification", "regression"):
        assert torch.equal(both[t], model(ids, mask, tasks=[t])[t])
    # and the adapters differ: the same input through the other adapter gives other hidden states
    from polytask.model.adapters import activate

    with torch.no_grad():
        activate(enc, "classification")
        a = enc(input_ids=ids, attention_mask=mask).last_hidden_state
        activate(enc, "regression")
        b = enc(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.allclose(a, b)
    assert all(p.requires_grad for n, p in enc.named_parameters() if "lora_" in n)  # switching froze nothing


def test_training_prints_trainable_parameters_and_checkpoint_size(toy_config, build_config, capsys):
    polytask.train(build_config(peft_data(toy_config, "lora", kinds=("classification",))))
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "trainable parameters" in x)
    assert "peft lora (shared)" in line and "% of its" in line and "checkpoint holds" in line
    full = toy_config(["classification"], n_train=16, n_eval=8, train={"epochs": 1})
    full["train"]["output_dir"] += "-full"
    polytask.train(build_config(full))
    assert "trainable parameters" in capsys.readouterr().err  # plain fine-tuning reports it too


def test_a_checkpoint_missing_a_head_is_refused_not_loaded_half_random(toy_config, build_config, capsys):
    """The PEFT trap: a head not saved with the adapter would come back randomly initialised after a reload."""
    cfg = build_config(peft_data(toy_config, "lora", kinds=("classification", "token")))
    out = polytask.train(cfg).output_dir
    weights = out / "best" / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if not k.startswith("heads.token.")}, str(weights))
    with pytest.raises(UserError, match="head.*token"):
        polytask.load(out / "best")
    assert main(["evaluate", str(out), "--split", "test"]) == 2
    assert "lacks the head(s) of token" in capsys.readouterr().err
    # and none is written: heads and adapters are saved whether or not they train (frozen here, as under
    # continual.method: freeze), so a head can never be left out
    from polytask.model.io import save_checkpoint

    loaded = polytask.load(out / "last")
    loaded.model.requires_grad_(False)
    save_checkpoint(out / "frozen", loaded.model, loaded.tokenizer, loaded.config, loaded.tasks)
    again = polytask.load(out / "frozen")
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in loaded.model.state_dict().items())


def test_adapters_refuse_another_base_encoder(toy_config, build_config, tiny_encoder, tmp_path):
    import shutil

    other = tmp_path / "other-encoder"
    shutil.copytree(tiny_encoder, other)
    d = peft_data(toy_config, "ia3", kinds=("classification",))
    d["model"]["encoder"] = str(other)
    out = polytask.train(build_config(d)).output_dir
    encoder = load_encoder(other)
    with torch.no_grad():
        encoder.embeddings.word_embeddings.weight[5] += 1.0
    encoder.save_pretrained(str(other))
    with pytest.raises(UserError, match="another copy of the encoder"):
        polytask.load(out / "best")


def test_merged_export_is_a_plain_checkpoint_with_the_same_outputs(toy_config, build_config, tmp_path, capsys):
    cfg = build_config(peft_data(toy_config, "lora", kinds=KINDS))
    out = polytask.train(cfg).output_dir
    assert main(["export", str(out), "--merge", "--output", str(tmp_path / "merged")]) == 0
    meta = json.loads((tmp_path / "merged" / "polytask.json").read_text())
    assert "peft" not in meta["config"]["model"] and "peft" not in meta
    adapted, merged = polytask.load(out / "best"), polytask.load(tmp_path / "merged")
    assert not hasattr(merged.model.encoder, "peft_config")
    a, b = validation_logits(adapted.model, adapted, cfg), validation_logits(merged.model, merged, cfg)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    # a merged checkpoint stores the whole encoder; the adapter checkpoint only what trained
    size = lambda p: (p / "model.safetensors").stat().st_size  # noqa: E731
    assert size(out / "best") * 20 < size(tmp_path / "merged")
    capsys.readouterr()
    assert main(["export", str(out), "--merge", "--output", str(out / "best")]) == 2  # never over its source
    # reports say how each was fine-tuned and what its checkpoint weighs
    for run, says in ((out, "peft lora (shared): encoder"), (tmp_path / "merged", "full fine-tuning: encoder")):
        assert main(["evaluate", str(run), "--split", "test"]) == 0
        assert says in capsys.readouterr().out
        report = json.loads((run / "report.json").read_text())["model"]
        assert report["checkpoint_bytes"] == size(run / "best" if run == out else run)
    assert "Model: peft lora (shared)" in (out / "report.md").read_text()


@pytest.mark.parametrize("method,sharing", [("prefix", "shared"), ("lora", "per_task")])
def test_export_refuses_adapters_that_cannot_merge(method, sharing, toy_config, build_config, tmp_path, capsys):
    out = polytask.train(build_config(peft_data(toy_config, method, sharing, kinds=("classification",)))).output_dir
    assert main(["export", str(out), "--merge", "--output", str(tmp_path / "m")]) == 2
    assert "cannot be merged" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_resume_of_a_lora_run_matches_the_uninterrupted_run(toy_config, build_config, monkeypatch, tmp_path):
    d = peft_data(toy_config, "lora", "per_task", kinds=("classification", "token"), epochs=2)
    straight = polytask.train(build_config(d))
    d2 = json.loads(json.dumps(d))
    d2["train"]["output_dir"] = str(tmp_path / "resumed")
    resumed = interrupt_and_resume(build_config(d2), stop_at=5, monkeypatch=monkeypatch)
    assert final_eval(straight.output_dir) == final_eval(resumed.output_dir)
    a, b = (load_file(str(r.output_dir / "last" / "model.safetensors")) for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_under_two_processes(toy_config, tmp_path):
    d = peft_data(toy_config, "lora", kinds=("classification", "token"), epochs=2)
    r = train_two_processes(write_config(tmp_path, d, "ddp-lora"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = Path(d["train"]["output_dir"])
    state = json.loads((out / "last" / "training_state" / "trainer_state.json").read_text())
    assert state["finished"] and state["global_step"] == 4  # 2 tasks x 16 rows / (2 x 8) per step, 2 epochs
    loaded = polytask.load(out / "best")
    assert set(loaded.model.encoder.peft_config) == {"shared"} and loaded.predict(TEXT)


@pytest.mark.parametrize("peft,message", [
    ({"method": "prefix", "r": 8}, "'model.peft.r' is not an option of prefix"),
    ({"method": "lora", "num_virtual_tokens": 4}, "'model.peft.num_virtual_tokens' is not an option of lora"),
    ({"method": "lorra"}, "'model.peft.method' has bad value 'lorra'"),
    ({"r": 8}, "'model.peft.r' needs a PEFT method"),
    ({"method": "lora", "r": 0}, "'model.peft.r' has bad value 0"),
    ({"method": "lora", "target_modules": "query"}, "'model.peft.target_modules' has bad value"),
    ({"method": "lora", "target_modules": ["no_such_layer"]}, "config key 'model.peft'"),
    ({"method": "ia3", "target_modules": ["key"], "feedforward_modules": ["value"]}, "a subset of"),
    ({"method": "lora", "sharing": "per_tsk"}, "'model.peft.sharing' has bad value"),
])
def test_bad_peft_options_name_the_key(peft, message, toy_config, tmp_path, capsys):
    d = toy_config(["classification"], n_train=16, n_eval=8, train={"epochs": 1})
    d["model"]["peft"] = peft
    path = write_config(tmp_path, d, "bad")
    assert main(["train", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not Path(d["train"]["output_dir"]).exists()


def test_peft_with_a_frozen_encoder_or_mutual_learning_is_refused(toy_config, tmp_path, capsys):
    for extra, message in (({"model": {"freeze": "embeddings"}}, "set model.freeze: none"),
                           ({"train": {"mutual": {"peers": 2}}}, "model.peft with train.mutual is not supported")):
        d = peft_data(toy_config, "lora", kinds=("classification",))
        for section, values in extra.items():
            d[section].update(values)
        assert main(["train", str(write_config(tmp_path, d, "bad"))]) == 2
        assert message in capsys.readouterr().err


def test_a_plain_config_keeps_its_old_shape(toy_config, build_config):
    cfg = build_config(toy_config(["classification"]))
    assert "peft" not in cfg.to_dict()["model"]
    d = peft_data(toy_config, "lora", kinds=("classification",))
    saved = build_config(d).to_dict()["model"]["peft"]
    assert saved == {"method": "lora", "sharing": "shared", "r": 4, "alpha": 16.0, "dropout": 0.1,
                     "target_modules": None}
    assert yaml.safe_dump(saved) and build_config({**d, "model": {**d["model"], "peft": saved}}).model.peft.r == 4


def test_peft_runs_with_adversarial_training_and_bf16(toy_config, build_config):
    d = peft_data(toy_config, "prefix", kinds=("classification", "token"), adversarial={"method": "fgm"})
    assert polytask.train(build_config(d)).global_step > 0
    d = peft_data(toy_config, "lora", "per_task", kinds=("classification", "token"), precision="bf16")
    d["train"]["output_dir"] += "-bf16"
    result = polytask.train(build_config(d))
    # (the trained model's forward still runs under the run's bf16 autocast, so compare weights, not logits)
    loaded = dict(polytask.load(result.output_dir / "last").model.named_parameters())
    trained = {n: p for n, p in result.model.named_parameters() if p.requires_grad}
    assert trained and all(torch.equal(p, loaded[n]) for n, p in trained.items())


def test_a_lora_teacher_distils_into_a_plain_student(toy_config, build_config, tmp_path):
    from polytask.distill.runner import distill

    teacher = polytask.train(build_config(peft_data(toy_config, "lora", kinds=("classification", "token")))).output_dir
    d = toy_config(["classification", "token"], n_train=16, n_eval=8, train={"epochs": 1})
    d["train"]["output_dir"] = str(tmp_path / "student")
    d["train"]["distill"] = {"teacher": str(teacher), "student": {"layers": 1}}
    summary = distill(build_config(d), baseline=False, inference_samples=8).summary
    assert set(summary["tasks"]) == {"classification", "token"}
    student = polytask.load(tmp_path / "student" / "best")
    assert not hasattr(student.model.encoder, "peft_config")  # the adapter was folded in, then layers dropped
    assert student.model.encoder.config.num_hidden_layers == 1


def test_an_encoder_folder_without_pooler_weights_reloads(toy_config, build_config, tiny_encoder, tmp_path):
    """transformers draws a missing pooler at random on every load; the fingerprint leaves it out."""
    import shutil

    from transformers import BertModel

    folder = tmp_path / "no-pooler"
    shutil.copytree(tiny_encoder, folder)
    BertModel.from_pretrained(str(tiny_encoder), add_pooling_layer=False).save_pretrained(str(folder))
    d = peft_data(toy_config, "lora", kinds=("classification",))
    d["model"]["encoder"] = str(folder)
    out = polytask.train(build_config(d)).output_dir
    torch.manual_seed(123)  # another random pooler than at training time
    loaded = polytask.load(out / "best")
    assert loaded.predict(TEXT[:1])


def test_prefix_tokens_that_overflow_the_positions_are_refused(toy_config, tmp_path, capsys):
    d = toy_config(["classification"], n_train=16, n_eval=8, train={"epochs": 1})
    d["model"].update(max_length=120, peft={"method": "prefix", "num_virtual_tokens": 20})  # 128 positions
    assert main(["train", str(write_config(tmp_path, d, "long"))]) == 2
    assert "exceed the encoder's 128 positions" in capsys.readouterr().err
