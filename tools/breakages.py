"""Break documented promises on purpose, one at a time, and check that the tests notice.

Each breakage below is a small edit of the product's code that breaks one thing the README or a
design note promises. For each, the tracked files are copied to a scratch folder, the edit is
applied there, and the test files that cover that part of the product run against the copy (the
copy is first on PYTHONPATH, so the servers the tests start run the broken code too). A breakage
that makes a test fail is caught; one the tests pass with survived, and says which promise the
suite does not pin. The score and the survivors go in docs/breakages.md.

    .venv/bin/python tools/breakages.py               # all of them (about 15 minutes on 2 cores)
    .venv/bin/python tools/breakages.py retry-after   # those whose name contains a word
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Breakage:
    name: str
    promise: str  # what the README (or a design note) says, which this breaks
    path: str
    old: str  # found exactly once in `path`
    new: str
    tests: tuple[str, ...]  # the test files (or node ids) that cover it


MANAGER = "boostream/jobs/manager.py"
JOB_TESTS = ("tests/test_jobs.py", "tests/test_queue.py", "tests/test_restarts.py")
BREAKAGES = [
    Breakage("max-training-s ignored", "no job trains longer than --max-training-s",
             MANAGER, "limit_s = request.timeout_s or self.max_training_s", "limit_s = request.timeout_s or 1e9",
             JOB_TESTS),
    Breakage("attempts unlimited", "a job running the last three times the server died ends interrupted",
             MANAGER, "if record.attempts >= MAX_ATTEMPTS:", "if False:", JOB_TESTS),
    Breakage("owed webhooks forgotten",
             "a delivery the server could not finish before it stopped is made by the next one",
             MANAGER, "for record in owed:\n            self._background(self._deliver_webhook(record.id))", "del owed",
             ("tests/test_webhooks.py",)),
    Breakage("queue positions not announced again", "each waiting job gets a queued event whenever the queue moves",
             MANAGER, "if self._dispatch(job.device):\n            self._announce_positions(job.device)",
             "self._dispatch(job.device)", JOB_TESTS),
    Breakage("requeue out of order", "interrupted jobs are queued again in their original order",
             MANAGER, "for record in self.store.unfinished_jobs():",
             "for record in reversed(self.store.unfinished_jobs()):", JOB_TESTS),
    Breakage("gone backend requeued", "a job whose backend is gone after a restart ends interrupted",
             MANAGER, "elif not availability.available:", "elif False:", JOB_TESTS),
    Breakage("Retry-After not the soonest ETA", "429's Retry-After is the soonest ETA of a running job",
             "boostream/jobs/queue.py", "retry_after = max(1, math.ceil(min(etas))) if etas else RETRY_AFTER_UNKNOWN_S",
             "retry_after = RETRY_AFTER_UNKNOWN_S", JOB_TESTS),
    Breakage("stored artifact unpickled to predict", "the server never unpickles even its own files to predict",
             "boostream/models/predicting.py", "model = predictor.from_native(blob, trusted=True)",
             'model = joblib.load(self.artifacts.path(artifact_id, "joblib"))', ("tests/test_artifacts.py",)),
    Breakage("model cache unbounded", "models stay loaded within --model-cache-bytes",
             "boostream/models/predicting.py", "while len(self._models) > 1 and", "while False and",
             ("tests/test_artifacts.py",)),
    Breakage("status filter takes one status", "GET /jobs?status=a,b lists jobs of any of them",
             "boostream/streaming_server/routes.py", 'statuses = [s for s in query.get("status", "").split(",") if s]',
             'statuses = [s for s in query.get("status", "").split(",") if s][:1]', ("tests/test_jobs.py",)),
    Breakage("unseen validation label accepted", "a validation label unseen in y is a 400",
             "boostream/requests/spec.py", "if len(unseen):", "if False:", ("tests/test_errors.py",)),
    Breakage("valid_fraction with X_valid accepted", "valid_fraction together with X_valid is a 422",
             "boostream/requests/spec.py",
             'if options.valid_fraction is not None:\n            raise '
             'InvalidParameter("valid_fraction", "send either valid_fraction or X_valid/y_valid, not both")',
             "pass", ("tests/test_errors.py",)),
    Breakage("final metrics of the last round", "complete.metrics are those of the best round",
             "boostream/trainers/base.py", "return best, (self.rounds[best - 1] if best else {})",
             "return best, (self.rounds[-1] if best else {})", ("tests/test_train_stream.py",)),
    Breakage("model predicts with every round", "the model predicts with the best round after early stopping",
             "boostream/trainers/lightgbm.py", "        booster.best_iteration = best_iteration\n", "",
             ("tests/test_train_stream.py",)),
    Breakage("cancel ignored", "a running job ends cancelled after the current round",
             "boostream/trainers/lightgbm.py", "if self.reporter.cancelled:", "if False:", ("tests/test_jobs.py",)),
    Breakage("throttled rounds lost", "every round's metrics reach the client (progress history)",
             "boostream/progress.py", "rounds = tuple(earlier.metrics for earlier in self._undelivered[:covered])",
             "rounds = (progress.metrics,)", ("tests/test_progress.py", "tests/test_train_stream.py")),
    Breakage("NaN on the wire", "metrics that are not finite are sent as null",
             MANAGER, "event = Event(len(job.events) + 1, event_type, orjson.dumps(data).decode())",
             "event = Event(len(job.events) + 1, event_type, __import__('json').dumps(data))",
             ("tests/test_progress.py",)),
    Breakage("class labels lost in the text model", "a model's classes survive every format",
             "boostream/trainers/lightgbm.py", "        if classes is None:\n            return text.encode()",
             "        return text.encode()", ("tests/test_artifacts.py",)),
    Breakage("threads per job ignored", "--threads-per-job sets LightGBM's threads",
             "boostream/config.py", "            return self.threads_per_job", "            return 1",
             ("tests/test_server_options.py",)),
    Breakage("multipart without length accepted", "a multipart upload without a Content-Length is a 411",
             "boostream/streaming_server/uploads.py", "if declared_length(request, limit) is None:", "if False:",
             ("tests/test_tables.py",)),
    Breakage("MCP argument cap lifted", "MCP tool arguments are capped at 4 MiB",
             "boostream/mcp_server.py", "MAX_BODY_BYTES = DEFAULT_MAX_REQUEST_BODY_SIZE",
             "MAX_BODY_BYTES = 64 * DEFAULT_MAX_REQUEST_BODY_SIZE", ("tests/test_mcp.py",)),
    Breakage("--allowed-hosts ignored by /mcp", "/mcp accepts the host names listed in --allowed-hosts",
             "boostream/streaming_server/access.py", "*LOOPBACK_NAMES, *own, *extra_hosts", "*LOOPBACK_NAMES, *own",
             ("tests/test_mcp.py",)),
    Breakage("404 as plain text", "every error the server sends is the JSON error body",
             "boostream/streaming_server/app.py", "HTTPException: handle_http_exception,", "",
             ("tests/test_error_bodies.py",)),
    Breakage("stopped-early job below 100%", "a job that succeeded shows 100%",
             "boostream/views.py", "if record.status is JobStatus.SUCCEEDED:", "if False:", ("tests/test_jobs.py",)),
]


def scratch_copy() -> Path:
    """The tracked files as they are in the working tree, in a new folder."""
    folder = Path(tempfile.mkdtemp(prefix="breakages-"))
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    untracked = subprocess.run(
        ["git", "ls-files", "-z", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    )
    for name in [*tracked.stdout.decode().split("\0"), *untracked.stdout.decode().split("\0")]:
        if name and (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    return folder


def run(breakage: Breakage, copy: Path) -> tuple[bool, float, str]:
    """Whether the tests caught `breakage`, how long they took, and pytest's last line."""
    path = copy / breakage.path
    original = path.read_text()
    if original.count(breakage.old) != 1:
        raise SystemExit(
            f"{breakage.name}: the text to break is not found exactly once in {breakage.path}; update the list"
        )
    path.write_text(original.replace(breakage.old, breakage.new))
    try:
        env = {**os.environ, "PYTHONPATH": str(copy)}
        tests = [test for test in breakage.tests if (copy / test.split("::")[0]).exists()]
        started = time.monotonic()
        ran = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=copy, env=env, capture_output=True, text=True,
        )
        last = ran.stdout.strip().splitlines()[-1] if ran.stdout.strip() else ran.stderr.strip()[-200:]
        return ran.returncode != 0, time.monotonic() - started, last
    finally:
        path.write_text(original)


def main(words: list[str]) -> int:
    chosen = [b for b in BREAKAGES if not words or any(word.lower() in b.name.lower() for word in words)]
    copy = scratch_copy()
    caught = 0
    print("| breakage | promise | tests | caught | pytest |")
    print("| --- | --- | --- | --- | --- |")
    try:
        for breakage in chosen:
            was_caught, seconds, last = run(breakage, copy)
            caught += was_caught
            tests = ", ".join(f"`{test}`" for test in breakage.tests)
            verdict = "yes" if was_caught else "**no**"
            row = f"| {breakage.name} | {breakage.promise} | {tests} | {verdict} | {last} ({seconds:.0f} s) |"
            print(row, flush=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    print(f"\ncaught {caught} of {len(chosen)}")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
