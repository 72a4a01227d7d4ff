"""``polytask serve``: an HTTP endpoint (FastAPI + uvicorn) where one micro-batched encoder pass answers every
task. See ``polytask.serve.app`` for the API."""

from __future__ import annotations

from polytask.serve.app import ServeSettings, create_app, load_predictor
from polytask.serve.batcher import MicroBatcher

__all__ = ["MicroBatcher", "ServeSettings", "create_app", "load_predictor", "serve"]


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          access_log: bool = False, graceful_seconds: float = 30.0) -> None:
    """Run the server until SIGINT/SIGTERM; in-flight requests are finished first (up to ``graceful_seconds``).
    ``workers`` > 1: that many processes, each with its own model and inference thread, behind one port."""
    import os

    import uvicorn

    settings.read_token()  # a bad token file stops here, before any worker starts
    common = dict(host=host, port=port, log_level="info", access_log=access_log,
                  timeout_graceful_shutdown=graceful_seconds)
    if workers <= 1:
        uvicorn.Server(uvicorn.Config(create_app(settings), **common)).run()
        return
    os.environ["POLYTASK_SERVE"] = settings.to_env()
    # a worker imports torch and the model before it answers the supervisor's health check: give it time
    uvicorn.run("polytask.serve.app:app_from_env", factory=True, workers=workers, timeout_worker_healthcheck=120,
                **common)
