"""What the memory-reuse pool (`--keep-memory-s`, boostream/streaming_server/pages.py) gained end to
end: the same Parquet request to two servers side by side, one that keeps a decoded X's memory for
the next table of about its size and one that keeps none. Its figures (docs/benchmarks.md, "Memory
reuse") are why the pool was removed; it runs against the last commit that had it, 23866ec:

    git worktree add /tmp/with-pool 23866ec && cp bench/memory_reuse.py /tmp/with-pool/bench/
    cd /tmp/with-pool && python bench/memory_reuse.py

    python bench/memory_reuse.py                         # 1M x 50, 200 rounds, 3 pairs, 2 in-process fits
    python bench/memory_reuse.py --rounds 100 --inproc 1 # the three runs of 2026-11-30 (about 9 minutes, loaded)
    python bench/memory_reuse.py --rows 100000 --cols 20 --rounds 50 --repeats 2   # a quick check

One synthetic regression table (`_common.regression_data`, fixed seed; feature columns f0.. and the
label y) is written to a temporary Parquet file (pyarrow's defaults, as bench/ingest.py writes it)
and read into memory once. Two servers run at once, each `python -m boostream serve --cpu-jobs 1
--threads-per-job THREADS --log-level warning` with its own temporary data directory:

  pool     --keep-memory-s 60   (the default: X's memory waits 60 s for the next table of its size)
  no-pool  --keep-memory-s 0    (nothing kept: every X is fresh memory)

Each request is `POST /train/stream` with the Parquet body (Content-Type
application/vnd.apache.parquet, query `target=y&n_estimators=ROUNDS`, every other field and
parameter the server's default: LightGBM, regression), timed from just before sending to the receipt
of the `complete` event (`_common.stream_train`), with the server's own `timings` (receive_s,
decode_s, fit_s). The first request to each server is the cold one (fresh memory on both; the pool
has nothing yet) and is reported apart; the two cold requests always run pool first, so the order,
not the pool, may part them. Then the warm requests alternate: pool, no-pool, pool, no-pool, ...
(--repeats pairs), so the pool's next request follows its previous one by one no-pool request:
within the 60 s it keeps memory for as long as a request lasts less than that (on a loaded machine
it may not; the blocks each server keeps are read from /health before each request and printed,
and the summary counts the pool's requests that found one). The pool can only help such a repeat
request of the same size.

Last, the same LightGBM training in process, --inproc times (bench/e2e_overhead.py's
`in_process_fit`: the server's parameters and defaults, the same thread count), for the ratio
e2e / in-process; it runs after the servers' requests so that it does not lengthen the pool's gap.

Reported per arm (warm requests): median e2e, receive_s, decode_s, fit_s and e2e - fit_s (what the
request cost beyond its fit), and the gain of the pool:
  gain = (no-pool e2e - pool e2e) / no-pool e2e  (medians), and per pair;
  gain with the fit's noise taken out = (no-pool (e2e - fit_s) - pool (e2e - fit_s)) / no-pool e2e
  (medians; the fit is the same LightGBM call in both and varies from run to run by about +-10% on
  a quiet 2-core machine, by several times under other work, more than the pool can change).
The project's rule: keep the pool only if it gains at least 10% end to end on 1M x 50 Parquet in
three runs at different times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from _common import (  # noqa: E402
    REPO_ROOT,
    Server,
    Watchdog,
    e2e_figures,
    free_memory,
    median,
    print_e2e,
    print_header,
    regression_data,
    size_label,
    stream_train,
)

PARQUET = "application/vnd.apache.parquet"
TARGET = "y"
GAIN_RULE_PCT = 10.0
ARMS = {"pool": 60.0, "no-pool": 0.0}  # --keep-memory-s of each server
KEYS = ("e2e_s", "receive_s", "decode_s", "fit_s", "beyond_fit_s")


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    pressure = ""
    try:
        with open("/proc/pressure/cpu") as file:
            some = file.readline().split()  # some avg10=.. avg60=.. avg300=.. total=..
        pressure = "; cpu pressure (some) " + " ".join(some[1:4])
    except (OSError, IndexError):
        pass
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}{pressure}"


def commit_line() -> str:
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO_ROOT), *args], check=False, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None

    head = git("rev-parse", "--short", "HEAD")
    if head is None or head.returncode != 0:
        return "unknown (not a git checkout)"
    changed = git("diff", "--quiet", "HEAD", "--", "boostream")
    dirty = " (the package has uncommitted changes)" if changed is not None and changed.returncode == 1 else ""
    return head.stdout.strip() + dirty


def write_parquet(path: Path, X, y) -> None:
    table = pa.table({**{f"f{i}": X[:, i] for i in range(X.shape[1])}, TARGET: y})
    pq.write_table(table, path)


def kept(client: httpx.Client, server: Server) -> tuple[int, str]:
    """What the server keeps for reuse now (GET /health's `memory`): blocks, and as text."""
    try:
        memory = client.get(server.url + "/health", timeout=10.0).json().get("memory", {})
        blocks = int(memory.get("kept_blocks", -1))
        return blocks, f"{blocks} block(s), {memory.get('kept_bytes', 0) / 2**20:.0f} MiB"
    except (httpx.HTTPError, ValueError, TypeError) as error:
        return -1, f"? ({error.__class__.__name__})"


def request(client: httpx.Client, server: Server, body: bytes, rounds: int) -> dict[str, Any]:
    free_memory()
    run = stream_train(
        client,
        server.url,
        body,
        timeout_s=900.0,
        content_type=PARQUET,
        params={"target": TARGET, "n_estimators": str(rounds)},
    )
    figures = e2e_figures(run)
    figures["beyond_fit_s"] = figures["e2e_s"] - figures["fit_s"]
    figures["train_l2"] = run.complete["metrics"].get("train_l2")
    return figures


def show(label: str, arm: str, before: str, r: dict[str, Any]) -> None:
    print(f"  {label:<8} {arm:<7} kept before: {before}; load average {os.getloadavg()[0]:.2f} after")
    print_e2e("", r)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200, help="boosting rounds, n_estimators (default 200)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="warm pool / no-pool pairs after the cold requests (default 3)"
    )
    parser.add_argument(
        "--inproc",
        type=int,
        default=2,
        help="in-process fits at the end, for the ratio e2e / in-process (default 2; 0: none)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="LightGBM threads, servers and in process (default: all cores)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=720.0, help="hard limit for the whole run (default 720)")
    args = parser.parse_args()

    print_header(f"memory_reuse: --keep-memory-s 60 vs 0, Parquet {size_label(args.rows, args.cols)} end to end")
    print(f"# commit: {commit_line()}")
    print(f"# at start: {load_line()}")
    sys.stdout.flush()
    started_run = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    cold: dict[str, dict[str, Any]] = {}
    with Watchdog(args.max_seconds), tempfile.TemporaryDirectory(prefix="boostream-reuse-") as folder:
        started = time.perf_counter()
        X, y = regression_data(args.rows, args.cols, args.seed)
        path = Path(folder) / "table.parquet"
        write_parquet(path, X, y)
        body = path.read_bytes()
        print(
            f"# table: {size_label(args.rows, args.cols)} (X {X.nbytes / 2**20:.0f} MiB); Parquet "
            f"{len(body) / 1e6:.1f} MB, written in {time.perf_counter() - started:.1f} s (not timed)"
        )
        servers = {
            arm: Server(cpu_jobs=1, threads_per_job=args.threads, extra_args=["--keep-memory-s", f"{keep:g}"])
            for arm, keep in ARMS.items()
        }
        try:
            for arm, server in servers.items():
                server.start()
                print(f"# server {arm}: {' '.join(server.command[1:])}")
            sys.stdout.flush()
            with httpx.Client() as client:
                print(
                    f"\n## {args.rounds} rounds, {args.threads} threads; "
                    f"cold requests, then {args.repeats} interleaved pairs"
                )
                for arm, server in servers.items():
                    before = kept(client, server)[1]
                    cold[arm] = request(client, server, body, args.rounds)
                    show("cold", arm, before, cold[arm])
                for i in range(args.repeats):
                    for arm, server in servers.items():
                        blocks, before = kept(client, server)
                        runs[arm].append(request(client, server, body, args.rounds) | {"kept_blocks": blocks})
                        show(f"warm {i + 1}", arm, before, runs[arm][-1])
                for arm, server in servers.items():
                    print(
                        f"  server {arm}: kept now {kept(client, server)[1]}; peak RSS "
                        f"{server.peak_rss_mib():.0f} MiB, now {server.rss_mib():.0f} MiB"
                    )
        finally:
            for server in servers.values():
                server.stop()
        del body
        inproc_s: list[float] = []
        inproc_l2 = None
        if args.inproc > 0:
            from e2e_overhead import in_process_fit

            for i in range(args.inproc):
                free_memory()
                seconds, inproc_l2 = in_process_fit(X, y, args.rounds, args.threads)
                inproc_s.append(seconds)
                print(f"  in-proc {i + 1:<2} {seconds:7.3f} s  (final train l2 {inproc_l2:.6g})")
                sys.stdout.flush()
        del X, y
        free_memory()

    if inproc_l2 is not None:
        print(
            f"  same model: server train_l2 {runs['pool'][-1]['train_l2']:.6g} (pool), "
            f"{runs['no-pool'][-1]['train_l2']:.6g} (no-pool) vs in-process {inproc_l2:.6g}"
        )
    summarize(runs, cold, inproc_s, args)
    print(
        f"# at end: {load_line()}; {time.perf_counter() - started_run:.0f} "
        f"s in all; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )
    return 0


def summarize(
    runs: dict[str, list[dict[str, Any]]],
    cold: dict[str, dict[str, Any]],
    inproc_s: list[float],
    args: argparse.Namespace,
) -> None:
    inproc = median(inproc_s) if inproc_s else float("nan")
    print(
        f"\n## summary ({size_label(args.rows, args.cols)}, {args.rounds} rounds, {args.threads} "
        f"threads; warm = median of {args.repeats}; in-process median {inproc:.3f} s of {len(inproc_s)})"
    )
    print(
        f"{'arm':<8} {'run':<5} {'e2e s':>8} {'receive s':>9} "
        f"{'decode s':>8} {'fit s':>8} {'e2e-fit s':>9} {'e2e/in-proc':>11}"
    )
    med: dict[str, dict[str, float]] = {}
    for arm in ARMS:
        med[arm] = {key: median([r[key] for r in runs[arm]]) for key in KEYS}
        for label, r in (("warm", med[arm]), ("cold", cold[arm])):
            print(
                f"{arm:<8} {label:<5} {r['e2e_s']:8.3f} {r['receive_s']:9.3f} {r['decode_s']:8.3f} "
                f"{r['fit_s']:8.3f} {r['beyond_fit_s']:9.3f} {r['e2e_s'] / inproc:11.3f}"
            )
    pool, nopool = med["pool"], med["no-pool"]
    gain = 100.0 * (nopool["e2e_s"] - pool["e2e_s"]) / nopool["e2e_s"]
    pairs = [100.0 * (b["e2e_s"] - a["e2e_s"]) / b["e2e_s"] for a, b in zip(runs["pool"], runs["no-pool"], strict=True)]
    steady = 100.0 * (nopool["beyond_fit_s"] - pool["beyond_fit_s"]) / nopool["e2e_s"]
    cold_gain = 100.0 * (cold["no-pool"]["e2e_s"] - cold["pool"]["e2e_s"]) / cold["no-pool"]["e2e_s"]
    found = sum(1 for r in runs["pool"] if r["kept_blocks"] > 0)
    print(f"warm pool requests that found a kept block: {found} of {len(runs['pool'])} (none is kept longer than 60 s)")
    print(
        f"decode_s, warm: pool {pool['decode_s']:.3f} s, no-pool {nopool['decode_s']:.3f} "
        f"s ({nopool['decode_s'] - pool['decode_s']:+.3f} s without the pool)"
    )
    print(
        "gain of pool over no-pool, warm, (no-pool e2e - pool e2e) / no-pool e2e: "
        f"{gain:+.1f}% (medians); per pair: {', '.join(f'{p:+.1f}%' for p in pairs)}"
    )
    print(
        "gain with the fit's noise taken out, (no-pool (e2e-fit) - pool (e2e-fit)) / "
        f"no-pool e2e: {steady:+.1f}% ({nopool['beyond_fit_s'] - pool['beyond_fit_s']:+.3f} s)"
    )
    split = "; ".join(
        f"{b['e2e_s'] - a['e2e_s']:+.3f} s = fit {b['fit_s'] - a['fit_s']:+.3f} "
        f"+ beyond the fit {b['beyond_fit_s'] - a['beyond_fit_s']:+.3f}"
        for a, b in zip(runs["pool"], runs["no-pool"], strict=True)
    )
    print(f"per pair, no-pool minus pool: {split}")
    helped = [(a, b) for a, b in zip(runs["pool"], runs["no-pool"], strict=True) if a["kept_blocks"] > 0]
    if helped and len(helped) < len(runs["pool"]):
        e2e_gain = median([100.0 * (b["e2e_s"] - a["e2e_s"]) / b["e2e_s"] for a, b in helped])
        beyond_gain = median([100.0 * (b["beyond_fit_s"] - a["beyond_fit_s"]) / b["e2e_s"] for a, b in helped])
        print(
            f"only the {len(helped)} pair(s) whose pool request found a kept block (medians "
            f"of the pairs): e2e {e2e_gain:+.1f}%; without the fit's noise {beyond_gain:+.1f}%"
        )
    print(
        f"fit_s, warm: pool {pool['fit_s']:.3f} s, no-pool {nopool['fit_s']:.3f} s "
        "(the same LightGBM call in both: a difference there is noise, not the pool)"
    )
    print(
        f"cold requests (no pool can help there): pool {cold['pool']['e2e_s']:.3f} s, "
        f"no-pool {cold['no-pool']['e2e_s']:.3f} s ({cold_gain:+.1f}%, the two servers alike)"
    )

    def met(value: float) -> str:
        return "MET" if value >= GAIN_RULE_PCT else "NOT MET"

    print(
        f"rule (pool gains >= {GAIN_RULE_PCT:g}% end to end), this run: e2e medians "
        f"{gain:+.1f}% -> {met(gain)}; without the fit's noise {steady:+.1f}% -> {met(steady)}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
