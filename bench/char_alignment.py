"""How much of MSRA's entity structure survives the trip characters -> tokens -> characters.

A perfect tagger is simulated: its logits put all mass on the gold token labels. Its span F1 against the
gold character tags is the ceiling any model can reach with that tokenisation. Two tokenisations of the
multilingual-e5-small (XLM-R) tokenizer are compared on the same sentences: polytask's (multi-character
CJK tokens split into characters) and the tokenizer's own tokens. Also printed: tokens per sentence (the
cost of the split). ``ratio`` = ceiling F1 with the split / ceiling F1 with the tokenizer's own tokens.

    .venv/bin/python bench/char_alignment.py [--quick]
"""

from __future__ import annotations

import common  # puts src/ on the path, sets HF_HUB_OFFLINE
import torch

import polytask.tasks.token_classification as tc
from polytask.catalog.encoders import resolve_encoder
from polytask.config import TaskConfig
from polytask.data.features import collate, read_examples
from polytask.model.encoder import load_tokenizer
from polytask.tasks import build_task


def ceiling(task, examples, tokenizer, max_length: int) -> tuple[float, float]:
    feats = task.encode(examples, tokenizer, max_length)
    preds = []
    for s in range(0, len(feats), 64):
        batch = collate(feats[s:s + 64], task, tokenizer.pad_token_id)
        gold = batch["labels"].clamp(min=0)
        preds += task.decode(torch.nn.functional.one_hot(gold, len(task.labels)).float(), batch)
    f1 = task.metrics(preds, [ex.label for ex in examples])["f1"]
    return f1, sum(len(f["input_ids"]) for f in feats) / len(feats)


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    tokenizer = load_tokenizer(resolve_encoder("multilingual-e5-small"))
    task = build_task("ner", TaskConfig(type="token_classification", dataset="msra_ner", text="text", label="tags",
                                        max_eval_samples=300 if args.quick else None))
    task.fit_labels(read_examples(task, "train")[:1000])
    test = read_examples(task, "test")
    split_f1, split_len = ceiling(task, test, tokenizer, 512)
    own = tc.split_cjk_tokens
    tc.split_cjk_tokens = lambda text, ids, offsets, tok: (list(ids), [tuple(o) for o in offsets])
    try:
        own_f1, own_len = ceiling(task, test, tokenizer, 512)
    finally:
        tc.split_cjk_tokens = own
    print(f"machine: {common.machine()}")
    print(f"MSRA test, {len(test)} sentences, multilingual-e5-small tokenizer; span F1 of a perfect tagger:")
    print(f"  CJK tokens split into characters (polytask): F1 {100 * split_f1:.2f}, {split_len:.1f} tokens/sentence")
    print(f"  the tokenizer's own tokens:                  F1 {100 * own_f1:.2f}, {own_len:.1f} tokens/sentence")
    print(f"ratio: {split_f1 / own_f1:.3f}")


if __name__ == "__main__":
    main()
