"""Streamed hyperparameter search against a real server on scikit-learn's bundled data: every
event kind in order, trials that are jobs of their own, pruning that stops a trial's training early,
the best model predicting through /predict, the same trials for the same seed, and a cancel that
leaves no trial running."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_digits

from conftest import Server, parse_sse, start_server

ROUNDS = 150
SPACE = {
    "num_leaves": {"low": 4, "high": 64, "log": True},
    "learning_rate": {"low": 0.01, "high": 0.3, "log": True},
    "min_data_in_leaf": [5, 20, 60],
}


def digits_search(**fields) -> dict:
    X, y = load_digits(return_X_y=True)
    return {
        "X": X.tolist(), "y": y.tolist(), "objective": "multiclass", "valid_fraction": 0.25,
        "params": {"n_estimators": ROUNDS}, "search": SPACE, "n_trials": 20, "parallel": 2, "seed": 11, **fields,
    }  # fmt: skip


def tune_stream(server: Server, body: dict) -> list:
    with server.client() as client:
        with client.stream("POST", "/tune/stream", json=body) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["x-boostream-tune-id"]
            return list(parse_sse(response.iter_lines()))


@pytest.fixture(scope="module")
def searched(server: Server) -> list:
    return tune_stream(server, digits_search())


def test_a_search_streams_every_event_kind_in_order(server: Server, searched):
    kinds = Counter(event.type for event in searched)
    assert searched[0].type == "started" and searched[-1].type == "complete", kinds
    started = searched[0].data
    assert started["n_trials"] == 20 and started["sampler"] == "tpe" and started["pruner"] == "median"
    assert started["space"] == SPACE and started["metric"] == "valid_multi_logloss"
    assert kinds["trial_started"] == 20 and kinds["progress"] >= 20 and kinds["best"] >= 1
    assert kinds["trial_complete"] >= 1 and kinds["trial_pruned"] >= 1
    assert kinds["trial_complete"] + kinds["trial_pruned"] + kinds["trial_failed"] == 20
    assert [event.id for event in searched] == list(range(1, len(searched) + 1))
    # Each trial: started, then its rounds, then how it ended; its job id resolves.
    seen: dict[int, list[str]] = {}
    for event in searched[1:-1]:
        if "trial" in event.data:
            seen.setdefault(event.data["trial"], []).append(event.type)
    assert sorted(seen) == list(range(20))
    for trial, order in seen.items():
        assert order[0] == "trial_started", (trial, order)
        ends = [kind for kind in order if kind in ("trial_complete", "trial_pruned", "trial_failed")]
        assert len(ends) == 1, (trial, order)
        after_end = order[order.index(ends[0]) + 1 :]
        assert set(after_end) <= {"best", "progress"}, (trial, order)  # rounds already on their way
    with server.client() as client:
        for event in searched:
            if event.type == "trial_started":
                job = client.get(f"/jobs/{event.data['job_id']}")
                assert job.status_code == 200, job.text
                assert job.json()["status"] in ("succeeded", "cancelled")


def test_pruning_stops_a_trial_early_and_the_best_model_predicts(server: Server, searched):
    pruned = [event.data for event in searched if event.type == "trial_pruned"]
    with server.client() as client:
        rounds = [client.get(f"/jobs/{p['job_id']}").json()["progress"]["iteration"] for p in pruned]
        assert min(rounds) < ROUNDS, rounds  # a pruned trial's job trained fewer rounds than asked
        complete = searched[-1].data
        best = complete["best"]
        assert complete["artifact_id"] == best["artifact_id"] and complete["best_value"] == best["value"]
        values = [row["value"] for row in complete["leaderboard"] if row["state"] == "complete"]
        assert values == sorted(values) and values[0] == best["value"]
        assert set(complete["importances"]) == set(SPACE)
        assert complete["best_params"]["n_estimators"] == ROUNDS
        assert {name: complete["best_params"][name] for name in SPACE} == best["params"]
        X, y = load_digits(return_X_y=True)
        predicted = client.post("/predict", json={"artifact_id": complete["artifact_id"], "X": X[:300].tolist()})
        assert predicted.status_code == 200, predicted.text
        assert np.mean(np.array(predicted.json()["predictions"]) == y[:300]) > 0.9
        assert client.get(f"/tunes/{complete['tune_id']}/result").json() == complete
        status = client.get(f"/tunes/{complete['tune_id']}").json()
        assert status["status"] == "succeeded" and status["best"] == best
        assert status["trials"]["complete"] + status["trials"]["pruned"] == 20


def test_the_events_resume_after_an_id_and_a_finished_search_is_deleted(server: Server, searched):
    tune_id = searched[0].data["tune_id"]
    with server.client() as client:
        with client.stream("GET", f"/tunes/{tune_id}/events", headers={"last-event-id": "5"}) as response:
            resumed = list(parse_sse(response.iter_lines()))
        assert [event.id for event in resumed] == [event.id for event in searched[5:]]
        assert client.get(f"/tunes/{tune_id}/events", params={"after": len(searched)}).status_code == 204
        with client.stream("GET", f"/tunes/{tune_id}/events", params={"after": 10**9}) as response:
            assert response.status_code == 204  # past the end of a finished search: nothing, at once
        assert tune_id in [tune["tune_id"] for tune in client.get("/tunes").json()["tunes"]]


def test_a_grid_runs_to_its_end_and_hyperband_prunes_on_rounds(server: Server):
    grid = digits_search(
        params={"n_estimators": 30}, search={"num_leaves": [4, 8], "min_data_in_leaf": [5, 20]}, sampler="grid",
        n_trials=10,
    )  # fmt: skip
    events = tune_stream(server, grid)
    assert events[0].data["n_trials"] == 4  # the grid's size, not the 10 asked
    assert events[-1].type == "complete", events[-1]
    tried = sorted((e.data["params"]["num_leaves"], e.data["params"]["min_data_in_leaf"]) for e in events
                   if e.type == "trial_started")  # fmt: skip
    assert tried == [(4, 5), (4, 20), (8, 5), (8, 20)]
    assert events[-1].data["trials"]["complete"] + events[-1].data["trials"]["pruned"] == 4
    hyperband = tune_stream(server, digits_search(pruner="hyperband", n_trials=8))
    assert hyperband[0].data["pruner"] == "hyperband" and hyperband[-1].type == "complete"


def test_a_search_out_of_time_stops_its_trials(server: Server):
    body = digits_search(params={"n_estimators": 5000, "learning_rate": 0.01}, search={"num_leaves": [7, 15, 31]},
                         pruner="none", n_trials=6, timeout_s=1.5)  # fmt: skip
    started = time.monotonic()
    events = tune_stream(server, body)
    assert time.monotonic() - started < 60
    assert events[-1].type == "error" and events[-1].data["code"] == "no_trial_completed"
    assert "time ran out" in events[-1].data["message"]
    stopped = [e.data for e in events if e.type == "trial_failed"]
    assert stopped and all(trial["code"] == "stopped" for trial in stopped)
    with server.client() as client:
        for trial in stopped:
            assert client.get(f"/jobs/{trial['job_id']}").json()["status"] == "cancelled"


@pytest.mark.parametrize("pruner", ["none", "hyperband"])
def test_the_same_seed_one_trial_at_a_time_gives_the_same_trials(server: Server, pruner: str):
    X, y = load_diabetes(return_X_y=True)
    body = {
        "X": X.tolist(), "y": y.tolist(), "valid_fraction": 0.2, "params": {"n_estimators": 40},
        "search": {"num_leaves": {"low": 4, "high": 64}, "lambda_l2": {"low": 0.001, "high": 10.0, "log": True}},
        "n_trials": 8, "parallel": 1, "seed": 5, "pruner": pruner,
    }  # fmt: skip
    runs = []
    for _ in range(2):
        events = tune_stream(server, body)
        # Each trial's params and how it ended: its value, or the round it was pruned at.
        runs.append(
            [
                (e.data["trial"], e.type, e.data.get("params"), e.data.get("value"), e.data.get("round"))
                for e in events
                if e.type in ("trial_complete", "trial_pruned")
            ]
        )
    assert len(runs[0]) == 8 and runs[0] == runs[1]
    other = tune_stream(server, {**body, "seed": 6})
    assert [e.data["params"] for e in other if e.type == "trial_started"] != [
        e.data["params"] for e in events if e.type == "trial_started"
    ]


def test_cancel_ends_the_search_cancelled_with_no_trial_left_running(server: Server):
    body = digits_search(params={"n_estimators": 5000, "learning_rate": 0.01}, search={"num_leaves": [7, 15, 31]},
                         n_trials=6, pruner="none")  # fmt: skip
    body["search"] = {"num_leaves": [7, 15, 31]}
    with server.client() as client:
        created = client.post("/tunes", json=body)
        assert created.status_code == 202, created.text
        tune_id = created.json()["tune_id"]
        deadline = time.monotonic() + 60
        while client.get(f"/tunes/{tune_id}").json()["trials"]["running"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.delete(f"/tunes/{tune_id}").status_code == 409  # running: cancel it first
        cancelled = client.post(f"/tunes/{tune_id}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["cancel_requested"] is True
        with client.stream("GET", f"/tunes/{tune_id}/events") as response:
            events = list(parse_sse(response.iter_lines()))
        assert events[-1].type == "cancelled"
        assert client.get(f"/tunes/{tune_id}").json()["status"] == "cancelled"
        jobs = [event.data["job_id"] for event in events if event.type == "trial_started"]
        assert 2 <= len(jobs) < 6
        statuses = [client.get(f"/jobs/{job_id}").json()["status"] for job_id in jobs]
        assert statuses.count("cancelled") >= 2 and set(statuses) <= {"cancelled", "succeeded"}, statuses
        assert client.post(f"/tunes/{tune_id}/cancel").status_code == 409
        assert client.delete(f"/tunes/{tune_id}").status_code == 204
        assert client.get(f"/tunes/{tune_id}").status_code == 404


BAD = [
    # (what is wrong, fields over a good request, status, field, words)
    ("no validation data", {"valid_fraction": None}, 422, "valid_fraction", "validation metric"),
    ("an unknown parameter", {"search": {"leaves": [4, 8]}}, 422, "search.leaves", "unknown parameter"),
    (
        "a range past its bound",
        {"search": {"num_leaves": {"low": 1, "high": 8}}},
        422,
        "search.num_leaves.low",
        "at least 2",
    ),
    ("low above high", {"search": {"num_leaves": {"low": 9, "high": 8}}}, 422, "search.num_leaves", "below high"),
    (
        "a log range from 0",
        {"search": {"lambda_l1": {"low": 0, "high": 1, "log": True}}},
        422,
        "search.lambda_l1.low",
        "above 0",
    ),
    ("searched and fixed", {"params": {"num_leaves": 8}}, 422, "search.num_leaves", "leave it out of params"),
    ("more at once than the server trains", {"parallel": 3}, 422, "parallel", "from 1 to 2"),
    ("a grid of ranges", {"sampler": "grid"}, 422, "search.num_leaves", "lists of choices"),
    ("an unknown pruner", {"pruner": "asha"}, 422, "pruner", "unknown pruner"),
    ("no trials", {"n_trials": 0}, 422, "n_trials", "from 1 to"),
    ("a range every trial of which LightGBM refuses", {"search": {"bagging_fraction": {"low": 0.5, "high": 0.9}}},
     422, "params.bagging_fraction", "bagging_freq"),
]


@pytest.mark.parametrize("case, fields, status, field, words", BAD, ids=[c[0] for c in BAD])
def test_a_bad_search_is_refused_naming_its_field(server: Server, case, fields, status, field, words):
    X, y = load_diabetes(return_X_y=True)
    body = {
        "X": X[:100].tolist(),
        "y": y[:100].tolist(),
        "valid_fraction": 0.2,
        "search": {"num_leaves": {"low": 4, "high": 8}},
    }
    body.update(fields)
    body = {name: value for name, value in body.items() if value is not None}
    with server.client() as client:
        refused = client.post("/tunes", json=body)
    assert refused.status_code == status, refused.text
    assert refused.json()["error"]["field"] == field
    assert words in refused.json()["error"]["message"]


# A search on an uploaded dataset


def diabetes_csv() -> tuple[bytes, list[str], np.ndarray, np.ndarray]:
    X, y = load_diabetes(return_X_y=True)
    names = [f"x{index}" for index in range(X.shape[1])]
    lines = [",".join([*names, "progression"])]
    lines += [",".join(repr(float(value)) for value in [*row, label]) for row, label in zip(X, y, strict=True)]
    return ("\n".join(lines) + "\n").encode(), names, X, y


def test_a_search_on_a_dataset_runs_the_trials_of_the_same_table_sent_whole(server: Server):
    csv, names, X, y = diabetes_csv()
    search = {
        "valid_fraction": 0.2, "params": {"n_estimators": 30}, "search": {"num_leaves": {"low": 4, "high": 32}},
        "n_trials": 4, "parallel": 1, "seed": 3, "pruner": "none",
    }  # fmt: skip
    with server.client() as client:
        made = client.post("/datasets", content=csv, headers={"content-type": "text/csv"})
        assert made.status_code == 201, made.text
        dataset = {"dataset_id": made.json()["dataset_id"], "target": "progression"}
        on_dataset = tune_stream(server, {**search, "dataset": dataset})
    whole = tune_stream(server, {**search, "X": X.tolist(), "y": y.tolist(), "feature_names": names})
    for events in (on_dataset, whole):
        assert events[-1].type == "complete", events[-1]

    def trials(events: list) -> list:
        return [(e.data["trial"], e.data["params"], e.data["value"]) for e in events if e.type == "trial_complete"]

    assert len(trials(on_dataset)) == 4 and trials(on_dataset) == trials(whole)
    with server.client() as client:
        best = client.get(f"/artifacts/{on_dataset[-1].data['artifact_id']}/metadata").json()
        assert best["feature_names"] == names


BAD_ON_DATASET = [
    # (what is wrong, the request's table fields, status, field)
    ("neither a table nor a dataset", {}, 400, "X"),
    ("a dataset and X", {"dataset": {"dataset_id": "d", "target": "t"}, "X": [[1.0]]}, 400, "X"),
    ("a hyperparameter among the dataset's fields", {"dataset": {"dataset_id": "d", "n_estimators": 5}}, 422,
     "dataset.n_estimators"),
    ("no dataset id", {"dataset": {"target": "t"}}, 422, "dataset.dataset_id"),
    ("feature names beside a dataset", {"dataset": {"dataset_id": "d"}, "feature_names": ["a"]}, 422,
     "feature_names"),
    ("an unknown dataset", {"dataset": {"dataset_id": "nope", "target": "t"}}, 404, "dataset.dataset_id"),
]  # fmt: skip


@pytest.mark.parametrize("case, table, status, field", BAD_ON_DATASET, ids=[c[0] for c in BAD_ON_DATASET])
def test_a_search_names_its_table_once(server: Server, case, table, status, field):
    body = {"valid_fraction": 0.2, "search": {"num_leaves": {"low": 4, "high": 8}}, **table}
    with server.client() as client:
        refused = client.post("/tunes", json=body)
    assert refused.status_code == status, refused.text
    assert refused.json()["error"]["field"] == field


def test_a_trial_with_no_room_in_the_queue_waits_for_it_rather_than_fails(tmp_path):
    """One job trains, one waits, and no other may: the search's first trial is refused a place,
    says so, and starts once there is room."""
    server_gen = start_server(tmp_path, cpu_jobs=1, max_queued=1, heartbeat_s=0.5)
    server = next(server_gen)
    try:
        X, y = load_diabetes(return_X_y=True)
        long = {"X": X.tolist(), "y": y.tolist(), "params": {"n_estimators": 100_000, "learning_rate": 0.001}}
        blocking = [server.create_job(long) for _ in range(2)]  # training, and waiting
        search = {
            "X": X.tolist(), "y": y.tolist(), "valid_fraction": 0.2, "params": {"n_estimators": 20},
            "search": {"num_leaves": [4, 8]}, "sampler": "grid", "n_trials": 2, "pruner": "none",
        }  # fmt: skip
        with server.client() as client:
            tune_id = client.post("/tunes", json=search).json()["tune_id"]
            with client.stream("GET", f"/tunes/{tune_id}/events") as response:
                seen = next(event for event in parse_sse(response.iter_lines()) if event.type != "started")
            assert seen.type == "trial_waiting", seen  # no trial starts while there is no room
            for job_id in blocking:
                assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
        events = list_events(server, tune_id)
        kinds = [event.type for event in events]
        assert kinds[-1] == "complete" and kinds.count("trial_complete") == 2, kinds
        waiting = events[kinds.index("trial_waiting")].data
        assert waiting["trial"] == 0 and waiting["code"] == "queue_full" and waiting["retry_after_s"] >= 1
        assert kinds.index("trial_waiting") < kinds.index("trial_started")
    finally:
        next(server_gen, None)


def list_events(server: Server, tune_id: str) -> list:
    with server.client() as client:
        with client.stream("GET", f"/tunes/{tune_id}/events") as response:
            return list(parse_sse(response.iter_lines()))
