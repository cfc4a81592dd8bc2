"""The `boostream` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Optional, Sequence

from boostream import __version__
from boostream.config import Settings, env_name, from_environment

_SERVE_OPTIONS = {
    "host": "address to listen on",
    "port": "port to listen on",
    "data_dir": "where jobs, their events and artifacts are kept",
    "cpu_jobs": "LightGBM jobs that train at once",
    "gpu_jobs": "WarpGBM jobs that train at once",
    "threads_per_job": "LightGBM threads per job (0: cores / cpu-jobs)",
    "max_queued": "jobs that may wait per device before new ones get 429",
    "max_training_s": "longest a job may train, in seconds",
    "job_ttl_s": "seconds a finished job and its artifact are kept",
    "webhook_hosts": "hosts callback_url may name, comma-separated (host or host:port; * for any)",
    "model_cache_bytes": "memory for models kept loaded for /predict (by their native size)",
    "max_body_bytes": "largest request body accepted",
    "max_cells": "largest table accepted, in rows x features",
    "heartbeat_s": "seconds between heartbeat comments on an idle stream",
    "log_level": "debug, info, warning or error",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="boostream", description="Streaming training service for gradient-boosted trees.")
    parser.add_argument("--version", action="version", version=f"boostream {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    defaults = Settings()
    types = {field.name: field.type for field in dataclasses.fields(Settings)}
    for name, help_text in _SERVE_OPTIONS.items():
        kind = {"int": int, "float": float}.get(str(types[name]), str)
        serve.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{help_text} (env {env_name(name)}; default {getattr(defaults, name)})",
        )
    args = parser.parse_args(argv)
    return _serve(from_environment(**{name: getattr(args, name) for name in _SERVE_OPTIONS}))


def _serve(settings: Settings) -> int:
    import uvicorn

    from boostream.streaming_server.app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("boostream").info("data directory: %s", settings.data_dir)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=5)
    return 0
