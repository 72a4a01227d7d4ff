"""``polytask serve``: the HTTP API (FastAPI) over a micro-batched Predictor.

Endpoints:

- ``POST /predict`` — ``{"texts": ["...", ...]}`` or ``{"inputs": [{column: value, ...}, ...]}``, optional
  ``"tasks": [...]``; answers ``{"predictions": [...]}``, each item what ``polytask predict`` prints for that
  input (the input's fields, then one entry per task);
- ``GET /health`` — 200 ``{"status": "ok"}`` once the model is loaded and warmed up, 503 before (or if loading
  failed, with the reason);
- ``GET /metadata`` — tasks, label sets, encoder, versions, precision, backend, max length, limits;
- ``GET /metrics`` — Prometheus text: requests by endpoint and status, latency, batch sizes, queue depth;
- ``POST /route`` (with ``--rules``) — as ``/predict`` for the rules' tasks, each item with its routing decision.

Errors are JSON ``{"error": {"status": N, "message": "..."}}``: 413 for a body or a request over the limits, 422
for invalid JSON, wrong types, empty texts or unknown tasks, 401 without the bearer token when one is set (compared
with ``hmac.compare_digest``, never logged), 503 while loading or shutting down.
"""


import asyncio
import contextlib
import hmac
import json
import sys
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from polytask.errors import UserError
from polytask.serve.batcher import MicroBatcher


@dataclass
class ServeSettings:
    path: str
    backend: str = "torch"  # torch | onnx (an export folder's int8 graph when it has one) | onnx-fp32
    tasks: list[str] | None = None  # serve only these tasks (default: all)
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_texts: int = 256  # inputs per request
    max_body_bytes: int = 1_000_000
    threads: int | None = None
    token_file: str | None = None  # a file holding the bearer token clients must send
    rules: str | None = None  # a routing rules file: adds POST /route
    precision: str | None = None  # torch backend: auto | fp32 | bf16 instead of the run's train.precision
    ready_wait_s: float = 60.0  # a /predict that arrives while the model loads waits this long before a 503

    def read_token(self) -> str | None:
        """The bearer token of ``token_file`` (whitespace around it ignored); an empty or unreadable file is an
        error, never an open server."""
        if not self.token_file:
            return None
        from pathlib import Path

        path = Path(self.token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--token-file {path}: cannot read it ({e})") from None
        if not token:
            raise UserError(f"--token-file {path} is empty: put the bearer token clients must send in it")
        return token

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> "ServeSettings":
        return cls(**json.loads(text))


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def load_predictor(settings: ServeSettings):
    """The Predictor the settings name (torch checkpoint or ONNX export), restricted to ``settings.tasks``."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.backend == "torch":
        from polytask.predict import Predictor

        predictor = Predictor(settings.path, device="cpu" if not torch.cuda.is_available() else None)
        predictor.backend = "torch"
        if settings.precision:
            predictor.config.train.precision = settings.precision
    elif settings.backend in ("onnx", "onnx-fp32"):
        from polytask.export.onnx import load_onnx

        predictor = load_onnx(settings.path, settings.threads, int8=False if settings.backend == "onnx-fp32" else None)
    else:
        raise UserError(f"--backend {settings.backend}: choose torch, onnx or onnx-fp32")
    if settings.tasks:
        predictor._select(settings.tasks)  # unknown names are an error now, not at the first request
        predictor.tasks = {t: predictor.tasks[t] for t in settings.tasks}
    if settings.rules:
        from polytask.recipes import RoutingRules

        predictor.rules = RoutingRules.load(settings.rules, predictor)
    return predictor


def _precision(predictor) -> str:
    if getattr(predictor, "backend", "torch") == "onnx-int8":
        return "int8 (dynamic quantisation)"
    if getattr(predictor, "backend", "torch") == "onnx":
        return "fp32"
    from polytask.precision import runtime_precision

    return runtime_precision(predictor.config.train.precision, predictor.device)


class Metrics:
    """Prometheus metrics of one server process (its own registry, so several apps never collide)."""

    def __init__(self, max_batch: int):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("polytask_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("polytask_request_latency_seconds", "POST /predict latency, from the request "
                                 "received to the answer sent", registry=self.registry,
                                 buckets=(.002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10))
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch})
        self.batch = Histogram("polytask_batch_size", "inputs per encoder pass", registry=self.registry,
                               buckets=buckets)
        self.batch_seconds = Histogram("polytask_batch_seconds", "time of one micro-batch", registry=self.registry,
                                       buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
        self.inputs = Counter("polytask_inputs", "inputs predicted", registry=self.registry)
        self.errors = Counter("polytask_errors", "requests answered with an error", ["status"], registry=self.registry)
        self.queue = Gauge("polytask_queue_depth", "requests waiting for the inference thread", registry=self.registry)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch.observe(size)
        self.batch_seconds.observe(seconds)
        self.inputs.inc(size)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class State:
    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.status = "loading"
        self.error: str | None = None
        self.predictor = None
        self.batcher: MicroBatcher | None = None
        self.metrics = Metrics(settings.max_batch)
        self.loaded: asyncio.Event | None = None  # set (from the loading thread) once loading ends, either way
        self.on_loaded: Callable[[], Any] | None = None

    def load(self, loader: Callable[[ServeSettings], Any]) -> None:
        try:
            predictor = loader(self.settings)
            warm = [self._warm_input(predictor)]
            for _ in range(2):  # the first passes allocate and pick kernels
                predictor.predict(warm)
            self.predictor = predictor
            self.batcher = MicroBatcher(predictor, self.settings.max_batch, self.settings.max_wait_ms,
                                        on_batch=self.metrics.on_batch).start()
            self.status = "ok"
        except Exception as e:  # noqa: BLE001 - reported by /health and on stderr
            self.status, self.error = "failed", str(e) or type(e).__name__
            print(f"polytask serve: error: loading {self.settings.path} failed: {self.error}", file=sys.stderr,
                  flush=True)
        finally:
            if self.on_loaded is not None:
                with contextlib.suppress(RuntimeError):  # the app stopped before the model finished loading
                    self.on_loaded()

    @staticmethod
    def _warm_input(predictor) -> dict[str, Any]:
        record: dict[str, Any] = {"text": "warm up"}
        for task in predictor.tasks.values():
            for column in (task.input_column, task.cfg.text_pair):
                if column and column not in record:
                    record[column] = "warm up"
        return record


def _records(body: Any, predictor, max_texts: int, default_tasks: list[str] | None = None
             ) -> tuple[list[dict[str, Any]], list[str] | None, list[str]]:
    """The request's inputs as records, its task subset and each input's name in messages (``texts[3]``), or an
    ApiError that says what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(422, 'the body must be a JSON object: {"texts": [...]} or {"inputs": [{...}, ...]}')
    unknown = sorted(set(body) - {"texts", "inputs", "tasks"})
    if unknown:
        raise ApiError(422, f"unknown field(s) {', '.join(unknown)}: expected texts or inputs, and optionally tasks")
    if ("texts" in body) == ("inputs" in body):
        raise ApiError(422, 'give exactly one of "texts" (a list of strings) or "inputs" (a list of objects)')
    key = "texts" if "texts" in body else "inputs"
    items = body[key]
    if not isinstance(items, list):
        raise ApiError(422, f'"{key}" must be a list, got {type(items).__name__}')
    if not items:
        raise ApiError(422, f'"{key}" is empty')
    if len(items) > max_texts:
        raise ApiError(413, f'"{key}" holds {len(items)} inputs; the limit is {max_texts} per request')
    if key == "texts":
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise ApiError(422, f"texts[{i}] must be a string, got {type(t).__name__}")
        records = [{"text": t} for t in items]
    else:
        for i, r in enumerate(items):
            if not isinstance(r, dict):
                raise ApiError(422, f"inputs[{i}] must be an object, got {type(r).__name__}")
        records = [dict(r) for r in items]
    tasks = body.get("tasks")
    if tasks is not None:
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks) or not tasks:
            raise ApiError(422, '"tasks" must be a non-empty list of task names')
        missing = [t for t in tasks if t not in predictor.tasks]
        if missing:
            raise ApiError(422, f"unknown task(s) {', '.join(missing)}; this server answers: "
                                f"{', '.join(predictor.tasks)}")
        tasks = list(dict.fromkeys(tasks))
    names = tasks or default_tasks or list(predictor.tasks)
    where = [f"{key}[{i}]" for i in range(len(records))]
    for rec, w in zip(records, where):  # the Predictor's own reading: empty texts, wrong types, missing columns
        for name in names:
            task = predictor.tasks[name]
            try:
                task.read(predictor._view(rec, task), w, labelled=False)
            except UserError as e:
                raise ApiError(422, f"task '{name}': {e}") from None
    return records, tasks, where


def create_app(settings: ServeSettings, loader: Callable[[ServeSettings], Any] = load_predictor):
    """The FastAPI app. The model loads on a background thread when the app starts (``/health`` says when it is
    ready); the inference thread drains every queued request when the app stops."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from polytask.version import __version__

    state = State(settings)
    token = settings.read_token()

    @asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        state.loaded = asyncio.Event()
        state.on_loaded = lambda: loop.call_soon_threadsafe(state.loaded.set)
        threading.Thread(target=state.load, args=(loader,), name="polytask-load", daemon=True).start()
        yield
        state.status = "stopping"
        if state.batcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, state.batcher.stop)

    app = FastAPI(title="polytask", version=__version__, lifespan=lifespan,
                  summary="One encoder pass answers every task of a multi-task model.")
    app.state.polytask = state

    def error(status: int, message: str, endpoint: str) -> JSONResponse:
        state.metrics.requests.labels(endpoint, str(status)).inc()
        state.metrics.errors.labels(str(status)).inc()
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)

    def authorised(request: Request) -> bool:
        if not token:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, given_token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given_token.strip().encode(), token.encode())

    def endpoint_of(request: Request) -> str:
        """The route's path for metrics labels; any unknown URL is one label, so no client can grow the series."""
        route = request.scope.get("route")
        return getattr(route, "path", "unmatched")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), endpoint_of(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error(422, str(exc.errors()[:3]), endpoint_of(request))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a JSON 500, never a dead worker
        return error(500, f"internal error: {type(exc).__name__}", endpoint_of(request))

    @app.get("/health")
    async def health():
        if state.status == "ok" and not state.batcher.alive:  # should never happen; then say so
            state.status, state.error = "failed", "the inference thread stopped"
        body: dict[str, Any] = {"status": state.status}
        if state.error:
            body["error"] = state.error
        code = 200 if state.status == "ok" else 503
        state.metrics.requests.labels("/health", str(code)).inc()
        return JSONResponse(body, status_code=code)

    @app.get("/metadata")
    async def metadata(request: Request):
        if not authorised(request):
            return error(401, "missing or wrong bearer token (Authorization: Bearer ...)", "/metadata")
        if state.status != "ok":
            return error(503, f"not ready: {state.status}", "/metadata")
        p = state.predictor
        import torch
        import transformers

        body = {
            "polytask_version": __version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "model": str(p.path), "backend": p.backend, "encoder": p.config.model.encoder,
            "precision": _precision(p), "max_length": p.config.model.max_length,
            "tasks": {name: {"type": t.type_name, "level": t.level, "main_metric": t.main_metric,
                             "text": t.cfg.text, "text_pair": t.cfg.text_pair, "labels": list(t.labels)}
                      for name, t in p.tasks.items()},
            "limits": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                       "max_texts": settings.max_texts, "max_body_bytes": settings.max_body_bytes},
        }
        state.metrics.requests.labels("/metadata", "200").inc()
        return JSONResponse(body)

    @app.get("/metrics")
    async def metrics(request: Request):
        if not authorised(request):
            return error(401, "missing or wrong bearer token (Authorization: Bearer ...)", "/metrics")
        state.metrics.queue.set(state.batcher.pending if state.batcher else 0)
        state.metrics.requests.labels("/metrics", "200").inc()
        return Response(state.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def answer(request: Request, endpoint: str, routed: bool,
                     only: Callable[[Any], list[str]] | None = None):
        start = time.perf_counter()
        if not authorised(request):
            return error(401, "missing or wrong bearer token (Authorization: Bearer ...)", endpoint)
        if state.status == "loading" and settings.ready_wait_s > 0:  # e.g. one of several workers still loading
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.loaded.wait(), settings.ready_wait_s)
        if state.status != "ok":
            return error(503, f"not ready: {state.status}" + (f" ({state.error})" if state.error else ""),
                         endpoint)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return error(413, f"the body is {declared} bytes; the limit is {settings.max_body_bytes}", endpoint)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > settings.max_body_bytes:
                return error(413, f"the body is over the limit of {settings.max_body_bytes} bytes", endpoint)
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except UnicodeDecodeError as e:
            return error(422, f"the body is not UTF-8 ({e.reason} at byte {e.start})", endpoint)
        except json.JSONDecodeError as e:
            return error(422, f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}", endpoint)
        except (ValueError, RecursionError) as e:  # NaN/Infinity, a huge integer, absurd nesting
            return error(422, f"invalid JSON: {str(e)[:200]}", endpoint)
        rules = getattr(state.predictor, "rules", None) if routed else None
        fixed = rules.tasks_needed() if rules else only(state.predictor) if only else None  # /route, /search
        try:
            if fixed == []:
                raise ApiError(404, f"this model has no retrieval task; {endpoint} answers retrieval tasks only")
            if fixed is not None and isinstance(body, dict) and "tasks" in body:
                raise ApiError(422, f"{endpoint} answers {', '.join(fixed)}; leave out \"tasks\"")
            records, tasks, where = _records(body, state.predictor, settings.max_texts, fixed)
            future = state.batcher.submit(records, fixed or tasks, where)
        except ApiError as e:
            return error(e.status, e.message, endpoint)
        except RuntimeError as e:  # shutting down
            return error(503, str(e), endpoint)
        try:
            preds = await asyncio.wrap_future(future)
        except UserError as e:
            return error(422, str(e), endpoint)
        if rules:
            preds = [{**p, "route": rules.decide(p)} for p in preds]
        out = [{**rec, **p} for rec, p in zip(records, preds)]
        state.metrics.requests.labels(endpoint, "200").inc()
        state.metrics.latency.observe(time.perf_counter() - start)
        return JSONResponse({"predictions": out})

    @app.post("/predict")
    async def predict(request: Request):
        return await answer(request, "/predict", routed=False)

    if settings.rules:
        @app.post("/route")
        async def route(request: Request):
            """Predictions of the rules' tasks plus each message's routing decision (``"route"``)."""
            return await answer(request, "/route", routed=True)

    @app.post("/search")
    async def search(request: Request):
        """The retrieval tasks' answers only: each input's best documents of the task's corpus, with scores."""
        return await answer(request, "/search", routed=False,
                            only=lambda p: [n for n, t in p.tasks.items() if t.type_name == "retrieval"])

    return app


def app_from_env():
    """The app of ``POLYTASK_SERVE`` (JSON settings): what each uvicorn worker process builds for ``--workers``."""
    import os

    return create_app(ServeSettings.from_env(os.environ["POLYTASK_SERVE"]))
