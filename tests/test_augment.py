"""train.augment: noisy copies of training rows (tags realigned as the robustness suite does, the same copies for
the same seed), the consistency term against a hand computation, config errors, and training end to end."""

from __future__ import annotations

import pytest
import torch

import polytask
from polytask.errors import NotSupportedError, UserError
from polytask.robustness.runner import perturb_units
from polytask.tasks.base import IGNORE_INDEX
from polytask.train.setup import build_run

AUG = {"noise": ["typo_swap", "typo_drop", "word_dropout", "casing"], "rate": 0.3, "prob": 0.5}


@pytest.mark.parametrize("augment, error, message", [
    ({"noise": ["typo_swapp"]}, UserError, r"train.augment.noise' has bad value 'typo_swapp'; allowed: names from "
                                           r"the noise suite: typo_swap"),
    ({"noise": ["casing"], "rate": 0}, UserError, r"train.augment.rate' has bad value 0"),
    ({"noise": ["casing"], "prob": 1.5}, UserError, r"train.augment.prob' has bad value 1.5"),
    ({"noise": ["casing"], "consistency": -1}, UserError, r"train.augment.consistency' has bad value -1"),
    ({"noise": ["casing"], "tasks": ["nope"]}, UserError, r"train.augment.tasks' has bad value \['nope'\]"),
    ({"rate": 0.2}, UserError, r"train.augment' has options but no noise"),
    ({"noise": "casing"}, UserError, r"train.augment.noise' has bad value 'casing'; expected a list"),
])
def test_bad_augment_options(toy_config, build_config, augment, error, message):
    with pytest.raises(error, match=message):
        build_config(toy_config(train={"augment": augment}))


def test_augment_refuses_other_methods_and_noises_that_do_not_apply(toy_config, build_config):
    with pytest.raises(NotSupportedError, match=r"train.augment with train.adversarial is not supported"):
        build_config(toy_config(train={"augment": AUG, "adversarial": {"method": "fgm"}}))
    cfg = build_config(toy_config(train={"augment": {"noise": ["char_drop"], "tasks": ["token"]}}))
    with pytest.raises(UserError, match=r"none of char_drop applies to task 'token' \(English text, words tagged\)"):
        build_run(cfg)
    assert "augment" not in build_config(toy_config()).to_dict()["train"]  # off: saved configs as before


def noisy_batch(run, source: str, step: int):
    rows = list(range(len(run.sources[source])))[:8]
    return rows, run.augment.extend(run.collate(source, rows), run.sources[source], rows, step)


def test_copies_keep_tags_aligned_and_are_the_same_per_seed(toy_config, build_config):
    cfg = build_config(toy_config(["classification", "token"], train={"augment": {**AUG, "consistency": 1.0}}))
    run = build_run(cfg)
    rows, batch = noisy_batch(run, "token", step=3)
    clean = run.collate("token", rows)
    n = clean["input_ids"].shape[0]
    copies = batch["input_ids"].shape[0] - n
    assert 0 < copies < n  # prob 0.5 of 8 rows (seeded: never all or none here)
    assert torch.equal(batch["input_ids"][:n, :clean["input_ids"].shape[1]], clean["input_ids"])
    pos, labels = batch["parts"]["token"]
    assert pos.tolist() == list(range(n + copies))
    city = run.tasks["token"].labels.index("B-city")
    for j in range(copies):  # at most one city per copy (a dropped city word takes its tag with it)
        assert (labels[n + j] == city).sum() <= 1
    # the consistency pairs: each clean row with its copy; words matched through the noise's origin map
    cr, ct, nr, nt = batch["pairs"]["token"]
    assert set(nr.tolist()) <= set(range(n, n + copies)) and set(cr.tolist()) <= set(range(n))
    assert (labels[cr, ct] != IGNORE_INDEX).all() and (labels[nr, nt] != IGNORE_INDEX).all()
    # a kept word keeps its tag: where the clean word was the city, the matched noisy word is tagged city
    assert ((labels[cr, ct] == city) <= (labels[nr, nt] == city)).all()
    # the same seed and step give the same copies; another step other ones
    again = noisy_batch(build_run(cfg), "token", step=3)[1]
    assert torch.equal(again["input_ids"], batch["input_ids"])
    other = noisy_batch(run, "token", step=4)[1]
    assert not torch.equal(other["input_ids"][n:], batch["input_ids"][n:]) or \
        other["input_ids"].shape != batch["input_ids"].shape
    # a sentence task: the copy's text is what the robustness suite makes of the row
    rows, cls = noisy_batch(run, "classification", step=3)
    cpos, npos = cls["pairs"]["classification"]
    assert len(cpos) == len(npos) == cls["input_ids"].shape[0] - len(rows)


def test_copy_matches_the_noise_suite(toy_config, build_config):
    """A copy's words and tags are exactly perturb_units' for the noise drawn for the row."""
    import random
    import zlib

    cfg = build_config(toy_config(["token"], train={"augment": {**AUG, "prob": 1.0}}))
    run = build_run(cfg)
    rows, batch = noisy_batch(run, "token", step=0)
    n, task = len(rows), run.tasks["token"]
    for k, r in enumerate(rows):
        rng = random.Random(zlib.crc32(f"{cfg.train.seed}:0:token:{r}".encode()))
        rng.random()
        noise, seed = rng.choice(run.augment.noises["token"]), rng.randrange(2 ** 31)
        ex, _ = perturb_units(run.data["token"].examples["train"][r], task, noise, AUG["rate"], seed, 0)
        want = task.encode([ex], run.tokenizer, cfg.model.max_length)[0]
        got = batch["input_ids"][n + k][: len(want["input_ids"])].tolist()
        assert got == want["input_ids"]
        labels = batch["parts"]["token"][1][n + k][: len(want["labels"])].tolist()
        assert labels == want["labels"]


def test_consistency_term_matches_a_hand_computation(toy_config, build_config):
    cfg = build_config(toy_config(["classification", "token"], train={"augment": {**AUG, "consistency": 2.0}}))
    run = build_run(cfg)
    model = run.model.eval()
    for source in ("classification", "token"):
        rows, batch = noisy_batch(run, source, step=1)
        with torch.no_grad():
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=[source])
        pos, labels = batch["parts"][source]
        base = {source: run.tasks[source].loss(logits[source][pos], labels)}
        got = run.augment.objective(base, logits, batch)[source] - base[source]
        x, pair = logits[source], batch["pairs"][source]
        if source == "classification":  # symmetric KL of the softmaxes, row with row
            p, q = x[pair[0]].float(), x[pair[1]].float()
        else:
            p, q = x[pair[0], pair[1]].float(), x[pair[2], pair[3]].float()
        lp, lq = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
        kl = ((lp.exp() * (lp - lq)).sum(-1) + (lq.exp() * (lq - lp)).sum(-1)).mean()
        assert kl.item() > 1e-6  # the copies do move the predictions
        assert got.item() == pytest.approx(2.0 * kl.item(), rel=1e-4)


def test_training_with_augmentation_is_deterministic(toy_config, build_config, tmp_path):
    data = toy_config(["classification", "token"], n_train=24, n_eval=8,
                      train={"augment": {**AUG, "consistency": 1.0}, "epochs": 1})
    a = polytask.train(build_config(data, [f"train.output_dir={tmp_path / 'a'}"]))
    b = polytask.train(build_config(data, [f"train.output_dir={tmp_path / 'b'}"]))
    plain = polytask.train(build_config(toy_config(["classification", "token"], n_train=24, n_eval=8,
                                                   train={"epochs": 1}), [f"train.output_dir={tmp_path / 'c'}"]))
    wa, wb, wc = (dict(r.model.named_parameters()) for r in (a, b, plain))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # the copies changed what was learnt
    assert a.validation and all(v == v for v in a.validation.values())  # finite metrics


def joint_config(tmp_path, tiny_encoder, augment: dict) -> dict:
    """Two tasks reading one file (a sentence label and word tags of the same utterances): one joint source."""
    from tests.conftest import toy_rows, write_jsonl

    files = {}
    for split, n, seed in (("train", 32, 0), ("validation", 8, 1)):
        rows = [{"text": " ".join(r["words"]), "words": r["words"], "tags": r["tags"],
                 "label": "west" if any(t != "O" and w in ("seattle", "phoenix", "denver", "miami")
                                        for w, t in zip(r["words"], r["tags"])) else "east"}
                for r in toy_rows("token", n, seed)]
        files[split] = str(write_jsonl(tmp_path / "joint" / f"{split}.jsonl", rows))
    return {"model": {"encoder": str(tiny_encoder), "max_length": 32},
            "tasks": {"region": {"type": "classification", "text": "text", "label": "label", **files},
                      "city": {"type": "token_classification", "text": "words", "label": "tags", **files}},
            "train": {"output_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 8, "precision": "fp32",
                      "progress": False, "tensorboard": False, "augment": augment}}


def test_joint_rows_share_one_noisy_text_and_augment_tasks_is_honoured(tmp_path, tiny_encoder, build_config):
    run = build_run(build_config(joint_config(tmp_path, tiny_encoder, {**AUG, "prob": 1.0})))
    (source,) = run.sources
    assert source == "region+city"
    rows, batch = noisy_batch(run, source, step=0)
    n = len(rows)
    assert batch["input_ids"].shape[0] == 2 * n  # every row copied once, one input for both tasks
    for t in ("region", "city"):
        pos, _ = batch["parts"][t]
        assert pos.tolist() == list(range(2 * n))
    assert "whitespace" not in run.augment.noises[source]  # (the word-tagged task rules it out for the row)
    # only the city task trains on the copies: the region task has no label on them
    only = build_run(build_config(joint_config(tmp_path, tiny_encoder, {**AUG, "prob": 1.0, "tasks": ["city"]})))
    rows, batch = noisy_batch(only, source, step=0)
    assert batch["input_ids"].shape[0] == 2 * n
    assert batch["parts"]["region"][0].tolist() == list(range(n))
    assert batch["parts"]["city"][0].tolist() == list(range(2 * n))
    assert set(batch["pairs"]) == {"city"}


def test_regression_and_multilabel_copies_take_the_consistency_term(toy_config, build_config):
    import torch.nn.functional as F

    cfg = build_config(toy_config(["regression", "multilabel"], train={"augment": {**AUG, "consistency": 0.5}}))
    run = build_run(cfg)
    for source in ("regression", "multilabel"):
        rows, batch = noisy_batch(run, source, step=2)
        with torch.no_grad():
            logits = run.model.eval()(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                      tasks=[source])
        base = {source: torch.tensor(0.0)}
        got = run.augment.objective(base, logits, batch)[source]
        clean, noisy = (logits[source][p] for p in batch["pairs"][source])
        if source == "regression":  # text and text_pair both perturbed; squared error between the outputs
            want = 0.5 * F.mse_loss(clean.float(), noisy.float()) / run.tasks["regression"].target_std ** 2
        else:  # per-label Bernoulli symmetric KL, summed over labels, mean over examples
            p, q = torch.sigmoid(clean.float()), torch.sigmoid(noisy.float())
            kl = (p - q) * (torch.log(p / q) - torch.log((1 - p) / (1 - q)))  # KL(p||q) + KL(q||p), per label
            want = 0.5 * kl.sum(-1).mean()
        assert got.item() == pytest.approx(want.item(), rel=1e-5) and got.item() > 0
