"""Server settings: one frozen record, filled from command-line options or BOOSTREAM_* variables."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import platformdirs

ENV_PREFIX = "BOOSTREAM_"
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("boostream"))


WHEN_NO_WORKER = ("auto", "wait", "refuse")  # Settings.when_no_worker


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = dataclasses.field(default_factory=_default_data_dir)
    # Concurrent trainings per device; jobs beyond these wait, in order, as `queued`.
    cpu_jobs: int = 2
    gpu_jobs: int = 1
    # LightGBM threads per CPU job; 0: every core for a job that starts alone, the cores shared out
    # among the jobs that train at once (a job's share falls when another starts), so that a lone
    # job trains as fast as it can and concurrent ones never oversubscribe the machine.
    threads_per_job: int = 0
    # A worker whose own memory passes this many MiB is killed and its job fails `out_of_memory`;
    # 0: three quarters of the machine's memory (its container's, where that is less).
    worker_memory_mb: int = 0
    # How long a job asked to stop (cancel, timeout) may take to finish its round before its
    # worker is killed.
    stop_grace_s: float = 1.0
    # Job state in this Redis (redis://HOST:PORT/DB), shared with other API processes and with
    # workers (`boostream worker`), which do the training; empty: this process keeps it (SQLite)
    # and trains on worker processes of its own.
    redis: str = ""
    # Largest table (its arrays) a job may keep in Redis until it ends; a larger one is refused.
    max_table_bytes: int = 2 * 1024**3
    # With Redis: a directory that every API process and worker mounts (NFS, say; at any path),
    # where tables wait for their jobs instead of in Redis; empty: in Redis.
    shared_dir: str = ""
    # With Redis, what a job gets while no worker for its device is up: `refuse` (503), `wait` (it
    # is queued, and says that it waits for a worker), or `auto`: wait where a worker for that
    # device has been up before (it exits when idle, and an autoscaler brings it back), else refuse.
    when_no_worker: str = "auto"
    # Jobs that may wait per device; one more is refused with 429.
    max_queued: int = 100
    # No job trains longer than this; a request may ask for less with `timeout_s`.
    max_training_s: float = 6 * 3600.0
    # Finished jobs, their events and artifacts are removed this long after they end.
    job_ttl_s: float = 7 * 24 * 3600.0
    # Datasets (POST /datasets) are removed this long after they were last made or trained on.
    dataset_ttl_s: float = 7 * 24 * 3600.0
    # Hosts that `callback_url` may name, comma-separated (`host` or `host:port`; `*` for any).
    # Empty: no webhooks.
    webhook_hosts: str = ""
    # Serve everyone without API keys, even on an address beyond loopback (where the server refuses
    # to start without keys otherwise). Without keys created, a server on loopback serves everyone.
    no_auth: bool = False
    # Besides loopback and the bound address: the host names clients reach this server by (`host`
    # or `host:port`; a request for another `Host` gets 421), comma-separated.
    allowed_hosts: str = ""
    # Browser origins (`scheme://host[:port]`, `:*` for any port), comma-separated, whose pages may
    # call this server (CORS, and /mcp), besides pages it serves itself.
    allowed_origins: str = ""
    # How long a browser stays signed in with the session cookie that `POST /session` sets.
    session_ttl_s: float = 12 * 3600.0
    # Per API key: jobs it may have waiting or training at once, and requests a second it may send
    # (in bursts of twice as many), counted by each API process; 0: no limit.
    key_max_jobs: int = 20
    key_requests_per_s: float = 50.0
    # The key that webhooks, artifacts and sessions are signed with (a key for each derived from
    # it); empty: one generated and kept in the data dir (or in Redis).
    secret_key: str = ""
    # Models kept loaded for /predict, counted by the size of their native form.
    model_cache_bytes: int = 512 * 1024**2
    max_body_bytes: int = 2 * 1024**3
    max_cells: int = 200_000_000
    progress_interval_s: float = 0.1
    heartbeat_s: float = 15.0
    send_timeout_s: float = 30.0
    # A request whose headers have not come whole this long after the connection opened (or after
    # the request's first byte, on a kept-alive connection) is answered 408 and its connection closed.
    header_timeout_s: float = 10.0
    # A request body that goes this long without a byte is refused (408).
    body_idle_timeout_s: float = 30.0
    log_level: str = "info"

    @property
    def lightgbm_threads(self) -> int:
        return threads_per_job(self.threads_per_job)

    @property
    def predict_threads(self) -> int:
        """LightGBM threads for /predict in the API process: those of a job, or where the cores are
        shared out, the share of each of `cpu_jobs` (predictions run beside training)."""
        return self.threads_per_job or max(1, machine_cores() // max(1, self.cpu_jobs))

    @property
    def shared_cores(self) -> int:
        """The cores the CPU jobs share out among themselves; 0 where each has its fixed threads."""
        return shared_cores(self.threads_per_job)

    @property
    def worker_memory_bytes(self) -> int:
        """0: no limit (the machine's memory is unknown)."""
        if self.worker_memory_mb > 0:
            return self.worker_memory_mb * 1024**2
        return (machine_memory_bytes() or 0) * 3 // 4

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def shared_path(self) -> Path | None:
        return Path(self.shared_dir).expanduser() if self.redis and self.shared_dir else None

    @property
    def inputs_dir(self) -> Path:
        """Where decoded tables are written: the shared directory's, with Redis and one."""
        return self.shared_path / "inputs" if self.shared_path is not None else self.data_dir / "inputs"

    @property
    def datasets_dir(self) -> Path:
        """Where datasets are kept: the shared directory's, with Redis and one (every replica sees them)."""
        return self.shared_path / "datasets" if self.shared_path is not None else self.data_dir / "datasets"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "secret.key"

    @property
    def allowed_webhook_hosts(self) -> tuple[str, ...]:
        return _items(self.webhook_hosts)

    @property
    def extra_hosts(self) -> tuple[str, ...]:
        return _items(self.allowed_hosts)

    @property
    def extra_origins(self) -> tuple[str, ...]:
        return _items(self.allowed_origins)


def _items(listed: str) -> tuple[str, ...]:
    """The entries of a comma-separated setting."""
    return tuple(item.strip() for item in listed.split(",") if item.strip())


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def from_environment(**overrides: object) -> Settings:
    """Settings from BOOSTREAM_* variables, then `overrides` (options given on the command line)."""
    values: dict[str, object] = {}
    for field in dataclasses.fields(Settings):
        raw = os.environ.get(env_name(field.name))
        if raw is not None:
            values[field.name] = _convert(field, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "data_dir" in values:
        values["data_dir"] = Path(str(values["data_dir"])).expanduser()
    return Settings(**values)  # type: ignore[arg-type]


def _convert(field: dataclasses.Field[Any], raw: str) -> object:
    if str(field.type) == "bool":
        if raw.strip().lower() not in TRUE + FALSE:
            raise SystemExit(f"{env_name(field.name)}={raw!r} is not one of {', '.join(TRUE + FALSE)}")
        return raw.strip().lower() in TRUE
    kind = {"int": int, "float": float}.get(str(field.type))
    try:
        return kind(raw) if kind else raw
    except ValueError:
        raise SystemExit(f"{env_name(field.name)}={raw!r} is not a valid {field.type}") from None


def threads_per_job(asked: int) -> int:
    """LightGBM's `num_threads` for a job: `asked`, or 0 for every core (shared out among the jobs
    running at once, `shared_cores`)."""
    return asked if asked > 0 else machine_cores()


def shared_cores(asked: int) -> int:
    """The cores that the jobs running at once share out (`LocalWorkers`); 0 where the threads per
    job were asked for, and are each job's whatever else runs."""
    return 0 if asked > 0 else machine_cores()


def machine_cores() -> int:
    """The cores this process may use: those it may run on, fewer where its container's CPU quota
    (cgroup v2 `cpu.max`, Docker's `cpus:`) allows less."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return cores
    if quota.isdigit() and period.isdigit() and int(period) > 0:
        return max(1, min(cores, math.ceil(int(quota) / int(period))))
    return cores  # "max": no quota


def machine_memory_bytes() -> int | None:
    """The memory this process may use at most: the machine's, or its container's (cgroup v2)
    where that is less; None where the system does not say."""
    try:
        total: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        total = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    if limit.isdigit() and (total is None or int(limit) < total):
        return int(limit)
    return total
