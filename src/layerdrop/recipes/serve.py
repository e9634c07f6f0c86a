"""``layerdrop serve``: load the model and its depths, build the app, time every depth and serve
under uvicorn until interrupted; or, with ``--replicas N``, the same app as N Ray Serve replicas.

The model and its views are :func:`layerdrop.serving.served.load_served`, the app
:func:`layerdrop.serving.http.app.create_app`, the replicas :mod:`layerdrop.serving.http.replicas`.
See docs/serving.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from layerdrop.config.recipes import ServeConfig
from layerdrop.errors import InputError
from layerdrop.serving.http.app import create_app
from layerdrop.serving.served import Served, load_served
from layerdrop.serving.worker import Worker

__all__ = ["build_server", "exits_line", "run", "run_replicas", "run_server"]


def run(cfg: ServeConfig, log: Callable[[str], None] = lambda _: None) -> None:
    """Serve ``cfg.model`` until interrupted, reporting progress through ``log``."""
    with socket.socket() as probe:  # before loading anything: a port in use is a one-line error
        try:
            probe.bind((cfg.host, cfg.port))
        except OSError as err:
            raise InputError(f"cannot listen on {cfg.host}:{cfg.port} ({err.strerror}): choose another --port "
                             "or stop what uses it") from None
    if cfg.replicas:
        run_replicas(cfg, log)
        return
    served = load_served(cfg)
    app = create_app(served, cfg)
    log(f"{served.name}: {served.task} at depths {', '.join(map(str, served.views))}; "
        f"listening on http://{cfg.host}:{cfg.port}, timing each depth")
    if served.exits is not None:
        log(exits_line(served))
    run_server(app, cfg, on_ready=lambda: log("ready: every depth is timed"))


def run_replicas(cfg: ServeConfig, log: Callable[[str], None] = lambda _: None,
                 stop: threading.Event | None = None) -> None:
    """Serve ``cfg.model`` on ``cfg.replicas`` Ray Serve replicas until interrupted, terminated or ``stop`` is
    set: on a local Ray instance started here and stopped on the way out, or on the cluster ``RAY_ADDRESS``
    names (where only this application is taken down). The model and options are checked here first, so a
    bad one is the same one-line error as without replicas."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise InputError("--replicas needs Ray Serve: pip install 'layerdrop[ray]'") from None
    from layerdrop.serving.http.replica_lost import PROXY_CALLBACK
    from layerdrop.serving.http.replicas import application, cpus_per_replica

    load_served(cfg)  # and dropped: each replica loads its own; an error here is one line, there one per retry

    def absolute(path: str) -> str:  # as a worker in another folder or on another machine must see it
        return str(Path(path).resolve()) if path and Path(path).exists() else path

    cfg = dataclasses.replace(cfg, model=absolute(cfg.model), data=absolute(cfg.data), sweep=absolute(cfg.sweep))
    stop = stop or threading.Event()
    address = os.environ.get("RAY_ADDRESS") or "local"
    # the proxy Ray starts reads its middlewares from this variable
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": PROXY_CALLBACK}})
    on_main_thread = threading.current_thread() is threading.main_thread()
    # after ray.init, which sets its own handler: a SIGTERM stops the server as Ctrl-C does, even while starting
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler) if on_main_thread else None
    try:
        cfg = dataclasses.replace(cfg, threads=cpus_per_replica(cfg, ray.cluster_resources().get("CPU", 0.0)))
        serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config={"log_level": "WARNING"})
        log(f"{cfg.model}: {cfg.replicas} Ray Serve replicas of {cfg.threads} cores each; listening on "
            f"http://{cfg.host}:{cfg.port} once each has loaded the model and timed each depth")
        try:
            serve.run(application(cfg), name="layerdrop", route_prefix="/")
        except RuntimeError as err:  # Ray's message holds each failed replica's whole traceback
            last = [line for line in str(err).splitlines() if line.strip()][-1:] or [type(err).__name__]
            raise RuntimeError(f"a replica failed to start: {last[0].strip()} (Ray's logs: "
                               "/tmp/ray/session_latest/logs/serve)") from None
        log("ready: every replica has timed every depth")
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        try:
            if address == "local":
                serve.shutdown()
            elif serve.status().applications.get("layerdrop") is not None:  # a cluster of the user's
                serve.delete("layerdrop")
        finally:
            ray.shutdown()
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)


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
