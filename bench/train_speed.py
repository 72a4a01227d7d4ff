"""Training speed: polytask vs the seed article's recipe, on the same data, encoder, batch size and epochs.

The seed recipe pads every input to max_length=128 and trains in fp32 with a plain PyTorch loop. polytask
runs ``examples/atis.yaml`` as a user would (``polytask.train``: dynamic padding, length-grouped batches,
the example's precision, validation and checkpoints each epoch — all counted in its time). Both sides start
from the same weights (same seed), use the same optimizer settings and see every training example once per
epoch. Prints examples/second of each, the test metrics of both after the same epochs, and
``ratio: <polytask examples/s ÷ seed-recipe examples/s>``.

    python bench/train_speed.py            # full ATIS, 2 epochs (about 20 minutes on 2 cores)
    python bench/train_speed.py --quick    # 160 examples per task, 1 epoch
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import (
    bare_train,
    example_config,
    fmt,
    machine,
    parser,
    random_batches,
    ratio_line,
    setup_threads,
    test_metrics,
)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--config", default="atis", help="example config name under examples/ (default: atis)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for both sides (default 2; --quick: 1)")
    args = p.parse_args()
    setup_threads(args.threads)
    from accelerate.utils import set_seed

    import polytask
    from polytask.train.setup import build_run

    epochs = args.epochs or (1 if args.quick else 2)
    overrides = [f"train.epochs={epochs}", "train.early_stopping.patience=null"]
    if args.quick:
        overrides += ["tasks.intent.max_train_samples=160", "tasks.slots.max_train_samples=160",
                      "tasks.intent.max_eval_samples=128", "tasks.slots.max_eval_samples=128"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-speed-"))
    config = example_config(args.config, overrides, tmp / "polytask")
    print(f"machine: {machine()}")
    print(f"config: examples/{args.config}.yaml, {epochs} epoch(s), batch {config.train.batch_size}, "
          f"polytask precision {config.train.precision}")

    # seed recipe: fixed padding to 128, fp32, plain loop
    set_seed(config.train.seed)
    run = build_run(config)
    sizes = {t: len(d.features["train"]) for t, d in run.data.items()}
    plans = [random_batches(sizes, config.train.batch_size, config.train.seed, e) for e in range(epochs)]
    seed_side = bare_train(run.model, run, plans, precision="fp32", pad_to=128)
    seed_metrics = test_metrics(run.model, run, "fp32")
    print(f"seed recipe: {seed_side['examples']} examples in {seed_side['seconds']:.1f} s = "
          f"{seed_side['examples_per_second']:.1f} examples/s; test: {fmt(seed_metrics)}")

    start = time.perf_counter()
    result = polytask.train(config)
    seconds = time.perf_counter() - start
    examples = sum(sizes.values()) * epochs
    pt_metrics = test_metrics(result.model, run, config.train.precision)
    print(f"polytask:    {examples} examples in {seconds:.1f} s = {examples / seconds:.1f} examples/s "
          f"(validation and checkpoints included); test: {fmt(pt_metrics)}")
    diff = {k: pt_metrics[k] - seed_metrics[k] for k in pt_metrics}
    print("metric difference (polytask − seed recipe, points): " + fmt(diff))
    print(ratio_line((examples / seconds) / seed_side["examples_per_second"]))


if __name__ == "__main__":
    main()
