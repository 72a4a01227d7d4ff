"""Training speed: polytask vs the seed article's recipe, on the same data, encoder, batch size and epochs.

The seed recipe pads every input to max_length=128 and trains in fp32 with a plain PyTorch loop. polytask
runs ``examples/atis.yaml`` as a user would (``polytask.train``: dynamic padding, length-grouped batches,
the example's precision, validation and checkpoints each epoch — all counted in its time). Both sides start
from the same weights (same seed), use the same optimizer settings and see every training example once per
epoch. polytask also runs once with ``train.joint_batches: off`` (one task per batch), which shows what joint
batches alone gain (ATIS intent and slots read the same utterances). Prints examples/second of each, the test
metrics after the same epochs, and
``ratio: <polytask examples/s ÷ seed-recipe examples/s>``.

    python bench/train_speed.py            # full ATIS, 2 epochs (about 20 minutes on 2 cores)
    python bench/train_speed.py --quick    # 16 examples per task, 32 tokens (the recipe still pads to 128), 1 epoch
"""

from __future__ import annotations

import shutil
import time

from common import (
    bare_train,
    example_config,
    fmt,
    machine,
    parser,
    random_batches,
    ratio_line,
    scratch_dir,
    setup_threads,
    test_metrics,
    tiny_overrides,
)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--config", default="atis", help="example config name under examples/ (default: atis)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for both sides (default 2; --quick: 1)")
    p.add_argument("--skip-seed", action="store_true",
                   help="only polytask with joint batches off and on; the ratio is then their speed-up")
    args = p.parse_args()
    setup_threads(args.threads)
    from accelerate.utils import set_seed

    import polytask
    from polytask.precision import runtime_precision
    from polytask.train.setup import build_run

    epochs = args.epochs or (1 if args.quick else 2)
    overrides = [f"train.epochs={epochs}", "train.early_stopping.patience=null"]
    tmp = scratch_dir("bench-train-speed-")
    if args.quick:  # a few steps on a few dozen examples per task
        overrides += tiny_overrides(example_config(args.config, [], tmp / "unused"), train=16)
    config = example_config(args.config, overrides, tmp / "polytask")
    print(f"machine: {machine()}")
    print(f"config: examples/{args.config}.yaml, {epochs} epoch(s), batch {config.train.batch_size}, "
          f"max_length {config.model.max_length}, polytask precision "
          f"{config.train.precision} -> {runtime_precision(config.train.precision, 'cpu')}")

    # seed recipe: fixed padding to 128, fp32, plain loop
    set_seed(config.train.seed)
    run = build_run(config)
    sizes = {t: len(d.features["train"]) for t, d in run.data.items()}
    if not args.skip_seed:
        plans = [random_batches(sizes, config.train.batch_size, config.train.seed, e) for e in range(epochs)]
        seed_side = bare_train(run.model, run, plans, precision="fp32", pad_to=128)
        seed_metrics = test_metrics(run.model, run, "fp32")
        print(f"seed recipe: {seed_side['examples']} examples in {seed_side['seconds']:.1f} s = "
              f"{seed_side['examples_per_second']:.1f} examples/s; test: {fmt(seed_metrics)}")

    examples = sum(sizes.values()) * epochs  # task-examples: an utterance labelled for 2 tasks counts twice

    def timed(cfg, label: str) -> tuple[float, dict[str, float]]:
        """Train ``cfg`` with polytask; its seconds (validation and checkpoints included) and test metrics."""
        start = time.perf_counter()
        result = polytask.train(cfg)
        seconds = time.perf_counter() - start
        metrics = test_metrics(result.model, run, cfg.train.precision)
        print(f"{label}: {examples} examples in {seconds:.1f} s = {examples / seconds:.1f} examples/s "
              f"(validation and checkpoints included); test: {fmt(metrics)}")
        shutil.rmtree(cfg.train.output_dir, ignore_errors=True)
        return seconds, metrics

    # polytask with joint batches off, then as configured: the speed-up of joint batches alone
    off = example_config(args.config, [*overrides, "train.joint_batches='off'"], tmp / "polytask-separate")
    off_seconds, _ = timed(off, "polytask, joint_batches off")
    seconds, pt_metrics = timed(config, "polytask")
    print(f"joint batches alone: {off_seconds / seconds:.2f}x faster than one task per batch "
          f"({len(run.sources)} source(s) for {len(run.tasks)} tasks)")
    shutil.rmtree(tmp, ignore_errors=True)  # ~350 MB of checkpoints
    if args.skip_seed:
        print(ratio_line(off_seconds / seconds))
        return
    diff = {k: pt_metrics[k] - seed_metrics[k] for k in pt_metrics}
    print("metric difference (polytask − seed recipe, points): " + fmt(diff))
    print(ratio_line((examples / seconds) / seed_side["examples_per_second"]))


if __name__ == "__main__":
    main()
