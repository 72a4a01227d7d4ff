"""Load test of ``polytask serve``: real ATIS test utterances, a fixed number of requests at a fixed concurrency,
against servers started here on 127.0.0.1 (each its own process, stopped at the end), by a minimal keep-alive
HTTP client on asyncio streams (one connection per request in flight) so that the client costs little CPU.

Side by side, in one run: micro-batching on (``--max-batch 32 --max-wait-ms 5``) vs off (``--max-batch 1``: one
request at a time); the PyTorch checkpoint (at its precision, and in fp32) vs its ONNX export vs the int8 export
(onnxruntime), all micro-batched;
and one multi-task server vs k single-task servers (``--tasks intent`` and ``--tasks slots`` of the same
checkpoint, which compute what single-task models of that encoder would) answering the same k answers per
utterance. Every server gets the machine's cores (the k single-task servers split them). Reports throughput, p50 /
p95 / p99 latency, errors, and the servers' batch-size histograms (from their ``/metrics``). The ONNX export also
scores PyTorch, ONNX and int8 on the whole ATIS test split.

Each request has a time limit, each side a deadline; the script stops by itself. Prints
``ratio: <requests/s with micro-batching ÷ without>`` (goal: at least 3 at concurrency 32).

    python bench/serve_load.py                  # trains examples/atis.yaml once (or --run RUN), 1,000 requests x 32
    python bench/serve_load.py --quick          # the model untrained, 64 requests at concurrency 8
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, example_config, machine, parser, ratio_line, scratch_dir, setup_threads, tiny_overrides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``polytask serve`` in a child process on a free loopback port; stopped (SIGTERM, then kill) on exit."""

    def __init__(self, run: Path, log: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "polytask.cli", "serve", str(run), "--port",
                                      str(self.port), *args], stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready within {timeout:.0f} s; see {self.log.name}")

    def batch_histogram(self) -> dict[str, int]:
        """``{"<=1": n, "<=2": n, ...}``: micro-batches by size (per bucket, not cumulative)."""
        import httpx

        text = httpx.get(self.url + "/metrics", timeout=10).text
        cumulative = [(m.group(1), float(m.group(2))) for m in
                      re.finditer(r'polytask_batch_size_bucket\{le="([^"]+)"\} (\S+)', text)]
        out, before = {}, 0.0
        for le, count in cumulative:
            if count > before:
                out["<=" + le.replace(".0", "") if le != "+Inf" else ">max"] = int(count - before)
            before = count
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Connection:
    """One keep-alive HTTP/1.1 connection, written by hand on asyncio streams: the load generator shares the
    machine with the servers, so it must cost as little CPU per request as possible (a general-purpose client
    spends more per request than the server's model does on a batched utterance)."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        try:
            return await asyncio.wait_for(self._response(), timeout)
        except BaseException:
            self.close()
            raise

    async def _response(self) -> tuple[int, bytes]:
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load(urls: list[str], bodies: list[dict], concurrency: int, timeout: float, deadline: float
               ) -> tuple[list[float], int, float, list[list[dict]]]:
    """Send every body to every url (an utterance's answer = all of its urls' answers) with ``concurrency``
    utterances in flight, over ``concurrency`` keep-alive connections per url. Returns per-utterance latencies,
    errors, wall seconds, the answers."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    payloads = [json.dumps(b).encode() for b in bodies]
    latencies: list[float] = []
    answers: list[list[dict]] = [[] for _ in bodies]
    errors = 0
    end = time.monotonic() + deadline

    async def worker() -> None:
        nonlocal errors
        conns = [Connection(u) for u in urls]
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if time.monotonic() > end:
                errors += 1
                continue
            start = time.perf_counter()
            try:
                replies = await asyncio.gather(*(c.post("/predict", payloads[i], timeout) for c in conns))
            except (OSError, asyncio.TimeoutError, ConnectionError, ValueError, IndexError):
                errors += 1
                continue
            if any(status != 200 for status, _ in replies):
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
            answers[i] = [json.loads(b)["predictions"][0] for _, b in replies]
        for c in conns:
            c.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start, answers


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


def side(name: str, servers: list[Server], bodies: list[dict], args) -> dict:
    for s in servers:
        s.wait_ready()
    time.sleep(0.5)  # let a server that just became ready settle (its warm-up passes are done)
    warm = bodies[: min(len(bodies), args.concurrency)]
    asyncio.run(load([s.url for s in servers], warm, args.concurrency, args.timeout, args.deadline))
    before = [s.batch_histogram() for s in servers]  # the warm-up's batches are not counted
    lat, errors, wall, answers = asyncio.run(load([s.url for s in servers], bodies, args.concurrency,
                                                  args.timeout, args.deadline))
    hist: dict[str, int] = {}
    for s, seen in zip(servers, before):
        for k, v in s.batch_histogram().items():
            if v - seen.get(k, 0) > 0:
                hist[k] = hist.get(k, 0) + v - seen.get(k, 0)
    row = {"side": name, "requests": len(bodies), "errors": errors, "seconds": wall,
           "per_second": (len(bodies) - errors) / wall, "p50_ms": 1000 * percentile(lat, 50),
           "p95_ms": 1000 * percentile(lat, 95), "p99_ms": 1000 * percentile(lat, 99), "batches": hist,
           "answers": answers}
    print(f"{name}: {row['per_second']:.1f} requests/s, p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, "
          f"p99 {row['p99_ms']:.0f} ms, {errors} errors; micro-batches {hist}", flush=True)
    return row


def utterances(n: int) -> list[str]:
    from polytask.catalog.datasets import DATASETS

    texts = [r["text"] for _, r in DATASETS.get("atis").rows("test")]
    return [texts[i % len(texts)] for i in range(n)]


def model_ceiling(run: Path, texts: list[str], threads: int) -> float:
    """What batching can gain at the model alone, no HTTP: texts/s one at a time vs in batches of 32, in this
    process with the servers' thread count (measured before any server starts)."""
    import torch

    import polytask

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = polytask.load(run)
    model.predict([{"text": t} for t in texts[:32]], batch_size=32)  # warm-up
    start = time.perf_counter()
    for t in texts:
        model.predict([{"text": t}], batch_size=1)
    one = len(texts) / (time.perf_counter() - start)
    start = time.perf_counter()
    model.predict([{"text": t} for t in texts], batch_size=32)
    batched = len(texts) / (time.perf_counter() - start)
    torch.set_num_threads(before)
    print(f"the model alone ({len(texts)} utterances, {threads} thread(s)): one at a time {one:.1f} texts/s, batches "
          f"of 32 {batched:.1f} texts/s — batching gains at most {batched / one:.2f}x here", flush=True)
    return batched / one


def train_run(out: Path, quick: bool) -> Path:
    """examples/atis.yaml trained into ``out`` (once); --quick: the model with fresh heads on a few dozen rows'
    labels, saved untrained (throughput does not depend on what the heads learned)."""
    import polytask

    if quick:
        from accelerate.utils import set_seed

        from polytask.model.io import save_checkpoint
        from polytask.train.setup import build_run

        config = example_config("atis", tiny_overrides(example_config("atis", [], out)), out)
        set_seed(0)
        built = build_run(config)
        return save_checkpoint(out / "best", built.model, built.tokenizer, config, built.tasks).parent
    done = out / "last" / "training_state" / "trainer_state.json"
    if (out / "best" / "polytask.json").is_file() and done.is_file() and json.loads(done.read_text())["finished"]:
        return out
    start = time.perf_counter()
    polytask.train(example_config("atis", [], out), overwrite=True)
    print(f"trained {out} in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a trained ATIS run to serve (default: train examples/atis.yaml into --output)")
    p.add_argument("--output", default=None, help="folder for the run, its export and the logs "
                                                  "(default runs/bench-serve; --quick: a temporary folder)")
    p.add_argument("--requests", type=int, default=None, help="requests per side (default 1000; --quick 64)")
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight (default 32; --quick 8)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per request (default 60)")
    p.add_argument("--deadline", type=float, default=600.0, help="seconds allowed per side (default 600)")
    p.add_argument("--sides", default="on,off,fp32,onnx,int8,workers,single",
                   help="which sides to run (default all: on,off,fp32,onnx,int8,workers,single; 'on' is PyTorch at the "
                        "run's precision, auto: bf16 where the CPU has it natively)")
    args = p.parse_args()
    setup_threads(args.threads)
    args.requests = args.requests or (64 if args.quick else 1000)
    args.concurrency = args.concurrency or (8 if args.quick else 32)
    out = Path(args.output or (scratch_dir("bench-serve-") if args.quick else "runs/bench-serve"))
    out.mkdir(parents=True, exist_ok=True)
    cores = args.threads or os.cpu_count() or 1
    print(f"machine: {machine()}")
    run = Path(args.run) if args.run else train_run(out / "atis", args.quick)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if {"onnx", "int8"} & set(sides):
        from polytask.export.onnx import export_onnx, print_summary

        start = time.perf_counter()
        exported = export_onnx(run, out / "onnx", quantize="int8", overwrite=True, echo=lambda *a: None)
        print(f"exported to ONNX + int8 in {time.perf_counter() - start:.0f} s")
        print_summary(exported)
    bodies = [{"texts": [t]} for t in utterances(args.requests)]
    ceiling = model_ceiling(run, [b["texts"][0] for b in bodies[:256]], cores)
    print(f"{args.requests} requests of one ATIS test utterance each, concurrency {args.concurrency}, "
          f"{cores} thread(s) per server (k single-task servers: {max(1, cores // 2)} each)", flush=True)
    common = ["--threads", str(cores)]
    plans = {
        "on": ("multi-task, PyTorch, micro-batching on", [[*common, "--max-batch", "32", "--max-wait-ms", "5"]], run),
        "fp32": ("multi-task, PyTorch fp32, micro-batching on", [[*common, "--precision", "fp32"]], run),
        "off": ("multi-task, PyTorch, micro-batching off", [[*common, "--max-batch", "1", "--max-wait-ms", "0"]], run),
        "onnx": ("multi-task, ONNX fp32, micro-batching on", [[*common, "--backend", "onnx-fp32"]], out / "onnx"),
        "int8": ("multi-task, ONNX int8, micro-batching on", [[*common, "--backend", "onnx"]], out / "onnx"),
        "workers": (f"multi-task, PyTorch, 2 workers x {max(1, cores // 2)} thread(s), micro-batching on",
                    [["--workers", "2", "--threads", str(max(1, cores // 2))]], run),
        "single": ("2 single-task servers (intent; slots), PyTorch, micro-batching on",
                   [["--threads", str(max(1, cores // 2)), "--tasks", task] for task in ("intent", "slots")], run),
    }
    rows = {}
    # every server starts now and loads while the others do; an idle server takes no CPU, so the sides, measured
    # one after the other, do not disturb each other
    started = {key: [Server(plans[key][2], out / f"server-{key}-{i}.log", *a) for i, a in enumerate(plans[key][1])]
               for key in sides}
    try:
        for servers in started.values():  # all loaded before any side is measured
            for s in servers:
                s.wait_ready()
        for key in sides:
            rows[key] = side(plans[key][0], started[key], bodies, args)
    finally:
        for servers in started.values():
            for s in servers:
                s.stop()
    if "on" in rows and "single" in rows:  # the same answers either way
        same = sum(a[0]["intent"]["labels"] == b[0]["intent"]["labels"] and a[0]["slots"]["tags"] ==
                   b[1]["slots"]["tags"] for a, b in zip(rows["on"]["answers"], rows["single"]["answers"]) if a and b)
        print(f"multi-task and single-task servers agree on {same} of {len(bodies)} utterances")
    print("\n| side | requests/s | p50 ms | p95 ms | p99 ms | p99/p50 | errors | micro-batches (size: count) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        hist = ", ".join(f"{k}: {v}" for k, v in r["batches"].items())
        print(f"| {r['side']} | {r['per_second']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['p99_ms'] / r['p50_ms']:.2f} | {r['errors']} | {hist} |")
    ratios = []
    if "on" in rows and "off" in rows:
        ratios.append(rows["on"]["per_second"] / rows["off"]["per_second"])
        print(f"\nmicro-batching on / off: {ratios[-1]:.2f}x requests/s (goal >= 3; the model alone gains "
              f"{ceiling:.2f}x from batches of 32)")
    for key in ("onnx", "int8"):
        for base in ("on", "fp32"):
            if key in rows and base in rows:
                print(f"{key} / PyTorch ({'fp32' if base == 'fp32' else 'as trained'}): "
                      f"{rows[key]['per_second'] / rows[base]['per_second']:.2f}x requests/s"
                      + (" (goal for int8 >= 1.5 vs fp32)" if key == "int8" and base == "fp32" else ""))
    if "single" in rows and "on" in rows:
        multi = rows["on"]["per_second"] / rows["single"]["per_second"]
        print(f"one multi-task server / 2 single-task servers: {multi:.2f}x utterances/s with both answers "
              "(goal >= 0.9 * 2 = 1.8)")
        if "workers" in rows:  # the same split of the cores as the single-task servers: one thread per process
            multi = rows["workers"]["per_second"] / rows["single"]["per_second"]
            print(f"one multi-task server with 2 workers / 2 single-task servers (one thread per process on both "
                  f"sides): {multi:.2f}x utterances/s with both answers")
    errors = sum(r["errors"] for r in rows.values())
    print(f"errors in all sides: {errors}")
    (out / "serve_load.json").write_text(json.dumps({k: {x: y for x, y in r.items() if x != "answers"}
                                                     for k, r in rows.items()}, indent=2))
    print(ratio_line(ratios[0] if ratios else statistics.mean([r["per_second"] for r in rows.values()])))


if __name__ == "__main__":
    main()
