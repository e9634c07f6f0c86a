"""``layerdrop serve``: load the model and its depths, build the app, time every depth and serve
under uvicorn until interrupted.

The model and its views are :func:`layerdrop.serving.served.load_served`, the app
:func:`layerdrop.serving.http.app.create_app`. See docs/serving.md.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from layerdrop.config.recipes import ServeConfig
from layerdrop.errors import InputError
from layerdrop.serving.http.app import create_app
from layerdrop.serving.served import Served, load_served
from layerdrop.serving.worker import Worker

__all__ = ["build_server", "exits_line", "run", "run_server"]


def run(cfg: ServeConfig, log: Callable[[str], None] = lambda _: None) -> None:
    """Serve ``cfg.model`` until interrupted, reporting progress through ``log``."""
    with socket.socket() as probe:  # before loading anything: a port in use is a one-line error
        try:
            probe.bind((cfg.host, cfg.port))
        except OSError as err:
            raise InputError(f"cannot listen on {cfg.host}:{cfg.port} ({err.strerror}): choose another --port "
                             "or stop what uses it") from None
    served = load_served(cfg)
    app = create_app(served, cfg)
    log(f"{served.name}: {served.task} at depths {', '.join(map(str, served.views))}; "
        f"listening on http://{cfg.host}:{cfg.port}, timing each depth")
    if served.exits is not None:
        log(exits_line(served))
    run_server(app, cfg, on_ready=lambda: log("ready: every depth is timed"))


def build_server(app: FastAPI, cfg: ServeConfig, on_ready: Any = None) -> Any:
    """A uvicorn server for ``app`` on ``cfg.host:cfg.port``, watched by a thread that calls ``on_ready()``
    once every depth is profiled, stops the server if profiling fails, and, as soon as a shutdown begins,
    cancels what the worker runs and fails what waits, so open streams end with an error event and
    ``[DONE]`` instead of holding the shutdown."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                           timeout_graceful_shutdown=30))
    worker: Worker = app.state.worker

    def watch() -> None:
        while not worker.ready.wait(0.1):
            if worker.startup_error is not None:
                server.should_exit = True
                return
            if server.should_exit:
                break
        if worker.ready.is_set() and on_ready is not None:
            on_ready()
        while not server.should_exit:
            time.sleep(0.05)
        worker.stop()
    threading.Thread(target=watch, name="layerdrop-shutdown", daemon=True).start()
    return server


def run_server(app: FastAPI, cfg: ServeConfig, on_ready: Any = None) -> None:
    """Serve ``app`` until interrupted (:func:`build_server`); a failed start-up profile is raised here."""
    try:
        build_server(app, cfg, on_ready).run()
    except KeyboardInterrupt:  # uvicorn re-raises the signal it handled: the shutdown is done
        pass
    worker: Worker = app.state.worker
    if worker.startup_error is not None:
        raise RuntimeError(f"measuring each depth's latency failed: {worker.startup_error}") from worker.startup_error


def exits_line(served: Served) -> str:
    """What ``"depth": "auto"`` will run, or why it cannot, for the start-up log."""
    exits = served.exits
    assert exits is not None  # called for a model that records exits
    if served.exits_error is not None:
        return f'"depth": "auto" is off: {served.exits_error}'
    drops = ", ".join(f"{d:g}" for d, _ in exits.thresholds)
    return (f'"depth": "auto": {exits.rule} exits at {", ".join(map(str, exits.depths))}, calibrated on {exits.data} '
            f"for drops of {drops} points (default {exits.max_drop:g}) at {exits.confidence:g} confidence")
