"""The Redis deployment's files, read as Docker would read them, without Docker: docker-compose.yml
(Redis, two API replicas, a CPU worker, a GPU worker under the `gpu` profile) and Dockerfile.gpu.
Each command a container runs is put through the real `boostream` argument parser, and the GPU
image's pins are checked against pyproject.toml's `gpu` extra and the product's install recipe."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # PyYAML: installed with uvicorn[standard], one of the package's dependencies
from packaging.requirements import Requirement
from packaging.version import Version

from boostream import cli
from boostream.config import Settings, from_environment

from conftest import RedisServer

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# The services that run `boostream`, and the one that runs Redis.
BOOSTREAM = {name: service for name, service in SERVICES.items() if service.get("command", [None])[0] == "boostream"}
REDIS = "redis"


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """A Dockerfile's instructions, as (KEYWORD, arguments): continued lines joined, comments dropped."""
    found: list[tuple[str, str]] = []
    logical = ""
    for line in (ROOT / dockerfile).read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip():
            keyword, _, arguments = logical.strip().partition(" ")
            found.append((keyword.upper(), arguments.strip()))
        logical = ""
    return found


def shell_commands(dockerfile: str) -> list[list[str]]:
    """The commands of its RUN instructions, split at `&&`, each as the shell's words."""
    return [
        shlex.split(command)
        for keyword, arguments in instructions(dockerfile)
        if keyword == "RUN"
        for command in arguments.split("&&")
    ]


def image_env(dockerfile: str) -> dict[str, str]:
    return dict(
        word.split("=", 1)
        for keyword, arguments in instructions(dockerfile)
        if keyword == "ENV"
        for word in shlex.split(arguments)
    )


def exec_form(dockerfile: str, keyword: str) -> list[str]:
    return json.loads(next(arguments for kind, arguments in instructions(dockerfile) if kind == keyword))


def dockerfile_of(service: dict[str, Any]) -> str:
    build = service["build"]
    assert build.get("context", ".") == ".", "the Dockerfiles copy the repository's root"
    return str(build.get("dockerfile", "Dockerfile"))


def parse(argv: list[str]) -> Any:
    """What `boostream` makes of a command line, by its own parser; nothing is run."""
    assert argv[0] == "boostream", argv
    try:
        return cli._parser().parse_args(argv[1:])
    except SystemExit as exit:  # argparse's refusal: its message is in the captured stderr
        pytest.fail(f"boostream refuses {shlex.join(argv)} (exit {exit.code})")


def published(service: dict[str, Any]) -> list[tuple[str | None, str, int]]:
    """A service's published ports as (host address, host port, container port), from either syntax."""
    found: list[tuple[str | None, str, int]] = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip"), str(port.get("published", "")), int(port["target"])))
            continue
        parts = str(port).split(":")  # [[address:]host port:]container port
        address = ":".join(parts[:-2]) if len(parts) > 2 else None
        found.append((address, parts[-2] if len(parts) > 1 else "", int(parts[-1])))
    return found


def options(argv: list[str]) -> dict[str, str]:
    """`--name value` pairs of a command line."""
    return {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}


# docker-compose.yml


def test_the_compose_file_has_redis_both_api_replicas_and_both_workers():
    commands = {name: parse(service["command"]) for name, service in BOOSTREAM.items()}
    assert sorted(args.command for args in commands.values()) == ["serve", "serve", "worker", "worker"]
    assert sorted(args.device for args in commands.values() if args.command == "worker") == ["cpu", "gpu"]
    assert SERVICES[REDIS]["image"].startswith("redis:")


@pytest.mark.parametrize("name", sorted(BOOSTREAM))
def test_each_process_uses_the_compose_redis_and_waits_until_it_answers(name: str):
    service = BOOSTREAM[name]
    url = urlsplit(parse(service["command"]).redis or "")
    assert (url.scheme, url.hostname, url.port) == ("redis", REDIS, 6379), url.geturl()
    assert service["depends_on"][REDIS]["condition"] == "service_healthy"


def test_all_processes_share_one_redis_database():
    urls = {parse(service["command"]).redis for service in BOOSTREAM.values()}
    assert len(urls) == 1, f"the job state would be split between {sorted(urls)}"


def test_all_processes_get_the_same_signing_key_or_none():
    """Artifacts are signed by a worker and checked by a replica: a key given to some processes and
    not to others (which read the one kept in Redis) would make every artifact fail its check."""
    keys = {repr(service.get("environment", {}).get("BOOSTREAM_SECRET_KEY")) for service in BOOSTREAM.values()}
    assert len(keys) == 1, keys


def test_redis_keeps_its_data_on_a_volume_and_never_evicts_it():
    redis = SERVICES[REDIS]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert options(command) == {
        "--appendonly": "yes",
        "--appendfsync": "everysec",
        "--maxmemory-policy": "noeviction",
    } | {key: value for key, value in options(command).items() if key == "--maxmemory"}
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data" and volume in COMPOSE["volumes"], "the append-only file must outlive the container"
    assert "ports" not in redis, "this Redis has no password: it must not be published"


def test_the_redis_healthcheck_pings_it():
    test = SERVICES[REDIS]["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "redis-cli ping" in " ".join(test[1:])


def test_redis_started_with_the_compose_arguments_passes_the_servers_policy_check(tmp_path: Path):
    """The arguments are ones redis-server takes, and a boostream process accepts the Redis they
    make (it refuses to start on one that could evict job data)."""
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server here: install Debian's redis-server package (.ci/run does)")
    from boostream.jobs.redis_state import RedisState

    async def check(url: str) -> None:
        state = RedisState(url)
        try:
            await state.check_policy()
        finally:
            await state.close()

    server = RedisServer(tmp_path / "redis", *SERVICES[REDIS]["command"][1:])
    server.start()
    try:
        asyncio.run(check(server.url))
    finally:
        server.stop()


@pytest.mark.parametrize("name", sorted(name for name, service in BOOSTREAM.items() if service.get("ports")))
def test_the_api_is_published_on_the_hosts_loopback_only_and_listens_on_all_addresses_inside(name: str):
    service = BOOSTREAM[name]
    args = parse(service["command"])
    assert args.command == "serve"
    env = {**image_env(dockerfile_of(service)), **service.get("environment", {})}
    # As the server resolves them: the option, else the variable (the image's ENV or compose's), else the default.
    host = args.host or env.get("BOOSTREAM_HOST") or Settings().host
    port = args.port or int(env.get("BOOSTREAM_PORT") or Settings().port)
    assert host == "0.0.0.0", "on 127.0.0.1 inside its container, the published port would reach nothing"
    for address, host_port, container_port in published(service):
        assert address == "127.0.0.1", f"{host_port}:{container_port} is published on {address or 'every address'}"
        assert container_port == port, f"{host_port}:{container_port}, but the server listens on {port}"


def test_only_the_api_replicas_are_published_each_on_its_own_host_port():
    ports = {name: published(service) for name, service in SERVICES.items() if service.get("ports")}
    assert all(name in BOOSTREAM and parse(BOOSTREAM[name]["command"]).command == "serve" for name in ports), ports
    host_ports = [host_port for found in ports.values() for _, host_port, _ in found]
    assert all(host_ports) and len(host_ports) == len(set(host_ports)) >= 2, host_ports


@pytest.mark.parametrize("name", sorted(BOOSTREAM))
def test_no_worker_inherits_the_api_images_http_health_check(name: str):
    """The CPU image checks GET :8000/health; a worker serves no HTTP and would be marked unhealthy."""
    service = BOOSTREAM[name]
    if parse(service["command"]).command == "serve":
        return
    if any(keyword == "HEALTHCHECK" for keyword, _ in instructions(dockerfile_of(service))):
        assert service.get("healthcheck", {}).get("disable") is True


@pytest.mark.parametrize("name", sorted(BOOSTREAM))
def test_each_service_builds_from_a_dockerfile_of_the_repository(name: str):
    service = BOOSTREAM[name]
    dockerfile = dockerfile_of(service)
    assert (ROOT / dockerfile).is_file(), dockerfile
    declared = {arguments.split("=")[0] for keyword, arguments in instructions(dockerfile) if keyword == "ARG"}
    unknown = set(service["build"].get("args", {})) - declared
    assert not unknown, f"{dockerfile} declares no ARG {sorted(unknown)}: docker would ignore it"


def test_the_gpu_worker_reserves_an_nvidia_gpu_and_starts_only_with_its_profile():
    gpu = [name for name, service in BOOSTREAM.items() if getattr(parse(service["command"]), "device", "") == "gpu"]
    assert gpu == ["worker-gpu"]
    service = BOOSTREAM["worker-gpu"]
    assert dockerfile_of(service) == "Dockerfile.gpu"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices
    # Without it, `docker compose up` fails on any host without an NVIDIA GPU and its toolkit.
    assert service["profiles"] == ["gpu"]
    others = [name for name, service in SERVICES.items() if name != "worker-gpu" and service.get("profiles")]
    assert not others, f"{others} would not start with a plain `docker compose up`"


@pytest.mark.parametrize("name", sorted(BOOSTREAM))
def test_a_worker_that_exits_when_idle_is_not_restarted_at_once(name: str):
    service = BOOSTREAM[name]
    if getattr(parse(service["command"]), "exit_when_idle", None) is not None:
        assert service.get("restart", "no") in ("no", "on-failure"), "its idle exit (status 0) would be undone"


# Dockerfile.gpu


def test_the_gpu_image_builds_on_a_cuda_devel_image():
    base = next(arguments for keyword, arguments in instructions("Dockerfile.gpu") if keyword == "FROM")
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-devel-ubuntu\d+\.\d+", base), f"{base}: nvcc is in devel images"


def test_the_gpu_image_installs_a_cuda_torch_that_the_gpu_extra_accepts_before_the_extra():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = next(r for r in map(Requirement, project["optional-dependencies"]["gpu"]) if r.name == "torch")
    commands = shell_commands("Dockerfile.gpu")
    torch_at, torch_install = next((i, c) for i, c in enumerate(commands) if any(w.startswith("torch==") for w in c))
    pinned = Version(next(w for w in torch_install if w.startswith("torch==")).removeprefix("torch=="))
    assert wanted.specifier.contains(pinned), f"torch {pinned} does not satisfy the gpu extra's {wanted}"
    # The CUDA wheel index, for the base image's CUDA: nvidia/cuda:12.8.x -> .../whl/cu128.
    base = next(arguments for keyword, arguments in instructions("Dockerfile.gpu") if keyword == "FROM")
    major, minor = re.search(r":(\d+)\.(\d+)\.", base).groups()  # type: ignore[union-attr]
    assert options(torch_install)["--index-url"] == f"https://download.pytorch.org/whl/cu{major}{minor}"
    checked = re.findall(r"torch\.version\.cuda == '([\d.]+)'", (ROOT / "Dockerfile.gpu").read_text())
    assert set(checked) <= {f"{major}.{minor}"}, f"the build checks for CUDA {checked}, the base image has {base}"
    # Installed first, so that the extra finds its requirement met rather than bringing PyPI's torch.
    extra_at = next(i for i, c in enumerate(commands) if ".[gpu]" in c)
    assert torch_at < extra_at


def test_the_gpu_image_builds_warpgbm_as_the_product_says_against_its_torch():
    from boostream.trainers.warpgbm import INSTALL_RECIPE

    version = re.search(r"warpgbm==(\S+)", INSTALL_RECIPE).group(1)  # type: ignore[union-attr]
    commands = shell_commands("Dockerfile.gpu")
    install = next(c for c in commands if any(word.startswith("warpgbm") for word in c))
    assert f"warpgbm=={version}" in install
    assert "--no-build-isolation" in install, "in an isolated build WarpGBM cannot see torch: no CUDA extension"
    assert "--no-deps" in install
    # Built for the architectures the build argument names (no GPU is visible during `docker build`).
    assert install[0] == "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST", install
    args = [arguments for keyword, arguments in instructions("Dockerfile.gpu") if keyword == "ARG"]
    assert any(re.fullmatch(r'TORCH_CUDA_ARCH_LIST="?[0-9.;+ ]+"?', arguments) for arguments in args), args
    # setuptools (with wheel) builds it once build isolation is off: it must be installed before.
    setuptools_at = next(i for i, c in enumerate(commands) if c[:2] == ["pip", "install"] and "setuptools" in c)
    assert setuptools_at < commands.index(install)


def test_the_gpu_image_runs_a_gpu_worker_as_a_non_root_user_with_the_redis_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
):
    users = [arguments for keyword, arguments in instructions("Dockerfile.gpu") if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    command = exec_form("Dockerfile.gpu", "CMD")
    args = parse(command)
    assert (args.command, args.device) == ("worker", "gpu")
    # No --redis in the image: the worker takes BOOSTREAM_REDIS, as `_worker` reads its settings.
    monkeypatch.setenv("BOOSTREAM_REDIS", "redis://redis.example:6379/0")
    assert from_environment(redis=args.redis).redis == "redis://redis.example:6379/0"
