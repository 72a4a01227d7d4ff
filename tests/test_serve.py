"""polytask serve: every endpoint, every error code with its message, token auth, micro-batching that hands each
caller its own answers (equal to predict's), isolation of a bad request, draining on shutdown, the onnx backend,
and the CLI's early refusals."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import polytask
from polytask.cli import main
from polytask.errors import UserError
from polytask.serve import MicroBatcher, ServeSettings, create_app
from tests.conftest import toy_run

RECORD = {"text": "show me flights from boston to denver good", "words": ["show", "me", "boston", "good"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_encoder) -> Path:
    return toy_run(tmp_path_factory.mktemp("serve"), tiny_encoder, kinds=("classification", "multilabel", "token"))


def ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, client.get("/health").json()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(run):
    with TestClient(create_app(ServeSettings(path=str(run), max_texts=8, max_body_bytes=4000))) as c:
        ready(c)
        yield c


def texts(n: int, offset: int = 0) -> list[str]:
    cities = ["boston", "denver", "dallas", "miami", "seattle", "chicago"]
    return [f"show me {cities[(i + offset) % 6]} flights {'good' if i % 3 else 'bad'} {'now ' * (i % 4)}".strip()
            for i in range(n)]


def test_predict_answers_like_predict_and_metadata_and_metrics_describe_the_server(client, run):
    want = polytask.load(run).predict([RECORD])
    r = client.post("/predict", json={"inputs": [RECORD]})
    assert r.status_code == 200
    got = r.json()["predictions"]
    assert got[0]["text"] == RECORD["text"] and got[0]["words"] == RECORD["words"]  # the input, then the answers
    for task in ("classification", "multilabel", "token"):
        assert set(got[0][task]) == set(want[0][task]), task
    assert got[0]["classification"]["label"] == want[0]["classification"]["label"]
    assert got[0]["token"]["tags"] == want[0]["token"]["tags"] and got[0]["token"]["spans"] == want[0]["token"]["spans"]
    subset = client.post("/predict", json={"texts": ["cheap miami now bad"], "tasks": ["multilabel"]}).json()
    assert set(subset["predictions"][0]) == {"text", "multilabel"}
    meta = client.get("/metadata").json()
    assert meta["backend"] == "torch" and meta["precision"] == "fp32" and meta["max_length"] == 32
    assert set(meta["tasks"]) == {"classification", "multilabel", "token"}
    assert meta["tasks"]["classification"]["labels"] == ["neg", "pos"]
    assert meta["limits"]["max_texts"] == 8
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("polytask_requests_total", "polytask_request_latency_seconds_bucket", "polytask_batch_size_bucket",
                 "polytask_queue_depth", "polytask_errors_total"):
        assert name in metrics.text, name
    assert 'polytask_requests_total{endpoint="/predict",status="200"}' in metrics.text


@pytest.mark.parametrize("body, status, message", [
    (b'{"texts": ["a",', 422, "invalid JSON"),
    (b"\xff\xfe", 422, "not UTF-8"),
    (b'["a"]', 422, "must be a JSON object"),
    (b'{"texts": "a"}', 422, '"texts" must be a list'),
    (b'{"texts": []}', 422, '"texts" is empty'),
    (b'{"texts": ["ok", 3]}', 422, "texts[1] must be a string, got int"),
    (b'{"texts": ["ok", "  "]}', 422, "texts[1]: empty text"),
    (b'{"inputs": ["a"]}', 422, "inputs[0] must be an object"),
    (b'{"inputs": [{"title": "a"}]}', 422, "missing column 'text'"),
    (b'{"texts": ["a"], "inputs": [{"text": "a"}]}', 422, "exactly one of"),
    (b'{"texts": ["a"], "lang": "en"}', 422, "unknown field(s) lang"),
    (b'{"texts": ["a"], "tasks": ["nope"]}', 422, "unknown task(s) nope; this server answers"),
    (b'{"texts": ["a"], "tasks": "token"}', 422, '"tasks" must be a non-empty list'),
    (b'{"texts": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}', 413, "limit is 8 per request"),
    (b'{"texts": ["' + b"a" * 5000 + b'"]}', 413, "the limit is 4000"),
    (b'{"inputs": [{"text": "a", "x": NaN}]}', 422, "NaN is not a number JSON allows"),
    (b'{"texts": ' + b"[" * 1900 + b"]" * 1900 + b"}", 422, "invalid JSON"),
])
def test_every_bad_request_gets_its_code_and_a_message(client, body, status, message):
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert message in r.json()["error"]["message"] and r.json()["error"]["status"] == status
    assert client.post("/predict", json={"texts": ["still fine"]}).status_code == 200  # the worker lives on


def test_precision_can_be_set_for_serving(run):
    with TestClient(create_app(ServeSettings(path=str(run), precision="bf16"))) as c:
        ready(c)
        assert c.get("/metadata").json()["precision"] == "bf16"
        assert c.post("/predict", json={"texts": ["show me boston good"]}).status_code == 200


def test_unknown_routes_and_methods_answer_json(client):
    for i in range(3):
        assert client.get(f"/nope-{i}").json()["error"]["status"] == 404
    assert client.get("/predict").status_code == 405 and "error" in client.get("/predict").json()
    metrics = client.get("/metrics").text  # unknown URLs share one label: no client can grow the series
    assert 'endpoint="unmatched",status="404"} 3.0' in metrics and "nope" not in metrics


def test_health_waits_for_the_model_and_reports_a_failed_load(run, tmp_path):
    gate = threading.Event()

    def slow(settings):
        gate.wait(30)
        from polytask.serve.app import load_predictor

        return load_predictor(settings)

    with TestClient(create_app(ServeSettings(path=str(run), ready_wait_s=0), loader=slow)) as c:
        assert c.get("/health").status_code == 503 and c.get("/health").json()["status"] == "loading"
        r = c.post("/predict", json={"texts": ["a"]})
        assert r.status_code == 503 and "not ready" in r.json()["error"]["message"]
        gate.set()
        ready(c)
        assert c.get("/health").json() == {"status": "ok"}
    gate.clear()
    with TestClient(create_app(ServeSettings(path=str(run), ready_wait_s=30), loader=slow)) as c:
        threading.Timer(0.3, gate.set).start()
        r = c.post("/predict", json={"texts": ["a"]})  # waits for the model rather than failing
        assert r.status_code == 200 and r.json()["predictions"][0]["text"] == "a"

    def broken(settings):
        raise UserError("weights damaged")

    with TestClient(create_app(ServeSettings(path=str(run)), loader=broken)) as c:
        deadline = time.monotonic() + 10
        while c.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/health").status_code == 503
        assert c.get("/health").json() == {"status": "failed", "error": "weights damaged"}


def test_a_bearer_token_guards_everything_but_health(run, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with TestClient(create_app(ServeSettings(path=str(run), token_file=str(token)))) as c:
        ready(c)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
            r = c.post("/predict", json={"texts": ["a"]}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in r.json()["error"]["message"] and "s3cret" not in r.text
            assert c.get("/metadata", headers=headers).status_code == 401
            assert c.get("/metrics", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert c.post("/predict", json={"texts": ["a"]}, headers=good).status_code == 200
        assert c.get("/metadata", headers=good).status_code == 200
        assert c.get("/metrics", headers=good).status_code == 200


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_answers(run):
    """A real server on a loopback port, 24 callers at once: every answer belongs to its request and equals
    predict's for that text alone."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here and handed over: no other process can take the port in between
    port = sock.getsockname()[1]
    app = create_app(ServeSettings(path=str(run), max_batch=16, max_wait_ms=50))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        batch = texts(24)
        want = polytask.load(run).predict(batch)
        start = threading.Barrier(24)

        def call(i: int) -> dict:
            start.wait()
            body = {"texts": [batch[i]]} if i % 2 else {"inputs": [{"text": batch[i]}], "tasks": ["token"]}
            r = httpx.post(url + "/predict", json=body, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["predictions"][0]

        with ThreadPoolExecutor(24) as pool:
            got = list(pool.map(call, range(24)))
        for i, (g, w) in enumerate(zip(got, want)):
            assert g["text"] == batch[i]
            assert g["token"]["tags"] == w["token"]["tags"], i
            if i % 2:
                assert g["classification"]["label"] == w["classification"]["label"], i
                assert g["classification"]["score"] == pytest.approx(w["classification"]["score"], abs=1e-4)
            else:
                assert set(g) == {"text", "token"}
        metrics = httpx.get(url + "/metrics").text
        total = float(next(line.split()[-1] for line in metrics.splitlines()
                           if line.startswith("polytask_batch_size_sum")))
        assert total == 24  # every input went through the inference thread once
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


class FakePredictor:
    """Records each batch it is given; fails a batch holding the text 'boom'. Its tasks: x and y."""

    TASKS = ("x", "y")

    def __init__(self, delay: float = 0.0):
        self.calls: list[list[str]] = []
        self.delay = delay

    def predict(self, records, tasks=None, batch_size=32, where=None):
        self.calls.append([r["text"] for r in records])
        time.sleep(self.delay)
        if any(r["text"] == "boom" for r in records):
            raise UserError(f"{where[0]}: boom is not a text")
        return [{"echo": r["text"], "tasks": tasks, **{t: t for t in (tasks or self.TASKS)}} for r in records]


def test_a_bad_request_fails_alone_and_tasks_subsets_are_kept_apart():
    fake = FakePredictor()
    batcher = MicroBatcher(fake, max_batch=8, max_wait_ms=200)
    futures = [batcher.submit([{"text": t}], tasks) for t, tasks in
               (("a", None), ("boom", None), ("b", None), ("c", ["x"]))]
    batcher.start()
    assert futures[0].result(10) == [{"echo": "a", "tasks": None, "x": "x", "y": "y"}]
    assert futures[2].result(10) == [{"echo": "b", "tasks": None, "x": "x", "y": "y"}]
    assert futures[3].result(10) == [{"echo": "c", "tasks": ["x"], "x": "x"}]  # its own subset's pass
    with pytest.raises(UserError, match="boom"):
        futures[1].result(10)
    batcher.stop()
    assert sorted(fake.calls[0]) == ["a", "b", "boom", "c"]  # one pass for the batch first ...
    assert sorted(fake.calls[1]) == ["a", "b", "boom"]  # ... then per task subset, then one by one


def test_requests_waiting_during_a_pass_share_the_next_one_and_each_keeps_its_tasks():
    fake = FakePredictor(delay=0.3)
    batcher = MicroBatcher(fake, max_batch=8, max_wait_ms=0).start()
    first = batcher.submit([{"text": "first"}])
    time.sleep(0.1)  # the first pass is running; these four queue up meanwhile
    rest = [batcher.submit([{"text": f"t{i}"}], ["x"] if i % 2 else None) for i in range(4)]
    assert first.result(10)[0]["echo"] == "first"
    answers = [f.result(10)[0] for f in rest]
    batcher.stop()
    assert [len(c) for c in fake.calls] == [1, 4]  # one pass for all four, though they asked for different tasks
    assert [a["echo"] for a in answers[::2]] == ["t0", "t2"]  # all tasks asked: the whole answer
    assert answers[1] == answers[3] == {"x": "x"}  # only task x asked: only x, from the shared pass


def test_a_cancelled_request_is_skipped_and_the_thread_lives_on():
    fake = FakePredictor(delay=0.2)
    batcher = MicroBatcher(fake, max_batch=1, max_wait_ms=0).start()
    busy = batcher.submit([{"text": "busy"}])
    time.sleep(0.05)
    gone = batcher.submit([{"text": "gone"}])
    assert gone.cancel()  # the caller gave up before its turn
    after = batcher.submit([{"text": "after"}])
    assert busy.result(10)[0]["echo"] == "busy" and after.result(10)[0]["echo"] == "after"
    assert batcher.alive and "gone" not in [t for c in fake.calls for t in c]
    batcher.stop()


def test_max_batch_caps_a_pass_and_stop_drains_every_queued_request():
    fake = FakePredictor(delay=0.05)
    batcher = MicroBatcher(fake, max_batch=3, max_wait_ms=100)
    futures = [batcher.submit([{"text": str(i)}]) for i in range(7)]
    batcher.start()
    batcher.stop()  # asked to stop at once: still answers all seven
    assert [f.result(0)[0]["echo"] for f in futures] == [str(i) for i in range(7)]
    assert max(len(c) for c in fake.calls) <= 3 and sum(len(c) for c in fake.calls) == 7
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit([{"text": "late"}])


def test_the_onnx_backend_serves_the_same_answers(exported):
    run, out = exported
    inputs = [{"text": t, "text2": "boston", "words": t.split()} for t in texts(3)]
    with TestClient(create_app(ServeSettings(path=str(out), backend="onnx-fp32"))) as c:
        ready(c)
        assert c.get("/metadata").json()["backend"] == "onnx"
        got = c.post("/predict", json={"inputs": inputs}).json()["predictions"]
    want = polytask.load(run).predict(inputs)
    for g, w in zip(got, want):
        assert g["token"]["tags"] == w["token"]["tags"] and g["multilabel"]["labels"] == w["multilabel"]["labels"]
        assert g["classification"]["label"] == w["classification"]["label"]


@pytest.mark.parametrize("args, message", [
    (["--tasks", "nope"], "unknown task(s) nope"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--max-batch", "0"], "--max-batch must be at least 1"),
    (["--token-file", "EMPTY"], "is empty"),
    (["--backend", "onnx"], "is not an ONNX export"),
])
def test_serve_refuses_bad_arguments_before_starting(run, tmp_path, capsys, args, message):
    (tmp_path / "EMPTY").write_text("  \n")
    args = [str(tmp_path / "EMPTY") if a == "EMPTY" else a for a in args]
    assert main(["serve", str(run), *args]) == 2
    assert message in capsys.readouterr().err


def test_serve_refuses_a_missing_run(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "none")]) == 2
    assert "no such run" in capsys.readouterr().err


def test_sigterm_finishes_the_requests_in_flight(run):
    """`polytask serve` in its own process: requests waiting in a micro-batch when SIGTERM arrives still get
    their answers, then the server exits cleanly."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "polytask.cli", "serve", str(run), "--port", str(port),
                             "--max-wait-ms", "400", "--threads", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with ThreadPoolExecutor(6) as pool:
            calls = [pool.submit(httpx.post, url + "/predict", json={"texts": [t]}, timeout=60) for t in texts(6)]
            time.sleep(0.15)  # the requests sit in the micro-batch window now
            proc.send_signal(signal.SIGTERM)
            statuses = [c.result().status_code for c in calls]
        assert statuses == [200] * 6
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        log = proc.stdout.read()
        assert "Application shutdown complete" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()


def test_search_answers_the_retrieval_tasks_like_predict(tmp_path_factory, tiny_encoder, client):
    run = toy_run(tmp_path_factory.mktemp("search"), tiny_encoder, kinds=("classification", "retrieval"))
    want = polytask.load(run).predict(["flights to denver good"])
    with TestClient(create_app(ServeSettings(path=str(run)))) as c:
        ready(c)
        r = c.post("/search", json={"texts": ["flights to denver good"]})
        assert r.status_code == 200
        got = r.json()["predictions"][0]
        assert set(got) == {"text", "retrieval"}  # the retrieval task only
        assert [d["id"] for d in got["retrieval"]["documents"]] == [d["id"] for d in want[0]["retrieval"]["documents"]]
        assert c.post("/search", json={"texts": ["x"], "tasks": ["classification"]}).status_code == 422
    missing = client.post("/search", json={"texts": ["show me boston"]})  # a model without a retrieval task
    assert missing.status_code == 404 and "no retrieval task" in missing.json()["error"]["message"]
