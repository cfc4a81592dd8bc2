"""End-to-end overhead of POST /train/stream against the same LightGBM training in process.

For each size (synthetic regression data, fixed seed), N boosting rounds:
  (a) in process: lightgbm.Dataset + lightgbm.train with the parameters and thread count the
      server uses (valid_sets=[train], verbose -1, a per-round callback that only records);
  (b) end to end: the body is serialized with orjson BEFORE timing; the timer runs from just
      before the request is sent to the receipt of the `complete` event, read with httpx.
The server runs with its defaults (a job alone gets every core), and the in-process run gets every
core too; with --threads N, the server runs --cpu-jobs 1 --threads-per-job N, and the in-process
run N threads. The first request of each size is reported as
the cold one (it also warms the server's decoder buffers up); then in-process and end-to-end runs
alternate. Reported: medians, the ratio e2e / in-process, the server's `timings`, and the time
the server spends outside the fit apart from decoding, (e2e - decode_s - fit_s) as % of fit_s
(it includes the transfer of the body and of the artifact).

    python bench/e2e_overhead.py                       # 100k x 20 and 1M x 50, 200 rounds
    python bench/e2e_overhead.py --sizes 100kx20 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import lightgbm  # noqa: E402
import numpy as np  # noqa: E402

from boostream.config import machine_cores  # noqa: E402
from boostream.trainers.base import validate_params  # noqa: E402
from boostream.trainers.lightgbm import LightGBMTrainer  # noqa: E402

from _common import (  # noqa: E402
    Server,
    Watchdog,
    e2e_figures,
    free_memory,
    median,
    parse_size,
    print_e2e,
    print_header,
    regression_data,
    size_label,
    stream_train,
    train_body,
    verdict,
)

RATIO_TARGET = 1.5
OUTSIDE_TARGET_PCT = 5.0


def in_process_fit(X: np.ndarray, y: np.ndarray, rounds: int, threads: int) -> tuple[float, float]:
    """The server's LightGBM call (boostream/trainers/lightgbm.py) without the server: the same
    booster and dataset parameters, the same validation set (the training set, evaluated every
    round), a callback that only records. Returns (seconds, final train l2)."""
    params = validate_params(LightGBMTrainer.params, {"n_estimators": rounds})  # the server's defaults
    booster_params = {k: v for k, v in params.items() if k not in ("n_estimators", "early_stopping_rounds")}
    booster_params.update(objective="regression", metric="l2", num_threads=threads, verbose=-1)
    dataset_params = {"max_bin": params["max_bin"], "verbose": -1, "num_threads": threads}
    feature_names = [f"f{i}" for i in range(X.shape[1])]
    seen: list[float] = []

    def record(env: lightgbm.callback.CallbackEnv) -> None:
        seen.append(env.evaluation_result_list[0][2])

    started = time.perf_counter()
    train_set = lightgbm.Dataset(X, y, feature_name=feature_names, params=dataset_params)
    booster = lightgbm.train(
        booster_params,
        train_set,
        num_boost_round=rounds,
        valid_sets=[train_set],
        valid_names=["train"],
        callbacks=[record],
    )
    elapsed = time.perf_counter() - started
    assert booster.current_iteration() == rounds and len(seen) == rounds
    del booster, train_set
    return elapsed, seen[-1]


def e2e_fit(client: httpx.Client, server: Server, body: bytes) -> dict:
    run = stream_train(client, server.url, body)
    return e2e_figures(run) | {"train_l2": run.complete["metrics"].get("train_l2")}


def bench_size(
    client: httpx.Client, server: Server, rows: int, cols: int, rounds: int, repeats: int, threads: int, seed: int
) -> dict:
    label = size_label(rows, cols)
    print(f"\n## {label}, {rounds} rounds, {threads} threads, {repeats} repeats")
    X, y = regression_data(rows, cols, seed)
    started = time.perf_counter()
    body = train_body("lightgbm", X, y, {"n_estimators": rounds})
    print(f"  body: {len(body) / 1e6:.1f} MB of JSON, serialized in {time.perf_counter() - started:.2f} s (not timed)")
    sys.stdout.flush()

    cold = e2e_fit(client, server, body)
    print_e2e("cold", cold)
    inproc_s: list[float] = []
    e2e_runs: list[dict] = []
    inproc_l2 = None
    for i in range(repeats):
        free_memory()
        seconds, inproc_l2 = in_process_fit(X, y, rounds, threads)
        inproc_s.append(seconds)
        print(f"  in-proc {i + 1:<2} {seconds:7.3f} s  (final train l2 {inproc_l2:.6g})")
        sys.stdout.flush()
        free_memory()
        run = e2e_fit(client, server, body)
        e2e_runs.append(run)
        print_e2e(f"e2e {i + 1}", run)
    del body, X, y
    free_memory()

    med = {
        key: median([r[key] for r in e2e_runs])
        for key in ("e2e_s", "headers_s", "decode_s", "queued_s", "fit_s", "artifact_s", "outside_s", "outside_pct")
    }
    med["inproc_s"] = median(inproc_s)
    med["ratio"] = med["e2e_s"] / med["inproc_s"]
    med["fit_vs_inproc"] = med["fit_s"] / med["inproc_s"]
    same = e2e_runs[-1]["train_l2"]
    print(
        f"  medians: in-process {med['inproc_s']:.3f} s | e2e {med['e2e_s']:.3f} s | decode "
        f"{med['decode_s']:.3f} s | fit {med['fit_s']:.3f} s | artifact {med['artifact_s']:.4f} s"
    )
    print(
        f"  server fit_s / in-process = {med['fit_vs_inproc']:.3f} "
        "(the per-round reporting and everything else inside the fit)"
    )
    print(f"  same model: server train_l2 {same:.6g} vs in-process {inproc_l2:.6g}")
    print(f"  ratio e2e / in-process = {med['ratio']:.3f}  -> {verdict(med['ratio'], RATIO_TARGET)}")
    print(
        f"  outside fit apart from decode = {med['outside_s']:.3f} s = {med['outside_pct']:.1f}% "
        f"of fit  -> {verdict(med['outside_pct'], OUTSIDE_TARGET_PCT, '%')}"
    )
    rss = server.peak_rss_mib()
    if rss is not None:
        print(f"  server peak RSS so far {rss:.0f} MiB, now {server.rss_mib():.0f} MiB")
    sys.stdout.flush()
    return {"label": label, "cold": cold, "median": med}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100kx20,1Mx50", help="comma-separated ROWSxCOLS (default 100kx20,1Mx50)")
    parser.add_argument("--rounds", type=int, default=200, help="boosting rounds (default 200)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved in-process / e2e pairs per size (default 3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="LightGBM threads, server (--cpu-jobs 1) and in process (default: the server's defaults, all cores)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="hard limit for the whole run (default 600)")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]

    print_header("e2e_overhead: POST /train/stream vs in-process LightGBM")
    results = []
    server = Server() if args.threads is None else Server(cpu_jobs=1, threads_per_job=args.threads)
    threads = args.threads or machine_cores()
    with Watchdog(args.max_seconds), server:
        print(f"# server: {' '.join(server.command[1:])}")
        with httpx.Client() as client:
            for rows, cols in sizes:
                results.append(bench_size(client, server, rows, cols, args.rounds, args.repeats, threads, args.seed))

    print("\n## summary (medians; cold = first request of that size on the server)")
    print(
        f"{'size':<10} {'in-proc s':>9} {'e2e s':>8} {'ratio':>6} {'decode s':>8} {'fit s':>8} "
        f"{'artifact s':>10} {'outside%fit':>11} {'cold e2e s':>10} {'cold ratio':>10} {'cold outside%':>13}"
    )
    for r in results:
        m, c = r["median"], r["cold"]
        print(
            f"{r['label']:<10} {m['inproc_s']:9.3f} {m['e2e_s']:8.3f} {m['ratio']:6.3f} "
            f"{m['decode_s']:8.3f} {m['fit_s']:8.3f} {m['artifact_s']:10.4f}"
            f" {m['outside_pct']:10.1f}% {c['e2e_s']:10.3f} "
            f"{c['e2e_s'] / m['inproc_s']:10.3f} {c['outside_pct']:12.1f}%"
        )
    for r in results:
        m = r["median"]
        print(
            f"{r['label']}: ratio {verdict(m['ratio'], RATIO_TARGET)}; "
            f"outside-fit-apart-from-decode {verdict(m['outside_pct'], OUTSIDE_TARGET_PCT, '%')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
