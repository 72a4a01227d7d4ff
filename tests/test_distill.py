"""Knowledge distillation: soft losses per head type, students, teacher outputs, the loop, resume, DDP, errors."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import polytask
from polytask.cli import main
from polytask.config import load_config
from polytask.distill.student import layer_choice
from polytask.tasks import TASK_TYPES, build_task
from tests.conftest import TASK_SPECS, toy_rows, write_jsonl
from tests.test_resume_ddp import final_eval, interrupt_and_resume, train_two_processes, write_config
from tests.test_train_cycle import logits_of

KINDS = ("classification", "multilabel", "token", "regression")
DISTILLABLE = [t for t in TASK_TYPES.names() if t != "retrieval"]  # retrieval: not supported (test_retrieval.py)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_encoder):
    """A 2-layer multi-task teacher trained on all four toy task types, and the config dict it came from."""
    root = tmp_path_factory.mktemp("distill")
    tasks = {}
    for kind in KINDS:
        files = {split: str(write_jsonl(root / "data" / f"{kind}-{split}.jsonl", toy_rows(kind, n, seed)))
                 for split, n, seed in (("train", 32, 0), ("validation", 8, 1), ("test", 8, 2))}
        tasks[kind] = {**TASK_SPECS[kind], **files}
    data = {"model": {"encoder": str(tiny_encoder), "max_length": 32}, "tasks": tasks,
            "train": {"output_dir": str(root / "teacher"), "epochs": 2, "batch_size": 8, "lr": 1e-3,
                      "tensorboard": False, "progress": False, "precision": "fp32"}}
    polytask.train(load_config(data=data))
    second = copy.deepcopy(data)  # another teacher: another seed, for ensembles
    second["train"].update(output_dir=str(root / "teacher2"), seed=7)
    polytask.train(load_config(data=second))
    return root, data


def student_config(trained, out: str, kinds=KINDS, **distill) -> dict:
    root, data = trained
    d = copy.deepcopy(data)
    d["tasks"] = {k: d["tasks"][k] for k in kinds}
    d["train"]["output_dir"] = str(root / out)
    d["train"]["distill"] = {"teacher": str(root / "teacher"), "student": {"layers": 1}, "alpha": 0.5,
                             "temperature": 2.0, **distill}
    return d


# -- soft losses ------------------------------------------------------------------------------------------
def task_of(type_name: str, labels: list[str]):
    spec = {"classification": ("text", "label"), "multilabel_classification": ("text", "labels"),
            "token_classification": ("words", "tags"), "regression": ("text", "score")}[type_name]
    cfg = load_config(data={"tasks": {"t": {"type": type_name, "train": "x.jsonl", "text": spec[0],
                                            "label": spec[1]}}}).tasks["t"]
    task = build_task("t", cfg)
    task.set_labels(labels)
    return task


def logits_and_labels(type_name: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    if type_name == "token_classification":
        labels = torch.tensor([[-100, 0, 1, -100, 2], [-100, 2, -100, -100, -100]])
        return torch.randn(2, 5, 3, generator=g), labels
    if type_name == "regression":
        return torch.randn(4, 1, generator=g), torch.zeros(4)
    return torch.randn(4, 3, generator=g), torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize("type_name", DISTILLABLE)
def test_soft_loss_is_zero_at_the_teacher_and_positive_elsewhere(type_name):
    task = task_of(type_name, ["a", "b", "c"])
    teacher, labels = logits_and_labels(type_name, 0)
    student, _ = logits_and_labels(type_name, 1)
    targets = task.soft_targets([teacher], 2.0)
    assert task.soft_loss(teacher, targets, labels, 2.0).abs() < 1e-5
    far = task.soft_loss(student, targets, labels, 2.0)
    assert far > 1e-3
    # gradient descent on the soft loss moves the student towards the teacher
    s = student.clone().requires_grad_(True)
    task.soft_loss(s, targets, labels, 2.0).backward()
    assert task.soft_loss((s - 0.1 * s.grad).detach(), targets, labels, 2.0) < far


def test_classification_soft_loss_is_hintons_kl_times_t_squared():
    task = task_of("classification", ["a", "b", "c"])
    teacher, labels = logits_and_labels("classification", 0)
    student, _ = logits_and_labels("classification", 1)
    t = 3.0
    p, q = (teacher / t).softmax(-1), (student / t).softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).mean() * t * t
    got = task.soft_loss(student, task.soft_targets([teacher], t), labels, t)
    assert torch.allclose(got, expected, atol=1e-6)


def test_token_soft_loss_reads_labelled_tokens_only():
    task = task_of("token_classification", ["O", "B-x", "I-x"])
    teacher, labels = logits_and_labels("token_classification", 0)
    student, _ = logits_and_labels("token_classification", 1)
    other = student.clone()
    other[labels == -100] += 5.0  # positions the loss must not read
    targets = task.soft_targets([teacher], 2.0)
    assert torch.allclose(task.soft_loss(student, targets, labels, 2.0), task.soft_loss(other, targets, labels, 2.0))


@pytest.mark.parametrize("type_name", DISTILLABLE)
def test_an_ensemble_teaches_its_averaged_output(type_name):
    task = task_of(type_name, ["a", "b", "c"])
    a, _ = logits_and_labels(type_name, 0)
    b, _ = logits_and_labels(type_name, 1)
    avg = task.soft_targets([a, b], 1.0)
    assert torch.allclose(avg, (task.soft_targets([a], 1.0) + task.soft_targets([b], 1.0)) / 2, atol=1e-6)
    # the ensemble's logits decode to its averaged output
    assert torch.allclose(task.soft_targets([task.ensemble_logits([a, b])], 1.0), avg, atol=1e-5)


def test_layer_choice_keeps_evenly_spaced_layers_from_the_first():
    assert layer_choice(3, 6) == [0, 2, 4]
    assert layer_choice(4, 12) == [0, 3, 6, 9]
    assert layer_choice(6, 6) == list(range(6))
    assert layer_choice([1, 5], 6) == [1, 5]


# -- training ---------------------------------------------------------------------------------------------
def test_every_head_type_distils_saves_loads_and_predicts_identically(teacher):
    cfg = load_config(data=student_config(teacher, "student"))
    result = polytask.train(cfg)
    loaded = polytask.load(result.output_dir / "last")
    assert loaded.model.encoder.config.num_hidden_layers == 1  # 1 of the teacher's 2 layers
    assert len(loaded.model.encoder.encoder.layer) == 1
    from polytask.data.features import prepare_task_data

    data = prepare_task_data(loaded.tasks, loaded.tokenizer, 32, splits=("validation",), fit_labels=False)
    feats = {n: d.features["validation"] for n, d in data.items()}
    before = logits_of(result.model, loaded.tasks, loaded.tokenizer, feats)
    after = logits_of(loaded.model, loaded.tasks, loaded.tokenizer, feats)
    assert set(before) == set(KINDS)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    # the student starts from the teacher's (fine-tuned) layer 0, not from the pretrained encoder
    teacher_model = polytask.load(teacher[0] / "teacher" / "best").model
    from polytask.train.setup import build_run

    fresh = build_run(cfg).model
    assert torch.equal(fresh.encoder.encoder.layer[0].attention.self.query.weight,
                       teacher_model.encoder.encoder.layer[0].attention.self.query.weight)


def test_cached_teacher_outputs_train_exactly_like_outputs_on_the_fly(teacher):
    cached = polytask.train(load_config(data=student_config(teacher, "cached", teacher_outputs="cache")))
    fly = polytask.train(load_config(data=student_config(teacher, "fly", teacher_outputs="fly")))
    for (name, a), b in zip(cached.model.state_dict().items(), fly.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_soft_targets_change_the_training_and_alpha_zero_never_runs_the_teacher(teacher, monkeypatch):
    from polytask.distill.base import Distiller

    calls = []
    real = Distiller._run_teacher

    def counting(self, *args, **kwargs):
        calls.append(args[1])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Distiller, "_run_teacher", counting)
    labels_only = polytask.train(load_config(data=student_config(teacher, "a0", alpha=0.0)))
    assert calls == []
    distilled = polytask.train(load_config(data=student_config(teacher, "a7", alpha=0.7)))
    assert sorted(calls) == sorted(KINDS)  # one teacher pass per task over its training rows
    a = labels_only.model.heads["classification"][1].weight
    b = distilled.model.heads["classification"][1].weight
    assert not torch.allclose(a, b)


def test_distill_data_is_labelled_by_the_teacher(teacher, tmp_path):
    unlabelled = write_jsonl(tmp_path / "unlabelled.jsonl",
                             [{"text": r["text"]} for r in toy_rows("classification", 16, 7)])
    d = student_config(teacher, "with-data", kinds=("classification", "token"))
    d["tasks"]["classification"]["distill_data"] = str(unlabelled)
    cfg = load_config(data=d)
    from polytask.train.setup import build_run

    run = build_run(cfg)
    assert "classification@distill" in run.sources and len(run.sources["classification@distill"]) == 16
    batch = run.collate("classification@distill", list(range(4)))
    assert batch["split"] == "distill" and batch["index"]["classification"] == [0, 1, 2, 3]
    result = polytask.train(cfg)
    # 32 labelled + 16 unlabelled classification rows and 32 token rows, batch 8: 10 steps per epoch
    assert result.global_step == 20
    # without distillation, distill_data is refused
    plain = copy.deepcopy(d)
    del plain["train"]["distill"]
    with pytest.raises(polytask.errors.UserError, match="distill_data' needs a teacher"):
        load_config(data=plain)


def prepared(d: dict):
    """The run of config dict ``d`` with its teacher outputs cached (no training)."""
    from polytask.train.setup import build_run

    run = build_run(load_config(data=d))
    run.distiller.prepare(torch.device("cpu"), "fp32", run.data, run.pad_id, 16, progress=False)
    return run


def test_an_ensemble_of_two_teachers_caches_their_averaged_soft_targets(teacher):
    root = teacher[0]
    one, two = (prepared(student_config(teacher, f"c{i}", kinds=("classification", "token"),
                                        teacher=str(root / name))) for i, name in enumerate(("teacher", "teacher2")))
    both = prepared(student_config(teacher, "c3", kinds=("classification", "token"),
                                   teacher=[str(root / "teacher"), str(root / "teacher2")]))
    for task in ("classification", "token"):
        a, b, ab = (r.distiller.cache[task]["train"] for r in (one, two, both))
        assert len(ab) == 32 and not torch.allclose(a[0], b[0])  # two different teachers
        for x, y, xy in zip(a, b, ab):
            torch.testing.assert_close(xy, (x + y) / 2)


def test_unlabelled_rows_get_the_teachers_soft_targets_of_their_own_text(teacher, tmp_path):
    rows = [{"text": r["text"]} for r in toy_rows("classification", 16, 7)]
    d = student_config(teacher, "targets", kinds=("classification",))
    d["tasks"]["classification"]["distill_data"] = str(write_jsonl(tmp_path / "unlabelled.jsonl", rows))
    run = prepared(d)
    cached = run.distiller.cache["classification"]["distill"]
    teacher_model = polytask.load(teacher[0] / "teacher" / "best")
    from polytask.data.features import collate

    feats = run.data["classification"].features["distill"]
    batch = collate(feats, run.tasks["classification"], run.pad_id)
    with torch.no_grad():
        logits = teacher_model.model.eval()(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                            tasks=["classification"])["classification"]
    expected = (logits / 2.0).softmax(-1)  # temperature 2
    torch.testing.assert_close(torch.stack(cached), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(torch.stack(cached), torch.stack(run.distiller.cache["classification"]["train"][:16]))


def test_teacher_labels_in_another_order_are_permuted_into_the_students(teacher):
    from polytask.distill.teacher import Teachers

    cfg = load_config(data=student_config(teacher, "perm", kinds=("classification", "multilabel")))
    teachers = Teachers.load(cfg.train.distill, list(cfg.tasks))
    run = teachers.runs[0]
    tasks = {}
    for name in ("classification", "multilabel"):
        task = build_task(name, cfg.tasks[name])
        task.set_labels(list(reversed(run.tasks[name].labels)))
        tasks[name] = task
    teachers.check(tasks)
    out = torch.arange(2 * len(tasks["multilabel"].labels), dtype=torch.float).view(2, -1)
    assert torch.equal(teachers.logits(0, "multilabel", out), out.flip(-1))
    # a student label the teacher does not know is refused
    tasks["classification"].set_labels(["neg", "pos", "neutral"])
    with pytest.raises(polytask.errors.UserError, match="other labels than in teacher"):
        teachers.check(tasks)


def test_hooks_capture_what_output_hidden_states_returns(teacher):
    from polytask.config import HiddenConfig
    from polytask.distill.hidden import HiddenStates

    model = polytask.load(teacher[0] / "teacher" / "best").model
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    h = HiddenStates(HiddenConfig(weight=1.0), model.encoder.config, model.encoder.config)
    h.attach(model)
    with torch.no_grad():
        model(ids, mask)
    assert h.captured == []  # validation forwards (no gradients) are not recorded
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # train mode without dropout: both forwards compute the same
    model.train()
    model(ids, mask)
    (states,) = h.take(1)
    with torch.no_grad():
        expected = model.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(states) == len(expected) == 3
    for got, want in zip(states, expected):
        torch.testing.assert_close(got.detach(), want)
    h.detach()
    model(ids, mask)
    assert h.captured == []


def test_configs_without_distillation_keep_their_old_shape_and_resume_refuses_another_student(teacher,
                                                                                              monkeypatch):
    cfg = load_config(data=teacher[1])
    assert "distill_data" not in cfg.to_dict()["tasks"]["classification"]
    assert "distill" not in cfg.to_dict()["train"] and "mutual" not in cfg.to_dict()["train"]
    d = student_config(teacher, "shape", kinds=("classification",))
    polytask.train(load_config(data=d))
    d["train"]["distill"]["student"] = {"layers": 2}
    with pytest.raises(polytask.errors.UserError, match="train.distill.student' differs"):
        polytask.train(load_config(data=d), resume=True)


def test_per_task_teachers_and_an_ensemble(teacher):
    root = teacher[0]
    t = str(root / "teacher")
    per_task = polytask.train(load_config(data=student_config(teacher, "per-task", kinds=("classification", "token"),
                                                              teacher={"classification": t, "token": [t, t]})))
    assert per_task.global_step > 0
    ens = polytask.train(load_config(data=student_config(teacher, "ensemble", kinds=("classification",),
                                                         teacher=[t, t])))
    single = polytask.train(load_config(data=student_config(teacher, "one", kinds=("classification",))))
    # an ensemble of one teacher twice teaches what that teacher teaches alone
    for a, b in zip(ens.model.parameters(), single.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_resume_of_a_distilled_run_matches_the_uninterrupted_run(teacher, monkeypatch):
    d = student_config(teacher, "straight", kinds=("classification", "token"))
    straight = polytask.train(load_config(data=d))
    d["train"]["output_dir"] = str(teacher[0] / "resumed")
    resumed = interrupt_and_resume(load_config(data=d), stop_at=11, monkeypatch=monkeypatch)
    assert final_eval(straight.output_dir) == final_eval(resumed.output_dir)


def test_distillation_under_two_processes(teacher, tmp_path):
    d = student_config(teacher, "ddp", kinds=("classification", "token"))
    proc = train_two_processes(write_config(tmp_path, d, "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distillation: teacher" in proc.stderr
    state = json.loads((Path(d["train"]["output_dir"]) / "last" / "training_state" / "trainer_state.json")
                       .read_text())
    assert state["finished"] and state["global_step"] == 8  # 2 tasks x 32 rows / (2 x 8) per step, 2 epochs


def test_polytask_distill_writes_the_comparison_table(teacher, tmp_path, capsys, monkeypatch):
    import polytask.predict

    d = student_config(teacher, "cli", kinds=("classification", "regression"))
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(d), encoding="utf-8")
    read = []  # checkpoints a Predictor reads from disk
    real = polytask.predict.load_checkpoint
    monkeypatch.setattr(polytask.predict, "load_checkpoint", lambda folder, *a: read.append(Path(folder)) or
                        real(folder, *a))
    assert main(["distill", str(path), "--inference-samples", "16"]) == 0
    # the teacher, loaded once for its scores, is timed as it is: no Predictor reads it again
    assert read and (teacher[0] / "teacher" / "best").resolve() not in {f.resolve() for f in read}
    out = Path(d["train"]["output_dir"])
    summary = json.loads((out / "distill.json").read_text())
    assert set(summary["tasks"]) == {"classification", "regression"}
    for row in summary["tasks"].values():
        assert {"teacher", "labels_only", "distilled"} <= set(row)
    assert (Path(str(out) + "-labels-only") / "best").is_dir()
    # the teacher's row is the teacher's own test score
    teacher_eval = polytask.load(teacher[0] / "teacher" / "best")
    from polytask.evaluate.report import evaluate_checkpoint

    own = evaluate_checkpoint(teacher_eval, "test")
    assert math.isclose(summary["tasks"]["classification"]["teacher"], own["classification"]["accuracy"])
    assert summary["speed"]["student_layers"] == 1 and summary["speed"]["teacher_layers"] == 2
    assert "| classification | accuracy |" in capsys.readouterr().out


def test_a_predictor_over_a_loaded_checkpoint_predicts_as_one_read_from_disk(teacher):
    from polytask.model.io import load_checkpoint
    from polytask.predict import Predictor

    folder = teacher[0] / "teacher" / "best"
    texts = [{"text": "show me flights from boston to denver", "text2": "denver"},
             {"text": "cheap flights to miami on monday please", "text2": "miami"}]
    loaded = Predictor.from_loaded(folder, *load_checkpoint(folder))
    assert loaded.task_names == list(KINDS) and not loaded.model.training
    assert loaded.predict(texts) == polytask.load(folder).predict(texts)


# -- bad input --------------------------------------------------------------------------------------------
def run_cli(tmp_path, d, capsys) -> tuple[int, str]:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d), encoding="utf-8")
    code = main(["distill", str(path), "--no-baseline", "--inference-samples", "0"])
    return code, capsys.readouterr().err


def test_a_teacher_without_the_students_task_is_refused(teacher, tmp_path, capsys):
    d = student_config(teacher, "bad1", kinds=("classification",))
    d["tasks"]["sentiment"] = copy.deepcopy(d["tasks"]["classification"])
    code, err = run_cli(tmp_path, d, capsys)
    assert code == 2 and "has no task 'sentiment'" in err and "Traceback" not in err
    assert not Path(d["train"]["output_dir"]).exists()  # refused before anything was written


def test_a_teacher_with_other_labels_is_refused(teacher, tmp_path, capsys):
    d = student_config(teacher, "bad2", kinds=("classification",))
    rows = toy_rows("classification", 32, 0)
    rows[0]["label"] = "neutral"
    d["tasks"]["classification"]["train"] = str(write_jsonl(tmp_path / "other.jsonl", rows))
    code, err = run_cli(tmp_path, d, capsys)
    assert code == 2 and "other labels than in teacher" in err and "neutral" in err


def test_a_student_deeper_than_its_teacher_is_refused(teacher, tmp_path, capsys):
    code, err = run_cli(tmp_path, student_config(teacher, "bad3", student={"layers": 3}), capsys)
    assert code == 2 and "more layers than its teacher" in err


def test_bad_distill_keys_name_the_key(teacher, tmp_path, capsys):
    for distill, key in (({"alpha": 1.5}, "train.distill.alpha"), ({"temperature": 0}, "train.distill.temperature"),
                         ({"student": {"layers": "three"}}, "train.distill.student.layers"),
                         ({"teacher": str(tmp_path / "nowhere")}, "train.distill.teacher"),
                         ({"hidden": {"weight": 1}}, "set train.distill.teacher_outputs: fly"),
                         ({"hidden": {"weight": 1, "layers": [[1, 5]]}, "teacher_outputs": "fly"},
                          "pair [1, 5] is out of range"),
                         ({"hidden": {"weight": -1}}, "train.distill.hidden.weight"),
                         ({"hidden": {"weight": 1}, "teacher_outputs": "fly",
                           "teacher": [str(teacher[0] / "teacher")] * 2}, "needs one teacher run")):
        code, err = run_cli(tmp_path, student_config(teacher, "bad4", **distill), capsys)
        assert code == 2 and key in err, (distill, err)


def word_level_encoder(folder: Path) -> Path:
    """A tiny BERT whose tokenizer is another one (a word-level vocabulary of the toy words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from tests.conftest import CITIES, FILLER

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + CITIES + FILLER + ["good", "bad"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")
    fast.save_pretrained(str(folder))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(str(folder))
    return folder


def test_a_student_with_another_tokenizer_distils_sentence_tasks_and_refuses_token_tasks(teacher, tmp_path,
                                                                                        capsys):
    enc = word_level_encoder(tmp_path / "words-encoder")
    d = student_config(teacher, "other-tok", kinds=("classification", "multilabel"), student={"encoder": str(enc)})
    result = polytask.train(load_config(data=d))
    assert polytask.load(result.output_dir / "best").tokenizer.get_vocab()["boston"] == 4
    bad = student_config(teacher, "other-tok-token", kinds=("token",), student={"encoder": str(enc)})
    code, err = run_cli(tmp_path, bad, capsys)
    assert code == 2 and "token task 'token' needs them to match" in err
    fly = student_config(teacher, "other-tok-fly", kinds=("classification",), student={"encoder": str(enc)},
                         teacher_outputs="fly")
    code, err = run_cli(tmp_path, fly, capsys)
    assert code == 2 and "use teacher_outputs: cache" in err


def test_distillation_under_grad_accum_and_bf16(teacher):
    """Two accumulated micro-batches of 4 give the distillation gradient of one batch of 8 (dropout off); a
    bf16 distillation (the teacher's cache computed under the same autocast) trains and reloads."""
    from polytask.train.setup import build_run
    from tests.test_train_cycle import assert_accumulation_matches

    run = build_run(load_config(data=student_config(teacher, "accum", kinds=("classification", "token"))))
    run.distiller.prepare(torch.device("cpu"), "fp32", run.data, run.pad_id, 16, progress=False)
    for task in ("classification", "token"):
        assert_accumulation_matches(run, task)
    result = polytask.train(load_config(data=student_config(teacher, "bf16", kinds=("classification", "token")),
                                        overrides=["train.precision=bf16", "train.grad_accum=2"]))
    assert result.global_step == 8 and polytask.load(result.output_dir / "best").model is not None


def narrow_encoder(folder: Path, tiny_encoder: Path) -> Path:
    """A 1-layer BERT of width 16 with the teacher's tokenizer (a student of another width)."""
    import shutil

    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=128)).save_pretrained(str(folder))
    for f in tiny_encoder.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special")):
            shutil.copy(f, folder / f.name)
    return folder


def test_hidden_states_loss_is_zero_when_the_student_matches():
    from types import SimpleNamespace

    from polytask.config import HiddenConfig
    from polytask.distill.hidden import HiddenStates, layer_pairs

    assert layer_pairs(HiddenConfig(weight=1.0), 3, 6) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    same = SimpleNamespace(num_hidden_layers=1, hidden_size=4)
    h = HiddenStates(HiddenConfig(weight=1.0), same, SimpleNamespace(num_hidden_layers=2, hidden_size=4))
    assert h.projections is None and h.pairs == [(0, 0), (1, 2)]
    states = [torch.randn(2, 3, 4) for _ in range(3)]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert h.loss([states[0], states[2]], tuple(states), mask) == 0
    noisy = states[2].clone()
    noisy[mask == 0] += 10.0  # padding does not count
    assert h.loss([states[0], noisy], tuple(states), mask) == 0
    assert h.loss([states[1], states[2]], tuple(states), mask) > 0


def test_hidden_state_matching_trains_and_resumes(teacher, tiny_encoder, tmp_path, monkeypatch):
    common = {"teacher_outputs": "fly", "hidden": {"weight": 1.0}}
    plain = polytask.train(load_config(data=student_config(teacher, "no-hidden", kinds=("classification", "token"),
                                                           teacher_outputs="fly")))
    hidden = polytask.train(load_config(data=student_config(teacher, "hidden", kinds=("classification", "token"),
                                                            **common)))
    a, b = plain.model.encoder.encoder.layer[0], hidden.model.encoder.encoder.layer[0]
    assert not torch.allclose(a.output.dense.weight, b.output.dense.weight)  # the hidden loss moved the layer
    # a narrower student learns projections (width 16 -> 32), saved in last/ and restored by --resume
    enc = narrow_encoder(tmp_path / "narrow", tiny_encoder)
    d = student_config(teacher, "narrow", kinds=("classification", "token"), student={"encoder": str(enc)},
                       **common)
    straight = polytask.train(load_config(data=d))
    state = Path(d["train"]["output_dir"]) / "last" / "training_state" / "distill_hidden.safetensors"
    assert state.is_file()
    from safetensors.torch import load_file

    assert load_file(str(state))["projections.0.weight"].shape == (32, 16)
    loaded = polytask.load(straight.output_dir / "best")
    assert loaded.model.encoder.config.hidden_size == 16  # the projections are not part of the student
    d["train"]["output_dir"] = str(teacher[0] / "narrow-resumed")
    resumed = interrupt_and_resume(load_config(data=d), stop_at=11, monkeypatch=monkeypatch)
    assert final_eval(straight.output_dir) == final_eval(resumed.output_dir)


def test_a_tasks_probability_is_shared_by_its_labelled_and_unlabelled_rows(teacher, tmp_path, monkeypatch):
    import importlib

    setup = importlib.import_module("polytask.train.setup")  # (polytask.train is also the train() function)
    seen = {}
    real = setup.MultiTaskBatchPlan

    def capture(lengths, tc, **kwargs):
        seen.update(kwargs["task_probabilities"])
        return real(lengths, tc, **kwargs)

    monkeypatch.setattr(setup, "MultiTaskBatchPlan", capture)
    d = student_config(teacher, "probs", kinds=("classification", "token"))
    d["tasks"]["classification"]["distill_data"] = str(write_jsonl(
        tmp_path / "u.jsonl", [{"text": r["text"]} for r in toy_rows("classification", 16, 7)]))
    d["train"].update(sampling="probabilities", task_probabilities={"classification": 0.6, "token": 0.4})
    setup.build_run(load_config(data=d))
    # 32 labelled + 16 unlabelled rows: the task's 0.6 split 2:1
    assert seen == pytest.approx({"classification": 0.4, "classification@distill": 0.2, "token": 0.4})
