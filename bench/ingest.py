"""Ingestion of the same table as JSON, CSV, Parquet and Arrow: decoding alone, and training end to end.

One synthetic regression table (fixed seed; 50 feature columns f0.. and the label y) is written to a
temporary folder four ways: the JSON body of POST /train/stream (orjson), CSV, Parquet (pyarrow,
its defaults: snappy, one row group per 1M rows) and an Arrow IPC stream (pyarrow, uncompressed).
All four hold exactly the same doubles.

  (a) decode only, in process, each format in a fresh subprocess so that their peaks do not mix:
      the server's `decode_train_request` on the JSON body (read into memory first, as the server
      holds it), `decode_table_request` on the CSV, Parquet and Arrow files (on disk, as the server
      spools them). Each subprocess decodes twice: `cold` is the first decode (fresh memory to fault in,
      pyarrow's or simdjson's first use), `warm` the second, as a long-running server would.
      Reported: seconds, CPU seconds, MB/s of the source bytes, and the peak resident memory above
      the subprocess's before it loaded anything (VmHWM - VmRSS; the JSON body in memory counts).
      Targets: Parquet decodes at least 5x faster than JSON, Arrow at least 3x faster than Parquet
      (the same table, warm and cold).
  (b) end to end: the Parquet and the Arrow body POSTed to /train/stream (fields in the query
      string) with LightGBM, --rounds rounds, against the same training in process
      (bench/e2e_overhead.py's in_process_fit: the server's parameters, every core); the timer
      runs from just before sending to the receipt of `complete`. The server runs with its
      defaults (a job alone trains on every core). The first request is reported as cold; then
      in-process fits and requests alternate. Targets: e2e / in-process <= 1.05 with Parquet,
      <= 1.03 with Arrow (medians). The JSON body once, for contrast.

    python bench/ingest.py                                   # 1M x 50, 200 rounds
    python bench/ingest.py --rows 100000 --cols 20 --rounds 50 --repeats 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from _common import (  # noqa: E402
    Server,
    TrainError,
    Watchdog,
    body_chunks,
    e2e_figures,
    free_memory,
    median,
    print_e2e,
    print_header,
    regression_data,
    size_label,
    stream_train,
    train_body,
    verdict,
)

FORMATS = ("json", "csv", "parquet", "arrow")
CONTENT_TYPES = {
    "json": "application/json",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
}
TARGET = "y"
PARQUET_SPEEDUP_TARGET = 5.0
ARROW_SPEEDUP_TARGET = 3.0
E2E_FORMATS = ("parquet", "arrow")
E2E_RATIO_TARGETS = {"parquet": 1.05, "arrow": 1.03}  # e2e / in-process, the targets


# ----------------------------------------------------------------------------------------------
# The table, three ways


def write_sources(folder: Path, X: np.ndarray, y: np.ndarray, rounds: int) -> dict[str, Path]:
    paths = {kind: folder / f"table.{kind}" for kind in FORMATS}
    paths["json"].write_bytes(train_body("lightgbm", X, y, {"n_estimators": rounds}))
    table = pa.table({**{f"f{i}": X[:, i] for i in range(X.shape[1])}, TARGET: y})
    pcsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    with pa.ipc.new_stream(str(paths["arrow"]), table.schema) as writer:
        writer.write_table(table)
    return paths


def table_fields(rounds: int) -> dict[str, str]:
    """The fields of a table request (CSV, Parquet, Arrow) that match the JSON body's."""
    return {"target": TARGET, "model_type": "lightgbm", "n_estimators": str(rounds)}


# ----------------------------------------------------------------------------------------------
# (a) decoding, one format per subprocess


def decode_in_subprocess(kind: str, path: Path, rounds: int, threads: int) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--decode-child",
        kind,
        str(path),
        "--rounds",
        str(rounds),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"decoding {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def decode_child(kind: str, path: Path, rounds: int, threads: int) -> None:
    """Runs in the subprocess: decode the file twice, print one JSON line of figures."""
    from boostream.memory import avoid_huge_pages
    from boostream.requests.json_body import decode_train_request
    from boostream.requests.tables import decode_table_request
    from boostream.trainers import create_trainers

    avoid_huge_pages()  # as `boostream serve` does

    trainers = create_trainers(threads)
    rss_before = proc_status_mib("VmRSS")
    if kind == "json":
        body = bytearray(path.stat().st_size)  # one buffer, as the server reads a body
        with open(path, "rb") as file:
            file.readinto(body)

        def decode():
            return decode_train_request(body, trainers, {}, 10**12)
    else:

        def decode():
            with open(path, "rb") as file:
                return decode_table_request(file, kind, table_fields(rounds), trainers, {}, 10**12)

    figures: dict[str, Any] = {}
    for run in ("cold", "warm"):
        wall, cpu = time.perf_counter(), time.process_time()
        spec = decode()
        figures[f"{run}_s"] = time.perf_counter() - wall
        figures[f"{run}_cpu_s"] = time.process_time() - cpu
        X, y = spec.data.X, spec.data.y
        figures["checksum"] = [values_sha256(X), hashlib.sha256(y).hexdigest()[:16], list(X.shape)]
        figures["order"] = "C" if X.flags["C_CONTIGUOUS"] else "F"
        del spec, X, y
        free_memory()
    figures["peak_mib"] = proc_status_mib("VmHWM") - rss_before
    print(json.dumps(figures))


def values_sha256(X: np.ndarray) -> str:
    """The same for the same values, whatever X's memory order; a column at a time, not a copy of X
    (which would count in the peak)."""
    digest = hashlib.sha256()
    for column in range(X.shape[1]):
        digest.update(np.ascontiguousarray(X[:, column]))
    return digest.hexdigest()[:16]


def proc_status_mib(key: str) -> float:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def bench_decoding(paths: dict[str, Path], args: argparse.Namespace, x_mib: float) -> dict[str, dict[str, float]]:
    print(f"\n## (a) decode only, in process; each format in {args.repeats} fresh subprocess(es), two decodes each")
    print(
        f"{'format':<8} {'source MB':>9} {'run':>3} {'cold s':>7} {'cpu s':>6} "
        f"{'warm s':>7} {'cpu s':>6} {'cold MB/s':>9} {'warm MB/s':>9} {'peak +MiB':>9}"
    )
    results: dict[str, dict[str, float]] = {}
    checksums, orders = {}, {}
    for kind in FORMATS:
        size_mb = paths[kind].stat().st_size / 1e6
        runs = []
        for repeat in range(args.repeats):
            r = decode_in_subprocess(kind, paths[kind], args.rounds, args.threads)
            runs.append(r)
            checksums[kind], orders[kind] = r["checksum"], r["order"]
            print(
                f"{kind:<8} {size_mb:9.1f} {repeat + 1:>3} {r['cold_s']:7.3f} "
                f"{r['cold_cpu_s']:6.2f} {r['warm_s']:7.3f} {r['warm_cpu_s']:6.2f}"
                f" {size_mb / r['cold_s']:9.1f} {size_mb / r['warm_s']:9.1f} {r['peak_mib']:9.0f}"
            )
            sys.stdout.flush()
        results[kind] = {
            key: median([r[key] for r in runs]) for key in ("cold_s", "warm_s", "cold_cpu_s", "warm_cpu_s", "peak_mib")
        }
        results[kind]["size_mb"] = size_mb
    same = len({json.dumps(c) for c in checksums.values()}) == 1
    print(
        f"  X is {x_mib:.0f} MiB; all four decoded the same X and y (sha256 of X's values "
        f"in C order and of y, shape): {same} {checksums['parquet']}; X's order: {orders}"
    )
    return results


# ----------------------------------------------------------------------------------------------
# (b) end to end


def upload_seconds(client: httpx.Client, server: Server, body: bytes) -> float:
    """Sending and spooling the Parquet body alone: with a `target` that names no column, the server
    answers 400 as soon as it has read the file's footer."""
    headers = {"content-type": CONTENT_TYPES["parquet"], "content-length": str(len(body))}
    sent = time.perf_counter()
    response = client.post(
        server.url + "/train/stream",
        params={"target": "no such column"},
        content=body_chunks(body),
        headers=headers,
        timeout=300.0,
    )
    elapsed = time.perf_counter() - sent
    if response.status_code != 400:
        raise TrainError(f"expected a 400, got {response.status_code}: {response.text[:500]}")
    return elapsed


def e2e(client: httpx.Client, server: Server, body: bytes, kind: str, rounds: int) -> dict[str, Any]:
    if kind == "json":
        run = stream_train(client, server.url, body, timeout_s=900.0)
    else:
        run = stream_train(
            client, server.url, body, timeout_s=900.0, content_type=CONTENT_TYPES[kind], params=table_fields(rounds)
        )
    return e2e_figures(run) | {"train_l2": run.complete["metrics"].get("train_l2")}


def bench_end_to_end(paths: dict[str, Path], X: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    from e2e_overhead import in_process_fit

    print(
        f"\n## (b) end to end: POST /train/stream vs in-process LightGBM, {args.rounds} rounds; the server"
        f" with its defaults, in process {args.threads} threads"
    )
    results: dict[str, Any] = {}
    with Server() as server, httpx.Client() as client:  # its defaults: a job alone takes every core
        print(f"# server: {' '.join(server.command[1:])}")
        bodies = {kind: paths[kind].read_bytes() for kind in E2E_FORMATS}
        cold = e2e(client, server, bodies["parquet"], "parquet", args.rounds)
        print_e2e("pq cold", cold)
        inproc_s, runs, inproc_l2 = [], {kind: [] for kind in E2E_FORMATS}, None
        for i in range(args.repeats):
            free_memory()
            seconds, inproc_l2 = in_process_fit(X, y, args.rounds, args.threads)
            inproc_s.append(seconds)
            print(f"  in-proc {i + 1:<2} {seconds:7.3f} s  (final train l2 {inproc_l2:.6g})")
            sys.stdout.flush()
            for kind in E2E_FORMATS:
                free_memory()
                runs[kind].append(e2e(client, server, bodies[kind], kind, args.rounds))
                print_e2e(f"{kind[:5]} {i + 1}", runs[kind][-1])
        results["upload_s"] = median(
            [upload_seconds(client, server, bodies["parquet"]) for _ in range(max(2, args.repeats))]
        )
        print(
            "  sending and spooling the Parquet body alone (answered "
            f"400 after its footer): {results['upload_s']:.3f} s (median)"
        )
        del bodies
        for kind in E2E_FORMATS:
            results[kind] = {
                key: median([r[key] for r in runs[kind]])
                for key in ("e2e_s", "headers_s", "decode_s", "fit_s", "artifact_s", "outside_s")
            }
            results[kind]["beyond_fit_s"] = [r["e2e_s"] - r["fit_s"] for r in runs[kind]]
        results["parquet_cold"] = cold
        results["inproc_s"] = median(inproc_s)
        print(f"  same model: server train_l2 {runs['arrow'][-1]['train_l2']:.6g} vs in-process {inproc_l2:.6g}")
        results["server_peak_mib"] = server.peak_rss_mib()
        print(f"  server peak RSS after the Parquet and Arrow requests: {results['server_peak_mib']:.0f} MiB")
        if args.json_e2e:
            free_memory()
            body = paths["json"].read_bytes()
            results["json"] = e2e(client, server, body, "json", args.rounds)
            del body
            print_e2e("json", results["json"])
            print(f"  server peak RSS after the JSON request too: {server.peak_rss_mib():.0f} MiB")
    return results


# ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200, help="boosting rounds end to end (default 200)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="decode subprocesses per format, and in-process / e2e pairs (default 2)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="LightGBM threads, server and in process (default: all cores)",
    )
    parser.add_argument("--no-json-e2e", dest="json_e2e", action="store_false", help="skip the JSON request end to end")
    parser.add_argument("--no-decode", dest="decode", action="store_false", help="skip part (a)")
    parser.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip part (b)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard limit for the whole run (default 900)")
    parser.add_argument("--decode-child", nargs=2, metavar=("FORMAT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decode_child:
        decode_child(args.decode_child[0], Path(args.decode_child[1]), args.rounds, args.threads)
        return 0

    print_header(f"ingest: JSON, CSV, Parquet and Arrow bodies of {size_label(args.rows, args.cols)}")
    with Watchdog(args.max_seconds), tempfile.TemporaryDirectory(prefix="boostream-ingest-") as folder:
        started = time.perf_counter()
        X, y = regression_data(args.rows, args.cols, args.seed)
        paths = write_sources(Path(folder), X, y, args.rounds)
        sizes = ", ".join(f"{kind} {path.stat().st_size / 1e6:.1f} MB" for kind, path in paths.items())
        print(f"# sources: {sizes} (written in {time.perf_counter() - started:.1f} s, not timed)")
        decoded = bench_decoding(paths, args, X.nbytes / 2**20) if args.decode else None
        ended = bench_end_to_end(paths, X, y, args) if args.e2e else None
    summarize(decoded, ended)
    return 0


def summarize(decoded: dict[str, dict[str, float]] | None, ended: dict[str, Any] | None) -> None:
    print("\n## summary (medians)")
    if decoded is not None:
        print(f"{'format':<8} {'MB':>7} {'cold s':>7} {'warm s':>7} {'warm MB/s':>9} {'peak +MiB':>9}")
        for kind, r in decoded.items():
            print(
                f"{kind:<8} {r['size_mb']:7.1f} {r['cold_s']:7.3f} {r['warm_s']:7.3f} "
                f"{r['size_mb'] / r['warm_s']:9.1f} {r['peak_mib']:9.0f}"
            )
        for run in ("warm", "cold"):
            speedup = decoded["json"][f"{run}_s"] / decoded["parquet"][f"{run}_s"]
            met = "MET" if speedup >= PARQUET_SPEEDUP_TARGET else "MISSED"
            print(f"Parquet decode speed-up over JSON, {run}: {speedup:.1f}x -> {met} (>= {PARQUET_SPEEDUP_TARGET:g}x)")
            speedup = decoded["parquet"][f"{run}_s"] / decoded["arrow"][f"{run}_s"]
            met = "MET" if speedup >= ARROW_SPEEDUP_TARGET else "MISSED"
            print(f"Arrow decode speed-up over Parquet, {run}: {speedup:.1f}x -> {met} (>= {ARROW_SPEEDUP_TARGET:g}x)")
    if ended is None:
        return
    inproc = ended["inproc_s"]
    for kind in E2E_FORMATS:
        timed, target = ended[kind], E2E_RATIO_TARGETS[kind]
        ratio = timed["e2e_s"] / inproc
        print(
            f"end to end, {kind}: {timed['e2e_s']:.3f} s / in-process "
            f"{inproc:.3f} s = {ratio:.3f} -> {verdict(ratio, target)}"
            f"  (headers {timed['headers_s']:.3f} s, of which decode "
            f"{timed['decode_s']:.3f} s; fit {timed['fit_s']:.3f} s;"
            f" outside fit apart from decode {timed['outside_s']:.3f} s; artifact {timed['artifact_s']:.3f} s)"
        )
        # The fit in the server is the same LightGBM call as in process, and its run-to-run noise here
        # (about +-10%) is larger than the target's margin: the cost of going through the API is what
        # the request took beyond the server's own fit, e2e - fit_s, measured within each request.
        beyond = timed["beyond_fit_s"]
        estimate = (inproc + median(beyond)) / inproc
        print(
            f"  {kind}: the API's cost beyond the fit itself (e2e - fit_s): median "
            f"{median(beyond):.3f} s (runs {min(beyond):.3f}-{max(beyond):.3f} s)"
            f" = {100 * median(beyond) / inproc:.1f}% of the in-process fit -> e2e / in-process "
            f"with the fit's noise taken out: {estimate:.3f} -> {verdict(estimate, target)}"
        )
    print(f"  sending + spooling the Parquet body alone: {ended['upload_s']:.3f} s")
    cold = ended["parquet_cold"]
    print(
        f"end to end, Parquet, cold: {cold['e2e_s']:.3f} s = "
        f"{cold['e2e_s'] / inproc:.3f} x in-process (decode {cold['decode_s']:.3f} s)"
    )
    if "json" in ended:
        j = ended["json"]
        print(
            f"end to end, JSON (one request, for contrast): {j['e2e_s']:.3f} s = {j['e2e_s'] / inproc:.3f} "
            f"x in-process (headers {j['headers_s']:.3f} s, decode {j['decode_s']:.3f} s)"
        )


if __name__ == "__main__":
    sys.exit(main())
