"""The `boostream` command: `serve` runs the server; `train`, `tune`, `watch`, `jobs`, `cancel` and
`predict` talk to one over HTTP (`boostream.client`), and `train --local` trains in this process
instead."""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import csv
import dataclasses
import hashlib
import io
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from boostream import __version__
from boostream.client import (
    TERMINAL_EVENTS,
    ApiError,
    Client,
    Event,
    Unreachable,
    api_key_from_environment,
    server_from_environment,
    table_kind,
)
from boostream.config import WHEN_NO_WORKER, Settings, env_name, from_environment, shared_cores, threads_per_job
from boostream.errors import BoostreamError, Conflict, Unavailable

if TYPE_CHECKING:  # the service's modules load numpy, msgspec and pyarrow: only `train --local` needs them
    import pyarrow as pa

    from boostream.jobs.redis_state import RedisState
    from boostream.keys import KeyStore
    from boostream.service import Service

_SERVE_OPTIONS = {
    "host": "address to listen on",
    "port": "port to listen on",
    "data_dir": "where jobs, their events and artifacts are kept",
    "redis": "keep job state in this Redis (redis://HOST:PORT/DB) and leave training to `boostream worker`",
    "max_table_bytes": "with --redis: largest table a job may keep in Redis, in bytes",
    "shared_dir": "with --redis: a directory all servers and workers mount, where tables wait for their jobs "
    "(instead of in Redis)",
    "when_no_worker": "with --redis: what a job gets while no worker for its device is up: refuse (503), "
    "wait (queued, saying so), or auto (wait where such a worker has been up before, else refuse)",
    "cpu_jobs": "LightGBM jobs that train at once",
    "gpu_jobs": "WarpGBM jobs that train at once",
    "threads_per_job": "LightGBM threads per job (0: every core for a job alone, shared out among jobs at once)",
    "worker_memory_mb": "memory a training worker may hold, in MiB, before its job fails (0: 3/4 of the machine's)",
    "stop_grace_s": "seconds a cancelled or timed-out job may take to end its round before its worker is killed",
    "max_queued": "jobs that may wait per device before new ones get 429",
    "max_training_s": "longest a job may train, in seconds",
    "job_ttl_s": "seconds a finished job and its artifact are kept",
    "dataset_ttl_s": "seconds a dataset is kept after it was last made or trained on",
    "webhook_hosts": "hosts callback_url may name, comma-separated (host or host:port; * for any)",
    "no_auth": "serve everyone without API keys, even on an address beyond loopback",
    "allowed_hosts": "host names clients reach this server by, besides loopback and the bound address "
    "(host or host:port, comma-separated); others get 421",
    "allowed_origins": "browser origins whose pages may call this server (CORS, /mcp), comma-separated "
    "(scheme://host[:port], :* for any port)",
    "session_ttl_s": "seconds a browser stays signed in (POST /session)",
    "key_max_jobs": "jobs one API key may have waiting or training at once (0: no limit)",
    "key_requests_per_s": "requests a second one API key may send, in bursts of twice as many (0: no limit)",
    "model_cache_bytes": "memory for models kept loaded for /predict (by their native size)",
    "max_body_bytes": "largest request body accepted",
    "header_timeout_s": "seconds a request's headers may take to come whole (408, and the connection closed)",
    "body_idle_timeout_s": "seconds a request body may go without a byte before it is refused (408)",
    "max_cells": "largest table accepted, in rows x features",
    "heartbeat_s": "seconds between heartbeat comments on an idle stream",
    "log_level": "debug, info, warning or error",
}

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_CANCELLED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
# What a shell reports for a Unix tool killed by SIGPIPE (128 + 13) when its reader goes away
# (`boostream jobs | head -5`): scripts under `set -o pipefail` already know it, and 1 would say
# that the job failed.
EXIT_BROKEN_PIPE = 141

EPILOG = f"""\
The server is --server URL, else $BOOSTREAM_SERVER, else http://127.0.0.1:8000.
Progress and messages go to stderr; `train` and `watch` print the model's artifact id to stdout
when the job succeeds (`train --detach`: the job id), `tune` the best trial's. Ctrl-C during
`train` (or `tune`) cancels the job (or search) on the server and waits for it to stop (press it
again to quit at once); during `watch` it only stops watching.

exit codes:
  {EXIT_SUCCEEDED}    done: the job succeeded, or the command did what it was asked
  {EXIT_FAILED}    the job failed, or the server could not serve the request (5xx): its error code and message \
are printed
  {EXIT_USAGE}    usage error, or the server refused the request (4xx: its message and field are printed)
  {EXIT_UNREACHABLE}    the server cannot be reached
  {EXIT_CANCELLED}    the job was cancelled
  {EXIT_INTERRUPTED}  interrupted by Ctrl-C (train: after the server was asked to cancel the job)
  {EXIT_BROKEN_PIPE}  the reader of the output went away (e.g. `| head`): nothing more was written
"""

ARTIFACT_FORMATS = ("joblib", "native")
# Request fields sent beside the hyperparameters: a --param of one of these names would replace it.
REQUEST_FIELDS = frozenset(
    {
        "target",
        "features",
        "era",
        "categorical",
        "weight",
        "valid_rows",
        "dataset_id",
        "valid_dataset_id",
        "model_type",
        "objective",
        "valid_fraction",
        "timeout_s",
        "artifact_format",
        "callback_url",
        "on_disconnect",
    }
)
BAR_WIDTH = 16
# A search needs validation rows: this share of them, unless --valid-rows or --valid-fraction says.
TUNE_VALID_FRACTION = 0.2
# Trials of the leaderboard drawn live on a terminal, and printed when the search ends.
LEADERBOARD_LIVE, LEADERBOARD_FINAL = 5, 10
NOT_FINITE = "infinite: a model takes finite numbers (a missing value is an empty cell, or null)"
# The first round also carries the trainer's setup (binning, building LightGBM's Dataset), which
# can take longer than many rounds: the ETA is measured from the first round seen, not from the
# start, and shown only once that spans this many rounds and seconds, so one round's time does
# not swing it (the first ETAs were 11:06, then 48.6s, from the server's elapsed / iteration).
ETA_MIN_ROUNDS = 5
ETA_MIN_SPAN_S = 1.0
# How long `serve --redis` and `worker` wait for Redis to answer before they give up.
REDIS_PATIENCE_S = 30.0


class UsageError(Exception):
    """The command line asks for something impossible; nothing was sent."""


class Failure(Exception):
    """The job failed, or what it made could not be written."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
        sys.stdout.flush()  # here, not at exit, where a closed pipe could no longer be caught
        return code
    except BrokenPipeError:
        _stop_writing()
        return EXIT_BROKEN_PIPE
    except UsageError as error:
        _say(f"boostream: {error}")
        return EXIT_USAGE
    except ApiError as error:
        _say(f"boostream: {error.code}" + (f" ({error.field})" if error.field else "") + f": {error.message}")
        return EXIT_USAGE if error.status < 500 else EXIT_FAILED
    except BoostreamError as error:
        # Refused by the service in this process (`train --local`), shown as a server's would be.
        _say(f"boostream: {error.line()}")
        return EXIT_FAILED if isinstance(error, Unavailable) else EXIT_USAGE
    except Unreachable as error:
        _say(f"boostream: {error}")
        return EXIT_UNREACHABLE
    except Failure as error:
        _say(f"boostream: {error}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("boostream: interrupted")
        return EXIT_INTERRUPTED


def _stop_writing() -> None:
    """The reader of stdout (or stderr) went away: end quietly as Unix tools do. What is still
    buffered goes to devnull, so that flushing at exit fails no more (Python docs, "Note on
    SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        os.dup2(devnull, stream.fileno())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boostream",
        description="Streaming training service for gradient-boosted trees.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"boostream {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_worker(commands)
    _add_train(commands)
    _add_tune(commands)
    _add_watch(commands)
    _add_jobs(commands)
    _add_cancel(commands)
    _add_predict(commands)
    _add_demo_data(commands)
    _add_keys(commands)
    _add_webhook_key(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.set_defaults(run=_serve)
    defaults = Settings()
    types = {field.name: field.type for field in dataclasses.fields(Settings)}
    for name, help_text in _SERVE_OPTIONS.items():
        if str(types[name]) == "bool":
            serve.add_argument(
                "--" + name.replace("_", "-"),
                action="store_true",
                default=None,
                help=f"{help_text} (env {env_name(name)}=1)",
            )
            continue
        kind = {"int": int, "float": float}.get(str(types[name]), str)
        serve.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{help_text} (env {env_name(name)}; default {getattr(defaults, name)})",
        )


def _add_worker(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = commands.add_parser(
        "worker",
        help="train jobs from Redis for `serve --redis`",
        description="Take the jobs of one device from Redis and train them on worker processes of this machine.",
    )
    worker.set_defaults(run=_worker)
    worker.add_argument(
        "--redis", metavar="URL", help="redis://HOST:PORT/DB, as the servers have it (env BOOSTREAM_REDIS)"
    )
    worker.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="which jobs to take (default cpu)")
    worker.add_argument("--jobs", type=int, default=1, help="jobs trained at once (default 1)")
    worker.add_argument(
        "--threads-per-job", type=int, default=0,
        help="LightGBM threads per job (0: every core for a job alone, shared out among jobs at once)",
    )  # fmt: skip
    worker.add_argument("--exit-when-idle", type=float, metavar="SECONDS", help="exit after this long with no job")
    worker.add_argument(
        "--dead-after", type=float, default=5.0, metavar="SECONDS",
        help="a worker silent this long is dead, and its jobs run again elsewhere (default 5; the same for all)",
    )  # fmt: skip
    for name in ("shared_dir", "worker_memory_mb", "stop_grace_s", "max_training_s", "log_level"):
        kind = {"int": int, "float": float}.get(str(Settings.__dataclass_fields__[name].type), str)
        worker.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=_SERVE_OPTIONS[name])


def _worker(args: argparse.Namespace) -> int:
    import asyncio
    import secrets
    import signal
    import socket
    import tempfile

    from boostream.jobs.redis_state import PolicyRefused, RedisState, redacted
    from boostream.memory import avoid_huge_pages
    from boostream.models.artifacts import ArtifactStore
    from boostream.models.signing import SigningKeys
    from boostream.trainers import create_trainers
    from boostream.workers.local import LocalWorkers, WorkerConfig
    from boostream.workers.remote import RedisWorker

    settings = from_environment(
        redis=args.redis,
        shared_dir=args.shared_dir,
        worker_memory_mb=args.worker_memory_mb,
        stop_grace_s=args.stop_grace_s,
        max_training_s=args.max_training_s,
        log_level=args.log_level,
    )
    if not settings.redis:
        raise UsageError("worker needs --redis URL (or BOOSTREAM_REDIS): the Redis its servers use")
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    avoid_huge_pages()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _wait_for_redis(settings.redis)
    threads = threads_per_job(args.threads_per_job)
    trainers = create_trainers(threads)
    availability = {name: trainer.availability() for name, trainer in trainers.items() if trainer.device == args.device}
    if not any(a.available for a in availability.values()):
        reasons = "; ".join(f"{name}: {a.reason}" for name, a in availability.items())
        raise Failure(f"nothing can train on the {args.device.upper()} here ({reasons})")
    # A restarted container has the same host name, and often the same pid: the suffix keeps a new
    # process from taking the place (and the pending jobs, which nobody would then claim) of the last.
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"

    async def work(directory: Path) -> None:
        state = RedisState(settings.redis, shared_dir=settings.shared_path)
        try:
            await state.check_policy()
            key = SigningKeys.of(await state.secret_key(settings.secret_key or None)).artifacts
            cores = shared_cores(args.threads_per_job) if args.device == "cpu" else 0
            config = WorkerConfig(args.device, threads, directory / "artifacts", key, settings.log_level, cores)
            pool = LocalWorkers(config, args.jobs, settings.worker_memory_bytes, settings.stop_grace_s)
            worker = RedisWorker(
                state, pool, trainers, availability, ArtifactStore(directory / "artifacts", key),
                worker_id=worker_id, work_dir=directory / "inputs", max_training_s=settings.max_training_s,
                progress_interval_s=settings.progress_interval_s, dead_after_s=args.dead_after,
                exit_when_idle_s=args.exit_when_idle,
            )  # fmt: skip
            logging.getLogger("boostream").info(
                "worker %s: %d %s job(s) at once from %s", worker_id, args.jobs, args.device, redacted(settings.redis)
            )
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            await worker.run()
        except PolicyRefused as refused:
            raise Failure(str(refused)) from None
        finally:
            await state.close()

    with tempfile.TemporaryDirectory(prefix="boostream-worker-") as directory:
        try:
            asyncio.run(work(Path(directory)))
        except (asyncio.CancelledError, KeyboardInterrupt):
            pass
    return 0


def _wait_for_redis(url: str) -> None:
    """Return once Redis at `url` answers; Failure, in one line, if it has not within
    REDIS_PATIENCE_S (processes started together, by Compose say, may start before it)."""
    import redis

    from boostream.jobs.redis_state import redacted

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    shown = redacted(url)
    deadline, said = time.monotonic() + REDIS_PATIENCE_S, False
    try:
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.AuthenticationError as error:
                raise Failure(f"Redis at {shown} refused this process: {error}") from None
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as error:
                if time.monotonic() >= deadline:
                    raise Failure(f"Redis at {shown} cannot be reached ({error}); check --redis") from None
                if not said:
                    logging.getLogger("boostream").warning(
                        "Redis at %s cannot be reached yet (%s); waiting up to %g s", shown, error, REDIS_PATIENCE_S
                    )
                    said = True
                time.sleep(0.5)
    finally:
        client.close()


def _client_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    command = commands.add_parser(
        name, help=help, description=help, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    command.add_argument("--server", metavar="URL", help="the boostream server (env BOOSTREAM_SERVER)")
    command.add_argument(
        "--api-key", metavar="KEY", help="the API key, where the server needs one (env BOOSTREAM_API_KEY)"
    )
    command.set_defaults(run=run)
    return command


def _add_outputs(command: argparse.ArgumentParser) -> None:
    command.add_argument("--out", type=Path, metavar="FILE", help="write the trained model here")
    command.add_argument(
        "--format",
        choices=ARTIFACT_FORMATS,
        default="joblib",
        help="the model file's format: joblib (a pickled model) or native "
        "(LightGBM's text model; WarpGBM's JSON) (default joblib)",
    )
    command.add_argument(
        "--curve",
        type=Path,
        metavar="FILE",
        help="write the learning curve here as CSV: iteration, then each metric, one row per round trained",
    )


def _add_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = _client_command(commands, "train", "train a model on a CSV or Parquet file, showing its progress", _train)
    _add_table_options(train, "hold out this share of rows (0 < F <= 0.5) for validation metrics")
    train.add_argument("--timeout", type=float, metavar="SECONDS", help="fail the job if it trains longer than this")
    _add_outputs(train)
    where = train.add_mutually_exclusive_group()
    where.add_argument(
        "--detach", action="store_true", help="print the job id and return at once (follow it with `boostream watch`)"
    )
    where.add_argument("--local", action="store_true", help="train in this process, without a server (needs --out)")


def _add_table_options(command: argparse.ArgumentParser, valid_fraction: str) -> None:
    """The table and what to train on it: `train`'s and `tune`'s."""
    command.add_argument(
        "data", type=Path, metavar="DATA", help="the table: a .csv file with a header, .parquet, or .arrow"
    )
    command.add_argument("--target", required=True, metavar="COLUMN", help="the label column")
    command.add_argument("--features", metavar="A,B,C", help="the feature columns (default: all the others)")
    command.add_argument("--era", metavar="COLUMN", help="WarpGBM: the column of era ids")
    command.add_argument(
        "--categorical",
        metavar="A,B",
        help="columns whose values are categories (CSV text needs naming; Parquet and Arrow strings are anyway)",
    )
    command.add_argument("--weight", metavar="COLUMN", help="LightGBM: the column of sample weights")
    command.add_argument("--valid-rows", type=int, metavar="N", help="the table's last N rows are the validation set")
    command.add_argument(
        "--model", default="lightgbm", metavar="lightgbm|warpgbm", help="the backend (default lightgbm)"
    )
    command.add_argument(
        "--objective", default="regression", metavar="regression|binary|multiclass", help="(default regression)"
    )
    command.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a hyperparameter, e.g. n_estimators=300; repeat for more (see GET /models)",
    )
    command.add_argument("--valid-fraction", type=float, metavar="F", help=valid_fraction)


def _add_tune(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tune = _client_command(
        commands,
        "tune",
        "search hyperparameters on a CSV, Parquet or Arrow file: trials pruned on their live curves, "
        "a live leaderboard, the best model written",
        _tune,
    )
    _add_table_options(tune, f"hold out this share of rows for the validation metric (default {TUNE_VALID_FRACTION})")
    tune.add_argument(
        "--search",
        action="append",
        default=[],
        required=True,
        metavar="NAME=SPACE",
        help="a hyperparameter to search: a range LOW..HIGH (LOW..HIGH:log to sample it on a log scale) or "
        "choices A,B,C; e.g. num_leaves=8..256:log; repeat for more",
    )
    tune.add_argument("--trials", type=int, default=20, metavar="N", help="trials to run (default 20)")
    tune.add_argument("--parallel", type=int, default=1, metavar="N", help="trials at once (default 1)")
    tune.add_argument("--sampler", default="tpe", metavar="tpe|random|grid", help="Optuna's sampler (default tpe)")
    tune.add_argument(
        "--pruner", default="median", metavar="median|hyperband|none", help="what stops bad trials (default median)"
    )
    tune.add_argument("--seed", type=int, metavar="N", help="the sampler's seed: with --parallel 1, the same trials")
    tune.add_argument("--timeout", type=float, metavar="SECONDS", help="end the search after this long")
    tune.add_argument("--out", type=Path, metavar="FILE", help="write the best trial's model here")
    tune.add_argument(
        "--format", choices=ARTIFACT_FORMATS, default="joblib", help="the model file's format (default joblib)"
    )
    tune.add_argument(
        "--detach", action="store_true", help="print the search's id and return at once (GET /tunes/{id} follows it)"
    )


def _add_watch(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = _client_command(
        commands, "watch", "follow a job's progress to its end (Ctrl-C stops watching, not the job)", _watch
    )
    watch.add_argument("job_id", metavar="JOB_ID")
    _add_outputs(watch)


def _add_jobs(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    jobs = _client_command(commands, "jobs", "list recent jobs, newest first", _jobs)
    jobs.add_argument(
        "--status", metavar="STATUS[,STATUS]", help="only these: queued, running, succeeded, failed, cancelled"
    )
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")


def _add_cancel(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = _client_command(commands, "cancel", "cancel a job: it stops after its current round", _cancel)
    cancel.add_argument("job_id", metavar="JOB_ID")


def _add_predict(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    predict = _client_command(commands, "predict", "predict with a trained model on the server", _predict)
    predict.add_argument("artifact_id", metavar="ARTIFACT_ID")
    predict.add_argument(
        "data",
        type=Path,
        metavar="DATA",
        help="a .csv file with a header, or .parquet: the model's feature "
        "columns are taken by name (others are ignored), else by position",
    )
    predict.add_argument(
        "--output",
        choices=("value", "proba"),
        default="value",
        help="value: one prediction per line; proba: a CSV of class probabilities (default value)",
    )
    predict.add_argument("--out", type=Path, metavar="FILE", help="write the predictions here instead of to stdout")


def _add_keys(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="API keys of a server: once one exists, every request needs one. They are kept where the "
        "server keeps its jobs (--data-dir, or --redis), hashed: a key is printed once, when it is made.",
    )
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print it (once) to stdout")
    create.add_argument("name", metavar="NAME", help="who it is for: the jobs it creates belong to this name")
    create.add_argument("--admin", action="store_true", help="it sees and acts on every job, not only its own")
    listing = actions.add_parser("list", help="every key: id, name, admin, created, revoked")
    listing.add_argument("--json", action="store_true", help="as JSON lines")
    revoke = actions.add_parser("revoke", help="revoke a key by its id, or every key of a name")
    revoke.add_argument("key", metavar="ID|NAME")
    for action in (create, listing, revoke):
        _add_store_options(action)
        action.set_defaults(run=_keys)


def _add_store_options(command: argparse.ArgumentParser) -> None:
    """Where the server keeps its state, for a command that reads or writes it beside the server."""
    command.add_argument("--data-dir", help=f"the server's data directory (env {env_name('data_dir')})")
    command.add_argument("--redis", metavar="URL", help=f"the servers' Redis (env {env_name('redis')})")


def _keys(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from boostream.views import iso

    settings = from_environment(data_dir=args.data_dir, redis=args.redis)

    async def run() -> None:
        async with _key_store(settings) as store:
            if args.action == "create":
                key, record = await store.create(args.name, args.admin)
                print(key)
                role = "an admin key" if record.admin else "a key"
                _say(f"made {role} for {record.name} (id {record.id}); it is shown only now: keep it")
            elif args.action == "revoke":
                for record in await store.revoke(args.key):
                    _say(f"revoked key {record.id} ({record.name})")
            elif args.json:
                for record in await store.records():
                    print(json.dumps(record.view()))
            else:
                print(f"{'ID':<14}{'NAME':<24}{'ADMIN':<7}{'CREATED':<21}REVOKED")
                for record in await store.records():
                    created, revoked = _time_cell(iso(record.created_at)), _time_cell(iso(record.revoked_at))
                    print(f"{record.id:<14}{record.name:<24}{'yes' if record.admin else '':<7}{created:<21}{revoked}")

    if settings.redis:
        _wait_for_redis(settings.redis)
    try:
        asyncio.run(run())
    except (ValueError, LookupError) as error:  # a name it cannot take, no such key
        raise UsageError(str(error)) from None
    return 0


@contextlib.asynccontextmanager
async def _key_store(settings: Settings) -> AsyncIterator[KeyStore]:
    """The API keys where these settings keep jobs: in Redis, else in the data directory."""
    from boostream.keys import RedisKeys, SqliteKeys

    if settings.redis:
        async with _redis_state(settings.redis) as state:
            yield RedisKeys(state.redis, state.prefix)
    else:
        store = SqliteKeys(settings.data_dir)
        try:
            yield store
        finally:
            store.close()


@contextlib.asynccontextmanager
async def _redis_state(url: str) -> AsyncIterator[RedisState]:
    """A client of the servers' Redis, for a command that works beside them."""
    from boostream.jobs.redis_state import RedisState

    state = RedisState(url)
    try:
        yield state
    finally:
        await state.close()


def _add_webhook_key(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "webhook-key",
        help="print the key that signs webhooks (hex), for their receivers",
        description="The key a webhook receiver checks X-Boostream-Signature with: derived from the server's secret "
        "key (BOOSTREAM_SECRET_KEY, else the one kept in the data directory or in Redis), printed in hex.",
    )
    _add_store_options(command)
    command.set_defaults(run=_webhook_key)


def _webhook_key(args: argparse.Namespace) -> int:
    import asyncio

    from boostream.models.signing import SigningKeys, load_or_create_key

    settings = from_environment(data_dir=args.data_dir, redis=args.redis)
    try:
        if settings.redis:
            _wait_for_redis(settings.redis)

            async def kept() -> bytes:
                async with _redis_state(settings.redis) as state:
                    return await state.secret_key(settings.secret_key or None)

            secret = asyncio.run(kept())
        elif not settings.secret_key and not settings.key_path.exists():  # never one made up: no server has it
            raise UsageError(
                f"no signing key in {settings.data_dir}: give the server's --data-dir (it makes its key when it starts)"
            )
        else:
            secret = load_or_create_key(settings.key_path, settings.secret_key or None)
    except ValueError as error:  # a configured key too short
        raise UsageError(str(error)) from None
    print(SigningKeys.of(secret).webhooks.hex())
    return 0


def _add_demo_data(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo-data", help="write the demo tables (CSV, Parquet, a JSON request) to try the server with"
    )
    demo.add_argument("folder", type=Path, metavar="FOLDER", help="where to write them (made if missing)")
    demo.set_defaults(run=_demo_data)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from boostream.jobs.sqlite import DataDirInUse, check_data_dir_free
    from boostream.memory import avoid_huge_pages
    from boostream.streaming_server.app import create_app, uvicorn_options

    settings = from_environment(**{name: getattr(args, name) for name in _SERVE_OPTIONS})
    if settings.when_no_worker not in WHEN_NO_WORKER:
        choices = ", ".join(WHEN_NO_WORKER)
        raise UsageError(f"--when-no-worker must be one of {choices}, not {settings.when_no_worker!r}")
    avoid_huge_pages()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.redis:
        _wait_for_redis(settings.redis)
    try:
        if not settings.redis:  # with Redis, the data directory holds only requests being read
            check_data_dir_free(settings.data_dir)  # in the app's startup, uvicorn would print a traceback
    except DataDirInUse as error:
        raise Failure(str(error)) from None
    _refuse_exposure(settings)
    for old, new in (("mcp_hosts", "allowed_hosts"), ("mcp_origins", "allowed_origins")):
        if os.environ.get(env_name(old)):
            logging.getLogger("boostream").warning(
                "%s is no longer read: set %s (every route checks it, /mcp too)", env_name(old), env_name(new)
            )
    logging.getLogger("boostream").info("data directory: %s", settings.data_dir)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # the app logs each request itself, as JSON (boostream.access)
        **uvicorn_options(settings),
    )
    return 0


def _refuse_exposure(settings: Settings) -> None:
    """Failure, in one line, where the server would serve everyone beyond this machine unasked (its
    startup would refuse too, with a traceback)."""
    import asyncio

    from boostream.keys import exposure_problem

    async def keys_exist() -> bool:
        async with _key_store(settings) as store:
            return await store.any()

    if not settings.no_auth and (problem := exposure_problem(settings, asyncio.run(keys_exist()))):
        raise Failure(problem)


# train, watch


@dataclasses.dataclass(frozen=True)
class OutputFiles:
    """The files `train` and `watch` write once the job succeeds."""

    model: Path | None  # --out
    format: str  # --format: the model file's, joblib or native
    curve: Path | None  # --curve: the learning curve as CSV

    @classmethod
    def of(cls, args: argparse.Namespace) -> OutputFiles:
        """The options' files; each one's folder checked before any work, which a file that cannot
        be written would waste."""
        outputs = cls(args.out, args.format, args.curve)
        for option, path in outputs.asked().items():
            _check_writable(option, path)
        return outputs

    def asked(self) -> dict[str, Path]:
        """The files asked for, by their option."""
        return {option: path for option, path in (("--out", self.model), ("--curve", self.curve)) if path is not None}


def _train(args: argparse.Namespace) -> int:
    _check_table(args.data)
    fields = _train_fields(args)
    outputs = OutputFiles.of(args)
    if args.detach and outputs.asked():
        option = next(iter(outputs.asked()))
        raise UsageError(
            f"{option} needs the job followed to its end: drop --detach, or use `boostream watch JOB_ID {option} FILE`"
        )
    if args.local:
        if args.server is not None:
            raise UsageError("--local trains in this process: it takes no --server")
        if args.out is None:
            raise UsageError("--local needs --out FILE: the model is kept nowhere else")
        return _train_locally(args.data, fields, outputs, ProgressDisplay(sys.stderr))
    with _client(args) as client:
        job_id = client.upload_job(args.data, fields)["job_id"]
        if args.detach:
            print(job_id)
            return EXIT_SUCCEEDED
        return _follow(client, job_id, ProgressDisplay(sys.stderr), outputs, cancel_on_interrupt=True)


def _watch(args: argparse.Namespace) -> int:
    outputs = OutputFiles.of(args)
    with _client(args) as client:
        return _follow(client, args.job_id, ProgressDisplay(sys.stderr), outputs, cancel_on_interrupt=False)


def _train_fields(args: argparse.Namespace) -> dict[str, str]:
    """The training request's fields as text, as the server reads them from a query string."""
    fields = {
        "target": args.target,
        "model_type": args.model,
        "objective": args.objective,
        "artifact_format": args.format,
    }
    optional = {
        "features": args.features,
        "era": args.era,
        "categorical": args.categorical,
        "weight": args.weight,
        "valid_rows": args.valid_rows,
        "valid_fraction": args.valid_fraction,
        "timeout_s": args.timeout,
    }
    fields.update({name: str(value) for name, value in optional.items() if value is not None})
    fields.update(_params(args.param, set(fields)))
    return fields


def _params(given: list[str], taken: set[str]) -> dict[str, str]:
    """`--param NAME=VALUE` options, by name, their values as text; none may be in `taken`."""
    params: dict[str, str] = {}
    for param in given:
        name, equals, value = param.partition("=")
        name = name.strip()
        if not equals or not name:
            raise UsageError(f"--param {param!r}: write it NAME=VALUE, e.g. n_estimators=300")
        if name in REQUEST_FIELDS:
            raise UsageError(f"--param {name}: not a hyperparameter but a field of the request (see --help)")
        if name in params or name in taken:
            raise UsageError(f"--param {name} is given twice")
        params[name] = value.strip()
    return params


def _follow(
    client: Client, job_id: str, display: ProgressDisplay, outputs: OutputFiles, cancel_on_interrupt: bool
) -> int:
    """Show a job's events to its end; the exit code its end calls for. Ctrl-C either cancels the
    job and waits for it to stop (a second Ctrl-C quits at once), or only stops watching."""
    last, interrupted = _shown_to_the_end(
        lambda after: client.events(job_id, after),
        display,
        (lambda: _request_cancel(client.cancel, job_id)) if cancel_on_interrupt else None,
        f"cancelling job {job_id} (Ctrl-C again to quit at once)",
        f"stopped watching; job {job_id} goes on (`boostream cancel {job_id}` stops it)",
    )
    return _ended(client, last, outputs, display, interrupted)


def _shown_to_the_end(
    events: Callable[[int], Iterable[Event]],
    display: ProgressDisplay | TuneDisplay,
    cancel: Callable[[], None] | None,
    cancelling: str,
    leaving: str = "",
) -> tuple[Event, bool]:
    """Events shown to the terminal one, each stream resumed after the last event seen; that
    event, and whether Ctrl-C asked for a cancel. With `cancel`, the first Ctrl-C calls it and the
    events go on to their end (a second quits at once); without, Ctrl-C stops watching."""
    last: Event | None = None
    interrupted = False
    while last is None or last.type not in TERMINAL_EVENTS:
        after = last.id if last else 0
        try:
            for last in events(after):
                display.show(last)
        except KeyboardInterrupt:
            if cancel is None:
                display.note(leaving)
                raise
            if interrupted:
                raise
            interrupted = True
            display.note(cancelling)
            cancel()
    return last, interrupted


def _ended(
    client: Client | None, last: Event, outputs: OutputFiles, display: ProgressDisplay, interrupted: bool
) -> int:
    """Write what a job's end makes (when it succeeded); the exit code it calls for."""
    if last.type == "complete":
        _write_outputs(client, last.data, outputs, display)
        if client is not None:  # a local job's artifact went with its data directory
            print(last.data["artifact_id"])
        return EXIT_SUCCEEDED
    if last.type == "error":
        return EXIT_FAILED
    return EXIT_INTERRUPTED if interrupted else EXIT_CANCELLED


def _request_cancel(cancel: Callable[[str], Any], what_id: str) -> None:
    try:
        cancel(what_id)
    except ApiError as error:
        if error.status != 409:
            raise
        # It ended meanwhile: its stream says how.


def _write_outputs(
    client: Client | None, complete: dict[str, Any], outputs: OutputFiles, display: ProgressDisplay
) -> None:
    if outputs.model is not None:
        _save_model(client, complete, outputs.model, outputs.format)
        display.note(f"wrote the model to {outputs.model} ({outputs.format})")
    if outputs.curve is not None:
        if "curve" in complete:
            _write_curve(outputs.curve, complete["curve"], display)
        else:  # the job succeeded all the same: say so, and exit 0
            display.note(
                f"warning: the server sent no learning curve (it is older than --curve); {outputs.curve} not written"
            )


def _save_model(client: Client | None, complete: dict[str, Any], out: Path, format: str) -> None:
    """The model file, from the `complete` event when it carries that format, else downloaded;
    written only once its sha256 matches what the server states."""
    if complete["format"] == format or client is None:
        _write_checked(out, base64.b64decode(complete["artifact"]), complete["sha256"])
    else:
        _download_model(client, complete["artifact_id"], out, format)


def _download_model(client: Client, artifact_id: str, out: Path, format: str) -> None:
    artifact = client.artifact(artifact_id, format)
    _write_checked(out, artifact.content, artifact.sha256)


def _write_checked(out: Path, content: bytes, expected: str) -> None:
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected:
        raise Failure(f"the model's sha256 is {actual}, but the server states {expected}: not written")
    _write_file(out, content)


def _train_locally(table: Path, fields: dict[str, str], outputs: OutputFiles, display: ProgressDisplay) -> int:
    """The service's job in this process, on a data directory of its own that goes when it is
    done: the same checks, parameters, events and model as a server's. The first Ctrl-C asks the
    job to stop after its round, a second quits at once."""
    import asyncio
    import tempfile

    from boostream.service import Service

    with tempfile.TemporaryDirectory(prefix="boostream-local-") as data_dir:
        # Threads and limits as a server's job would get them here; nobody else calls it.
        settings = from_environment(data_dir=data_dir, host="127.0.0.1", no_auth=True)
        # Only the backend asked for is asked whether it can train (WarpGBM imports torch: seconds).
        service = Service(settings, model_types=[fields["model_type"]])
        last = asyncio.run(_run_locally(service, table, fields, display))
    return _ended(None, last, outputs, display, interrupted=last.type == "cancelled")


async def _run_locally(service: Service, table: Path, fields: dict[str, str], display: ProgressDisplay) -> Event:
    """The job's events shown as they come; its last one."""
    import asyncio
    import signal

    import orjson

    from boostream.keys import EVERYONE

    async with service.running():
        with open(table, "rb") as file:
            started = time.perf_counter()
            spec = await service.decode_table(file, table_kind(table), fields, where="on this machine")
            decode_s = time.perf_counter() - started
        job = await service.submit(EVERYONE, spec, {"decode_s": decode_s})
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []
        _on_interrupt(loop, signal.SIGINT, lambda: _stop_local(service, job.id, display, stopping))
        last: Event | None = None
        async for event in service.events(job.id):
            last = Event(event.id, event.type, orjson.loads(event.json))
            display.show(last)
        assert last is not None  # a job's log always ends with its terminal event
        return last


def _on_interrupt(loop: Any, signum: int, handler: Callable[[], None]) -> None:
    try:
        loop.add_signal_handler(signum, handler)
    except (NotImplementedError, RuntimeError):  # not on this platform, or not in the main thread
        pass


def _stop_local(service: Service, job_id: str, display: ProgressDisplay, stopping: list[Any]) -> None:
    """Ctrl-C: the first asks the job to stop (`stopping` keeps the request), the second quits."""
    import asyncio

    from boostream.keys import EVERYONE

    if stopping:
        raise KeyboardInterrupt  # the second Ctrl-C: out of the event loop, which stops the workers
    display.note("stopping after this round (Ctrl-C again to quit at once)")

    async def cancel() -> None:
        try:
            await service.cancel(EVERYONE, job_id)
        except Conflict:
            pass  # it ended meanwhile: its last event says how

    stopping.append(asyncio.get_running_loop().create_task(cancel()))


# tune


def _tune(args: argparse.Namespace) -> int:
    _check_table(args.data)
    request, columns = _tune_request(args)
    outputs = OutputFiles(args.out, args.format, None)
    for option, path in outputs.asked().items():
        _check_writable(option, path)
    if args.detach and args.out is not None:
        raise UsageError("--out needs the search followed to its end: drop --detach")
    with _client(args) as client:
        # The table goes up once, as a dataset; the search keeps its own copy of what it decoded,
        # so the dataset goes as soon as the search has started (or was refused).
        dataset = client.upload(args.data, name=f"tune {args.data.name}")
        try:
            started = client.start_tune({**request, "dataset": {**columns, "dataset_id": dataset.dataset_id}})
        finally:
            with contextlib.suppress(ApiError, Unreachable):
                client.delete_dataset(dataset)
        if args.detach:
            print(started["tune_id"])
            return EXIT_SUCCEEDED
        return _follow_tune(client, started["tune_id"], TuneDisplay(sys.stderr), outputs)


def _tune_request(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The search request without its table, and the fields that pick the table's columns."""
    columns = {
        name: str(value)
        for name, value in {
            "target": args.target, "features": args.features, "era": args.era,
            "categorical": args.categorical, "weight": args.weight, "valid_rows": args.valid_rows,
        }.items()
        if value is not None
    }  # fmt: skip
    request: dict[str, Any] = {
        "model_type": args.model,
        "objective": args.objective,
        "artifact_format": args.format,
        "params": {name: _json_value(text) for name, text in _params(args.param, set()).items()},
        "search": _search_space(args.search),
        "n_trials": args.trials,
        "parallel": args.parallel,
        "sampler": args.sampler,
        "pruner": args.pruner,
    }
    if args.valid_fraction is not None or args.valid_rows is None:
        request["valid_fraction"] = TUNE_VALID_FRACTION if args.valid_fraction is None else args.valid_fraction
    optional = {"seed": args.seed, "timeout_s": args.timeout}
    request.update({name: value for name, value in optional.items() if value is not None})
    return request, columns


def _search_space(given: list[str]) -> dict[str, Any]:
    """`--search` options as the request's `search`: `NAME=LOW..HIGH[:log]` a range,
    `NAME=A,B,C` choices."""
    space: dict[str, Any] = {}
    for option in given:
        name, equals, text = option.partition("=")
        name, text = name.strip(), text.strip()
        if not equals or not name or not text:
            raise UsageError(f"--search {option!r}: write it NAME=LOW..HIGH, NAME=LOW..HIGH:log or NAME=A,B,C")
        if name in space:
            raise UsageError(f"--search {name} is given twice")
        if ".." in text:
            bounds, colon, scale = text.partition(":")
            if colon and scale != "log":
                raise UsageError(f"--search {option!r}: a range ends in :log or nothing, not :{scale}")
            low, _, high = bounds.partition("..")
            ends = [_json_value(end.strip()) for end in (low, high)]
            if not all(isinstance(end, int | float) and not isinstance(end, bool) for end in ends):
                raise UsageError(f"--search {option!r}: a range's ends are numbers")
            space[name] = {"low": ends[0], "high": ends[1], "log": bool(colon)}
        else:
            space[name] = [_json_value(choice.strip()) for choice in text.split(",")]
    return space


def _json_value(text: str) -> Any:
    """A value typed on the command line as JSON would give it: an integer, a number, true or
    false, else text (which the server checks against the parameter)."""
    for number in (int, float):
        try:
            value = number(text)
        except ValueError:
            continue
        if not math.isfinite(value):
            raise UsageError(f"{text!r}: not a finite number (JSON has none such)")
        return value
    return {"true": True, "false": False}.get(text.lower(), text)


def _follow_tune(client: Client, tune_id: str, display: TuneDisplay, outputs: OutputFiles) -> int:
    """Show a search's events to its end, and write its best model. The first Ctrl-C cancels
    the search (every running trial stops after its round) and waits for it to end; the second
    quits at once."""
    last, interrupted = _shown_to_the_end(
        lambda after: client.tune_events(tune_id, after),
        display,
        lambda: _request_cancel(client.cancel_tune, tune_id),
        f"cancelling search {tune_id}: each running trial stops after its round (Ctrl-C again quits)",
    )
    display.close()
    if last.type == "complete":
        if outputs.model is not None:
            _download_model(client, last.data["artifact_id"], outputs.model, outputs.format)
            trial = last.data["best"]["trial"]
            display.note(f"wrote the best model (trial {trial}) to {outputs.model} ({outputs.format})")
        print(last.data["artifact_id"])
        return EXIT_SUCCEEDED
    if last.type == "error":
        return EXIT_FAILED
    return EXIT_INTERRUPTED if interrupted else EXIT_CANCELLED


# jobs, cancel, predict


def _jobs(args: argparse.Namespace) -> int:
    statuses = [status.strip() for status in (args.status or "").split(",") if status.strip()]
    with _client(args) as client:
        jobs = client.jobs(statuses, args.limit)
    rows = [("ID", "STATUS", "MODEL", "OBJECTIVE", "PROGRESS", "CREATED")]
    rows += [
        (
            job["job_id"], job["status"], job["model_type"], job["objective"], _progress_cell(job["progress"]),
            _time_cell(job["created_at"]),
        )
        for job in jobs
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_SUCCEEDED


def _progress_cell(progress: dict[str, Any]) -> str:
    if not progress["total"]:
        return "-"
    return f"{progress['iteration']}/{progress['total']} ({progress['percent']:.0f}%)"


def _time_cell(iso: str | None) -> str:
    return "-" if iso is None else iso[:19] + "Z"  # to the second, still marked UTC


def _demo_data(args: argparse.Namespace) -> int:
    from boostream.demo_data import write_demo_data

    try:
        written = write_demo_data(args.folder)
    except OSError as error:
        raise Failure(f"cannot write the demo files to {args.folder}: {error.strerror or error}") from None
    for path in written:
        print(path)
    return EXIT_SUCCEEDED


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.cancel(args.job_id)
    when = "cancelled" if answer["status"] == "cancelled" else "stops after its current round"
    print(f"job {answer['job_id']}: {when}")
    return EXIT_SUCCEEDED


def _predict(args: argparse.Namespace) -> int:
    _check_table(args.data)
    with _client(args) as client:
        feature_names = client.artifact_metadata(args.artifact_id)["feature_names"] or []
        X = _feature_rows(args.data, feature_names)
        answer = client.predict(args.artifact_id, X, args.output)
    if args.output == "proba":
        text = _csv_text([answer["classes"], *answer["predictions"]])
    else:
        text = "".join(f"{value}\n" for value in answer["predictions"])
    if args.out is None:
        sys.stdout.write(text)
    else:
        _write_file(args.out, text.encode())
    return EXIT_SUCCEEDED


def _feature_rows(path: Path, feature_names: list[str]) -> list[list[float | None]]:
    """The model's feature columns of a CSV or Parquet table, as rows of numbers; a missing value
    or NaN is null."""
    read = _parquet_feature_rows if table_kind(path) == "parquet" else _csv_feature_rows
    return read(path, feature_names)


def _csv_feature_rows(path: Path, feature_names: list[str]) -> list[list[float | None]]:
    """Of a CSV with a header (UTF-8, as the server reads it; a byte order mark is skipped as
    pyarrow does); an empty cell is a missing value."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            if header is None:
                raise UsageError(f"{path} is empty: it needs a header and rows")
            columns = _model_columns(path, header, feature_names)
            return [_numbers(path, line, header, cells, columns) for line, cells in enumerate(reader, start=2) if cells]
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a CSV file: it is not UTF-8 text") from None
    except csv.Error as error:
        raise UsageError(f"{path} is not a CSV file: {error}") from None


def _parquet_feature_rows(path: Path, feature_names: list[str]) -> list[list[float | None]]:
    """Of a Parquet file, whose columns of numbers (or of text that reads as numbers) are taken;
    a pandas index stored as a column is not a feature, as in training."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from boostream.requests.tables import pandas_index

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        index = pandas_index(schema)
        header = [name for name in schema.names if name not in index]
        names = [header[column] for column in _model_columns(path, header, feature_names)]
        table = parquet.read(columns=names)
    except (pa.ArrowException, OSError) as error:  # pyarrow reports some corrupt files as an OSError
        reason = str(error).partition("\n")[0]
        raise UsageError(f"{path} cannot be read as Parquet: {reason}") from None
    columns = [_parquet_numbers(path, name, table.column(name)) for name in names]
    return [list(row) for row in zip(*columns, strict=True)]


def _parquet_numbers(path: Path, name: str, column: pa.ChunkedArray) -> list[float | None]:
    import pyarrow as pa

    try:
        values = column.cast(pa.float64()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise UsageError(f"{path}, column {name!r}: its values ({column.type}) are not numbers") from None
    infinite = next((row for row, value in enumerate(values) if value is not None and math.isinf(value)), None)
    if infinite is not None:
        raise UsageError(f"{path}, row {infinite + 1}, column {name!r}: {values[infinite]} is {NOT_FINITE}")
    return [None if value is None or math.isnan(value) else value for value in values]


def _model_columns(path: Path, header: list[str], feature_names: list[str]) -> list[int]:
    """Where the header names all the model's features, those columns in the model's order (so the
    training file itself, target and all, can be used); else all of them, in place."""
    twice = next((name for i, name in enumerate(header) if name in header[:i]), None)
    if twice is not None:
        raise UsageError(f"{path} has two columns named {twice!r}: name each column once")
    if feature_names and set(feature_names) <= set(header):
        return [header.index(name) for name in feature_names]
    if len(header) != len(feature_names):
        raise UsageError(
            f"{path} has the columns {header}; the model takes {len(feature_names)} features: {feature_names}"
        )
    return list(range(len(header)))


def _numbers(path: Path, line: int, header: list[str], cells: list[str], columns: list[int]) -> list[float | None]:
    if len(cells) != len(header):
        raise UsageError(f"{path}, line {line}: {len(cells)} values, but the header names {len(header)} columns")
    row: list[float | None] = []
    for column in columns:
        cell = cells[column]
        try:
            value = float(cell) if cell.strip() else math.nan
        except ValueError:
            raise UsageError(f"{path}, line {line}, column {header[column]!r}: {cell!r} is not a number") from None
        if math.isinf(value):
            raise UsageError(f"{path}, line {line}, column {header[column]!r}: {cell!r} is {NOT_FINITE}")
        row.append(None if math.isnan(value) else value)
    return row


# Shared


def _client(args: argparse.Namespace) -> Client:
    return Client(server_from_environment(args.server), api_key=api_key_from_environment(args.api_key))


def _check_table(path: Path) -> None:
    try:
        table_kind(path)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not path.is_file():
        raise UsageError(f"{path}: no such file")


def _check_writable(option: str, path: Path) -> None:
    directory = path.parent
    if not directory.is_dir():
        raise UsageError(f"{option} {path}: the folder {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise UsageError(f"{option} {path}: the folder {directory} is not writable")


def _write_file(path: Path, content: bytes) -> None:
    """Written beside, then renamed: an interrupted write never leaves half a file under `path`."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(content)
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise Failure(f"cannot write {path}: {error.strerror or error}") from None


def _write_curve(path: Path, curve: dict[str, Any], display: ProgressDisplay) -> None:
    """A learning curve (`boostream.progress.metric_history`'s shape: `first` and one list of values
    per metric) as CSV: `iteration,<metric names>`, then a row per round; a round without a value
    has an empty cell."""
    # Each round's values, in the metrics' order. The lists are as long as each other where the
    # server wrote them; strict=False keeps a shorter one from failing the download.
    rounds = zip(*curve["metrics"].values(), strict=False)
    rows = [[curve["first"] + index, *values] for index, values in enumerate(rounds)]
    _write_file(path, _csv_text([["iteration", *curve["metrics"]], *rows]).encode())
    display.note(f"wrote the learning curve to {path} ({len(rows)} rounds)")


def _csv_text(rows: Iterable[Sequence[Any]]) -> str:
    """Rows as CSV lines; None as an empty cell, a float as Python writes it (exactly)."""
    text = io.StringIO(newline="")
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# Progress display


class _Display:
    """Events as text on `stream`: on a terminal, what changes is redrawn in place at most every
    `redraw_s`; elsewhere (logs, CI, pipes) printed at most every `interval_s`, so that a log stays
    short however fast events come."""

    def __init__(self, stream: TextIO, interval_s: float, redraw_s: float, clock: Callable[[], float]) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        self.interval_s = redraw_s if self.interactive else interval_s
        self._clock = clock


class ProgressDisplay(_Display):
    """A job's events as text (`_Display`): its progress line redrawn in place (`\\r`) on a
    terminal. The last round, and the latest one before any other line, are always shown."""

    def __init__(
        self,
        stream: TextIO,
        interval_s: float = 1.0,
        redraw_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stream, interval_s, redraw_s, clock)
        self._held: dict[str, Any] | None = None  # the latest progress, not shown yet
        self._shown_at = -math.inf
        self._bar_drawn = False  # on a terminal: the cursor is at the end of a progress line
        self._eta = EtaEstimate()

    def show(self, event: Event) -> None:
        if event.type != "progress":
            if event.type == "started":  # a restarted job trains from its first round again
                self._eta = EtaEstimate()
            self.note(describe_event(event))
            return
        self._eta.observe(event.data)
        self._held = event.data
        if event.data["iteration"] >= event.data["total"] or self._clock() - self._shown_at >= self.interval_s:
            self._show_held()

    def note(self, text: str) -> None:
        """A line of its own, below the progress line."""
        self._show_held()
        if self._bar_drawn:
            self.stream.write("\n")
            self._bar_drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _show_held(self) -> None:
        if self._held is None:
            return
        progress, self._held = self._held, None
        self._shown_at = self._clock()
        eta_s = self._eta.seconds_left(progress)
        if self.interactive:
            width = shutil.get_terminal_size().columns - 1  # a line that wraps cannot be redrawn
            line = progress_line(progress, eta_s)
            if len(line) > width:
                line = progress_line(progress, eta_s, bar=False)
            self.stream.write("\r" + line[:width] + "\x1b[K")
            self._bar_drawn = True
        else:
            self.stream.write(progress_line(progress, eta_s) + "\n")
        self.stream.flush()


class TuneDisplay(_Display):
    """A search's events as text (`_Display`): a line as each trial ends and as the best changes;
    on a terminal, below them, a block redrawn in place: the trials done, the leaderboard so far
    and the running trials' rounds; in a log, a one-line summary instead. When the search ends,
    its leaderboard."""

    def __init__(
        self,
        stream: TextIO,
        interval_s: float = 10.0,
        redraw_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stream, interval_s, redraw_s, clock)
        self._shown_at = clock()
        self._drawn = 0  # on a terminal: the lines of the live block below the cursor's line
        self.metric = "value"
        self.n_trials = 0
        self.rounds: int | None = None
        self.trials: dict[int, dict[str, Any]] = {}  # by number: state, params, value, round
        self.best: dict[str, Any] | None = None

    def show(self, event: Event) -> None:
        data = event.data
        kind = event.type
        if kind == "started":
            self.metric, self.n_trials = data["metric"], data["n_trials"]
            self.rounds = (data.get("params") or {}).get("n_estimators")
            searched = ", ".join(f"{name} {_space_text(space)}" for name, space in data["space"].items())
            self.note(
                f"search {data['tune_id']}: {self.n_trials} trials of {data['model_type']} {data['objective']}, "
                f"{data['parallel']} at once, minimising {self.metric} ({data['sampler']} sampler, "
                f"{data['pruner']} pruner); searching {searched}"
            )
        elif kind == "trial_started":
            self.trials[data["trial"]] = {"state": "running", "params": data["params"], "value": None, "round": 0}
        elif kind == "progress":
            trial = self.trials.get(data["trial"])
            if trial is not None and trial["state"] == "running":
                trial["round"], trial["value"] = data["iteration"], data["metrics"].get(self.metric)
            if self._clock() - self._shown_at >= self.interval_s:
                self._draw()
        elif kind in ("trial_complete", "trial_pruned", "trial_failed"):
            self._ended(kind, data)
        elif kind == "restarted":
            self.note(f"search {data['tune_id']}: {data['reason']}; it goes on")
        elif kind == "trial_restarted":  # its job trains again from its first round
            if data["trial"] in self.trials:
                self.trials[data["trial"]].update(round=0, value=None)
            self.note(f"trial {data['trial']} starts over: {data['reason']}")
        elif kind == "best":
            self.best = data
            self.note(f"  best so far: trial {data['trial']}, {self.metric} {data['value']:.6g}")
        elif kind == "complete":
            self.note(self._leaderboard(data["leaderboard"], LEADERBOARD_FINAL, final=True))
            importances = data.get("importances") or {}
            if importances:
                self.note("importances: " + ", ".join(f"{name} {value:.2f}" for name, value in importances.items()))
            best = data["best"]
            self.note(
                f"done: best trial {best['trial']}, {self.metric} {data['best_value']:.6g} with "
                f"{_params_text(best['params'])}; artifact {data['artifact_id']}"
            )
        elif kind == "error":
            self.note(f"search failed: {data['code']}: {data['message']}")
        elif kind == "cancelled":
            done = data.get("trials") or {}
            self.note(f"search cancelled: {done.get('complete', 0)} trials complete, {done.get('pruned', 0)} pruned")
            if data.get("leaderboard"):
                self.note(self._leaderboard(data["leaderboard"], LEADERBOARD_FINAL, final=True))

    def _ended(self, kind: str, data: dict[str, Any]) -> None:
        trial = self.trials.setdefault(data["trial"], {"params": data.get("params", {}), "round": 0})
        number, params = data["trial"], _params_text(trial["params"])
        if kind == "trial_complete":
            trial.update(state="complete", value=data["value"], round=data["iterations"])
            rounds = f"best round {data['best_iteration']} of {data['iterations']}"
            self.note(f"trial {number} complete: {self.metric} {data['value']:.6g}, {rounds}; {params}")
        elif kind == "trial_pruned":
            trial.update(state="pruned", value=data["value"], round=data["round"])
            self.note(f"trial {number} pruned at round {data['round']}: {self.metric} {data['value']:.6g}; {params}")
        else:
            trial.update(state="failed")
            self.note(f"trial {number} failed: {data['code']}: {data['message']}; {params}")

    def note(self, text: str) -> None:
        """Lines of their own, above the live block."""
        self._erase()
        self.stream.write(text + "\n")
        if self.interactive:
            self._draw()
        self.stream.flush()

    def close(self) -> None:
        """The search ended: the live block goes."""
        self._erase()
        self.stream.flush()

    def _draw(self) -> None:
        self._shown_at = self._clock()
        if not self.interactive:
            self.stream.write(self._summary() + "\n")
            self.stream.flush()
            return
        self._erase()
        width = shutil.get_terminal_size().columns - 1  # a line that wraps cannot be redrawn
        lines = [self._summary(), *self._leaderboard(self._rows(), LEADERBOARD_LIVE).splitlines()]
        lines += [
            f"  trial {number} running: round {trial['round']}{'' if self.rounds is None else f'/{self.rounds}'}"
            f"  {self.metric} {_number_text(trial['value'])}  {_params_text(trial['params'])}"
            for number, trial in self.trials.items()
            if trial["state"] == "running"
        ]
        self.stream.write("".join(line[:width] + "\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    def _erase(self) -> None:
        if self._drawn:
            # Up to the block's first line, and everything from there down cleared.
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _summary(self) -> str:
        states = collections.Counter(trial["state"] for trial in self.trials.values())
        ended = states["complete"] + states["pruned"] + states["failed"]
        best = "" if self.best is None else f"; best trial {self.best['trial']}, {self.best['value']:.6g}"
        return (
            f"trials {ended}/{self.n_trials} done ({states['complete']} complete, {states['pruned']} pruned, "
            f"{states['failed']} failed), {states['running']} running{best}"
        )

    def _rows(self) -> list[dict[str, Any]]:
        """The trials that completed, best first, as the leaderboard rows of the `complete` event."""
        done = [(number, trial) for number, trial in self.trials.items() if trial["state"] == "complete"]
        done.sort(key=lambda item: (item[1]["value"], item[0]))
        return [{"trial": number, **trial} for number, trial in done]

    def _leaderboard(self, rows: list[dict[str, Any]], limit: int, final: bool = False) -> str:
        """The first `limit` rows: rank, trial, state, value, its params."""
        shown = rows[:limit]
        if not shown:
            return ""
        table = [("RANK", "TRIAL", "STATE", self.metric.upper(), "PARAMS")]
        # Ranked: the trials that completed. A pruned trial's value is of an earlier round.
        table += [
            (str(rank) if row["state"] == "complete" else "-", str(row["trial"]), row["state"],
             _number_text(row["value"]), _params_text(row["params"]))
            for rank, row in enumerate(shown, 1)
        ]  # fmt: skip
        widths = [max(len(line[column]) for line in table) for column in range(4)]
        text = "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(line[:4], widths, strict=True)) + "  " + line[4]
            for line in table
        )
        more = len(rows) - len(shown)
        return text + (f"\n({more} more)" if final and more > 0 else "")


def _space_text(space: Any) -> str:
    if isinstance(space, list):
        return "{" + ",".join(str(choice) for choice in space) + "}"
    return f"{space['low']}..{space['high']}{':log' if space.get('log') else ''}"


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{name}={_number_text(value)}" for name, value in params.items())


def _number_text(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class EtaEstimate:
    """The time a job has left, at the pace of its rounds since the first one seen (see
    ETA_MIN_ROUNDS); None while that pace is not measured yet."""

    def __init__(self) -> None:
        self._first: tuple[int, float] | None = None  # the first progress seen: iteration, elapsed_s

    def observe(self, progress: dict[str, Any]) -> None:
        if self._first is None:
            self._first = (progress["iteration"], progress["elapsed_s"])

    def seconds_left(self, progress: dict[str, Any]) -> float | None:
        left = progress["total"] - progress["iteration"]
        if left <= 0:
            return 0.0
        if self._first is None:
            return None
        rounds, seconds = progress["iteration"] - self._first[0], progress["elapsed_s"] - self._first[1]
        if rounds < ETA_MIN_ROUNDS or seconds < ETA_MIN_SPAN_S:
            return None
        eta_s: float = seconds / rounds * left
        return eta_s


def progress_line(progress: dict[str, Any], eta_s: float | None, bar: bool = True) -> str:
    """`round 37/100 [#######-------------]  37%  train_l2 2831.2  elapsed 1.2s  ETA 2.0s`; `ETA -`
    while it is not known."""
    iteration, total = progress["iteration"], progress["total"]
    filled = min(BAR_WIDTH, BAR_WIDTH * iteration // total) if total else BAR_WIDTH
    drawn = f" [{'#' * filled}{'-' * (BAR_WIDTH - filled)}]" if bar else ""
    parts = [f"round {iteration}/{total}{drawn} {progress['percent']:3.0f}%"]
    if progress["metrics"]:
        parts.append(_metrics_text(progress["metrics"]))
    parts.append(f"elapsed {_duration(progress['elapsed_s'])}  ETA {_duration(eta_s)}")
    return "  ".join(parts)


def describe_event(event: Event) -> str:
    data = event.data
    job = f"job {data.get('job_id', '')}"
    if event.type == "queued":
        return f"{job}: queued, position {data['position']} for the {data['device']}"
    if event.type == "restarted":
        return f"{job}: restarted ({data['reason']}); training starts over"
    if event.type == "started":
        valid = f" (+{data['n_valid_rows']} validation)" if data.get("n_valid_rows") else ""
        return (
            f"{job}: training {data['model_type']} {data['objective']} on the {data['device']}: "
            f"{data['n_rows']} rows{valid} x {data['n_features']} features, {data['n_estimators']} rounds"
        )
    if event.type == "complete":
        return (
            f"{job}: done: {data['iterations']} rounds in "
            f"{_duration(data['training_time_s'])}, best {data['best_iteration']}; "
            f"{_metrics_text(data['metrics'])}; artifact {data['artifact_id']}"
        )
    if event.type == "error":
        return f"{job}: failed: {data['code']}: {data['message']}"
    if event.type == "cancelled":
        return f"{job}: cancelled after round {data['iteration']}"
    return f"{job}: {event.type}"


def _metrics_text(metrics: dict[str, float | None]) -> str:
    return "  ".join(f"{name} {'n/a' if value is None else f'{value:.6g}'}" for name, value in metrics.items())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
