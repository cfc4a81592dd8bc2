"""Datasets: a table uploaded once (POST /datasets) trains as often as one likes without being sent
or decoded again, with the same models as the table sent with each request; datasets belong to
their creator, are listed, deleted and expire."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_access import bearer, make_key
from test_tables import (
    ARROW,
    CSV,
    PARAMS,
    PARQUET,
    arrow_bytes,
    booster_of,
    completed,
    csv_bytes,
    parquet_bytes,
    table_of,
    train_table,
)

from conftest import Server, parse_sse, start_server

running_server = __import__("contextlib").contextmanager(start_server)


def upload(server: Server, body: bytes, content_type: str, headers: dict | None = None, **fields) -> dict:
    with server.client(headers=headers or {}) as client:
        made = client.post("/datasets", content=body, headers={"content-type": content_type}, params=fields)
    assert made.status_code == 201, made.text
    assert made.headers["location"] == f"/datasets/{made.json()['dataset_id']}"
    return made.json()


def train_dataset(server: Server, **fields) -> list:
    """POST /train/stream naming a dataset: no body at all."""
    with server.client() as client:
        with client.stream("POST", "/train/stream", params={k: str(v) for k, v in fields.items()}) as response:
            assert response.status_code == 200, response.read()
            return list(parse_sse(response.iter_lines()))


def decoded_tables(server: Server) -> dict[str, float]:
    """The tables the server has decoded so far, by format (its /metrics)."""
    with server.client() as client:
        text = client.get("/metrics").text
    counts = {}
    for line in text.splitlines():
        if line.startswith("boostream_tables_decoded_total{"):
            counts[line.split('format="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return counts


def test_a_dataset_uploaded_once_trains_twice_with_different_parameters_and_is_decoded_once(server: Server, diabetes):
    X, y = diabetes
    names = [f"m{i}" for i in range(X.shape[1])]
    table = table_of(X, y, names, target="progression")
    before = decoded_tables(server)
    made = upload(server, parquet_bytes(table), PARQUET, name="diabetes")
    assert made["dataset_id"].startswith("ds_") and made["name"] == "diabetes"
    assert made["rows"] == len(y) and made["format"] == "parquet"
    assert made["columns"] == [{"name": name, "type": "double"} for name in [*names, "progression"]]
    assert made["expires_at"] > time.time() + 3600
    after_upload = decoded_tables(server)
    assert after_upload.get("parquet", 0) == before.get("parquet", 0) + 1

    first = completed(train_dataset(server, dataset_id=made["dataset_id"], target="progression", **PARAMS))
    second_params = {**PARAMS, "num_leaves": 15, "n_estimators": 25}
    second = completed(train_dataset(server, dataset_id=made["dataset_id"], target="progression", **second_params))
    assert decoded_tables(server) == after_upload  # neither training decoded a table
    # What is kept is the decoded table, mapped by whoever trains; not the Parquet file.
    kept = server.data_dir / "datasets" / made["dataset_id"]
    assert sorted(path.name for path in kept.iterdir()) == ["meta.json", "table.arrow"]
    assert (kept / "table.arrow").read_bytes()[:6] == b"ARROW1"
    assert first["iterations"] == PARAMS["n_estimators"] and second["iterations"] == 25
    assert first["feature_names"] == names
    # The same models as the table sent with each request.
    for complete, params in ((first, PARAMS), (second, second_params)):
        direct = completed(train_table(server, parquet_bytes(table), PARQUET, target="progression", **params))
        assert complete["metrics"] == direct["metrics"]
        np.testing.assert_array_equal(booster_of(complete).predict(X), booster_of(direct).predict(X))


def test_a_second_dataset_is_the_validation_set(server: Server, breast_cancer):
    X, y = breast_cancer
    names = [f"m{i}" for i in range(X.shape[1])]
    train, valid = table_of(X[:400], y[:400], names, "diagnosis"), table_of(X[400:], y[400:], names, "diagnosis")
    fields = {"target": "diagnosis", "objective": "binary", **PARAMS}
    training = upload(server, arrow_bytes(train), ARROW)["dataset_id"]
    validation = upload(server, csv_bytes(valid), CSV)["dataset_id"]
    events = train_dataset(server, dataset_id=training, valid_dataset_id=validation, **fields)
    assert events[0].data["n_rows"] == 400 and events[0].data["n_valid_rows"] == len(y) - 400
    from_datasets = completed(events)
    stacked = table_of(X, y, names, "diagnosis")
    direct = completed(train_table(server, arrow_bytes(stacked), ARROW, valid_rows=len(y) - 400, **fields))
    assert from_datasets["metrics"] == direct["metrics"] and "valid_binary_logloss" in direct["metrics"]


def test_datasets_are_listed_and_deleted_and_a_deleted_one_trains_no_more(server: Server, diabetes):
    X, y = diabetes
    made = upload(server, csv_bytes(table_of(X, y, [f"c{i}" for i in range(X.shape[1])])), CSV)
    dataset_id = made["dataset_id"]
    with server.client() as client:
        assert dataset_id in [d["dataset_id"] for d in client.get("/datasets").json()["datasets"]]
        assert client.get(f"/datasets/{dataset_id}").json() == made
        assert client.delete(f"/datasets/{dataset_id}").status_code == 204
        assert dataset_id not in [d["dataset_id"] for d in client.get("/datasets").json()["datasets"]]
        for response in (
            client.get(f"/datasets/{dataset_id}"),
            client.delete(f"/datasets/{dataset_id}"),
            client.post("/jobs", params={"dataset_id": dataset_id, "target": "target"}),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["error"]["field"] == "dataset_id"


def test_a_json_dataset_trains_as_its_table_does(server: Server, diabetes):
    X, y = diabetes
    names = [f"c{i}" for i in range(X.shape[1])]
    columns = {**{name: X[:, i].tolist() for i, name in enumerate(names)}, "target": y.tolist()}
    with server.client() as client:
        made = client.post("/datasets", json={"columns": columns}, params={"name": "from json"})
    assert made.status_code == 201, made.text
    assert made.json()["format"] == "json" and made.json()["rows"] == len(y)
    from_json = completed(train_dataset(server, dataset_id=made.json()["dataset_id"], target="target", **PARAMS))
    direct = completed(train_table(server, arrow_bytes(table_of(X, y, names)), ARROW, target="target", **PARAMS))
    assert from_json["metrics"] == direct["metrics"]


def test_a_dataset_belongs_to_its_creator(tmp_path: Path, diabetes):
    X, y = diabetes
    with running_server(tmp_path) as server:
        alice, bob = make_key(server.data_dir, "alice"), make_key(server.data_dir, "bob")
        admin = make_key(server.data_dir, "root", "--admin")
        made = upload(server, arrow_bytes(table_of(X, y, [f"c{i}" for i in range(X.shape[1])])), ARROW, bearer(alice))
        dataset_id = made["dataset_id"]
        with server.client(headers=bearer(bob)) as client:
            assert client.get("/datasets").json()["datasets"] == []
            for response in (
                client.get(f"/datasets/{dataset_id}"),
                client.delete(f"/datasets/{dataset_id}"),
                client.post("/jobs", params={"dataset_id": dataset_id, "target": "target"}),
            ):
                assert response.status_code == 404, response.text
        with server.client(headers=bearer(admin)) as client:
            assert [d["dataset_id"] for d in client.get("/datasets").json()["datasets"]] == [dataset_id]
        with server.client(headers=bearer(alice)) as client:
            created = client.post("/jobs", params={"dataset_id": dataset_id, "target": "target", "n_estimators": "3"})
            assert created.status_code == 202, created.text


def test_a_dataset_expires_once_unused_for_its_time_to_live_and_survives_a_restart(tmp_path: Path, diabetes):
    X, y = diabetes
    body = parquet_bytes(table_of(X, y, [f"c{i}" for i in range(X.shape[1])]))
    ttl_s = 8.0
    with running_server(tmp_path, dataset_ttl_s=ttl_s) as server:
        kept, dropped = upload(server, body, PARQUET)["dataset_id"], upload(server, body, PARQUET)["dataset_id"]
        made = time.monotonic()
        time.sleep(3.0)
        completed(train_dataset(server, dataset_id=kept, target="target", n_estimators=3))  # a use: 8 s from now
    with running_server(tmp_path, dataset_ttl_s=ttl_s) as server:
        time.sleep(max(0.0, made + ttl_s + 0.5 - time.monotonic()))  # past `dropped`'s time
        assert time.monotonic() < made + 3.0 + ttl_s, "the restart took too long for this test's times"
        with server.client() as client:
            assert client.get(f"/datasets/{kept}").status_code == 200
            assert client.get(f"/datasets/{dropped}").status_code == 404
            assert [d["dataset_id"] for d in client.get("/datasets").json()["datasets"]] == [kept]
        # The sweep (every ttl / 4) removes its files.
        deadline = time.monotonic() + ttl_s / 4 + 3
        while (server.data_dir / "datasets" / dropped).exists():
            assert time.monotonic() < deadline, "the expired dataset's files were never removed"
            time.sleep(0.1)
        assert (server.data_dir / "datasets" / kept / "table.arrow").exists()


TIMESTAMPS = pa.table({"a": [1.0, 2.0], "when": pa.array([0, 1], pa.timestamp("s")), "y": [1.0, 2.0]})
BAD_UPLOADS = [
    # (what is wrong, body, content type, status, field, words)
    ("a training body as JSON", b'{"X": [[1]], "y": [1]}', "application/json", 400, "columns", '{"columns": {'),
    ("a JSON column name with a NUL", b'{"columns": {"a\\u0000b": [1, 2]}}', "application/json", 400, "columns",
     "NUL character"),
    ("JSON columns of two lengths", b'{"columns": {"a": [1, 2], "b": [1]}}', "application/json", 400, "columns",
     "its columns have [1, 2] values"),
    ("a text body", b"a,b", "text/plain", 415, None, "application/vnd.apache.parquet"),
    ("an empty table", b"", CSV, 400, "file", "the table is empty"),
    ("a column that is no number or category", parquet_bytes(TIMESTAMPS), PARQUET, 400, "when", "timestamp"),
    ("Parquet sent as CSV", parquet_bytes(TIMESTAMPS), CSV, 400, "file", "looks like a Parquet file"),
    ("a CSV column name twice", b"a,a,y\n1,2,3\n", CSV, 400, "a", "2 columns named 'a'"),
]


@pytest.mark.parametrize("case, body, content_type, status, field, words", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_a_bad_upload_is_refused_naming_what_is_wrong(server: Server, case, body, content_type, status, field, words):
    with server.client() as client:
        refused = client.post("/datasets", content=body, headers={"content-type": content_type})
    assert refused.status_code == status, refused.text
    assert refused.json()["error"].get("field") == field
    assert words in refused.json()["error"]["message"]


def test_a_dataset_over_the_cell_limit_is_a_413(tmp_path: Path):
    table = pa.table({f"c{i}": np.arange(100.0) for i in range(10)})
    with running_server(tmp_path, max_cells=999) as server, server.client() as client:
        for body, content_type in ((parquet_bytes(table), PARQUET), (csv_bytes(table), CSV)):
            refused = client.post("/datasets", content=body, headers={"content-type": content_type})
            assert refused.status_code == 413, refused.text
            assert "more than the limit of 999" in refused.json()["error"]["message"]
        columns = {f"c{i}": list(range(100)) for i in range(10)}
        refused = client.post("/datasets", json={"columns": columns})
        assert refused.status_code == 413, refused.text


def test_a_csv_dataset_trains_the_same_model_as_the_csv_sent_whole(server: Server):
    rng = np.random.default_rng(1)
    zips = rng.choice(["02134", "10001", "94105"], 900)
    towns = rng.choice(["Oslo", "Lima"], 900)
    y = rng.normal(size=900) + (zips == "10001") * 2 + (towns == "Lima")
    body = csv_bytes(pa.table({"zip": zips, "town": towns, "x": rng.normal(size=900), "y": y}))
    fields = {"target": "y", "categorical": "zip,town", **PARAMS}
    whole = completed(train_table(server, body, CSV, **fields))
    dataset = upload(server, body, CSV)["dataset_id"]
    from_dataset = completed(train_dataset(server, dataset_id=dataset, **fields))
    assert from_dataset["metrics"] == whole["metrics"]
    # As with the whole CSV, its text is categorical only where named.
    with server.client() as client:
        refused = client.post("/jobs", params={"dataset_id": dataset, "target": "y"})
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "town", refused.text


def test_a_validation_dataset_of_other_types_is_stacked_or_refused_naming_the_column(server: Server):
    rng = np.random.default_rng(2)
    frame = {"x": rng.normal(size=600), "town": rng.choice(["Oslo", "Lima", "Pune"], 600), "y": rng.normal(size=600)}
    as_category = pa.table(frame).set_column(1, "town", pa.array(frame["town"]).dictionary_encode())
    train = upload(server, parquet_bytes(as_category.slice(0, 400)), PARQUET)["dataset_id"]
    valid = upload(server, arrow_bytes(pa.table(frame).slice(400)), ARROW)["dataset_id"]  # plain strings
    events = train_dataset(server, dataset_id=train, valid_dataset_id=valid, target="y", **PARAMS)
    assert events[0].data["n_valid_rows"] == 200 and "valid_l2" in completed(events)["metrics"]
    numbers = upload(server, arrow_bytes(pa.table({**frame, "town": rng.normal(size=600)})), ARROW)["dataset_id"]
    with server.client() as client:
        refused = client.post("/jobs", params={"dataset_id": train, "valid_dataset_id": numbers, "target": "y"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == "valid_dataset_id"
    assert "column 'town' holds" in refused.json()["error"]["message"]


def test_training_requests_on_a_dataset_are_checked_as_table_requests(server: Server, diabetes):
    X, y = diabetes
    made = upload(server, arrow_bytes(table_of(X, y, [f"c{i}" for i in range(X.shape[1])])), ARROW)
    with server.client() as client:
        for params, status, field, words in (
            ({"target": "nope"}, 400, "target", "no column 'nope'"),
            ({"target": "target", "valid_dataset_id": "ds_0"}, 404, "valid_dataset_id", "no dataset 'ds_0'"),
            ({"target": "target", "valid_dataset_id": made["dataset_id"], "valid_rows": "10"}, 422, "valid_rows",
             "valid_dataset_id"),
            ({"target": "target", "num_leaves": "1"}, 422, "params.num_leaves", "at least 2"),
        ):  # fmt: skip
            refused = client.post("/jobs", params={"dataset_id": made["dataset_id"], **params})
            assert refused.status_code == status, refused.text
            assert refused.json()["error"]["field"] == field and words in refused.json()["error"]["message"]
        with_body = client.post(
            "/jobs", params={"dataset_id": made["dataset_id"], "target": "target"}, content=b"a,b\n1,2\n",
            headers={"content-type": CSV},
        )  # fmt: skip
        assert with_body.status_code == 400, with_body.text
        assert with_body.json()["error"]["field"] == "dataset_id" and "no body" in with_body.json()["error"]["message"]
        alone = client.post(
            "/jobs", params={"valid_dataset_id": made["dataset_id"], "target": "target"}, content=b"a,target\n1,2\n",
            headers={"content-type": CSV},
        )  # fmt: skip
        assert alone.status_code == 422 and alone.json()["error"]["field"] == "valid_dataset_id", alone.text


def test_the_notebook_client_uploads_a_dataframe_once_and_trains_on_it_twice(server: Server, diabetes):
    import pandas as pd

    from boostream.client import Client

    X, y = diabetes
    frame = pd.DataFrame(X, columns=[f"c{i}" for i in range(X.shape[1])]).assign(target=y)
    with Client(server.url) as client:
        dataset = client.upload(frame, name="diabetes")
        assert dataset.rows == len(y) and dataset.name == "diabetes"
        assert dataset.dataset_id in [listed.dataset_id for listed in client.datasets()]
        after_upload = decoded_tables(server)
        small = client.train(dataset, target="target", params=PARAMS, progress=False)
        large = client.train(dataset, target="target", params={**PARAMS, "num_leaves": 15}, valid=0.2, progress=False)
        assert decoded_tables(server) == after_upload
        direct = client.train(frame, target="target", params=PARAMS, progress=False)
        np.testing.assert_array_equal(small.predict(frame), direct.predict(frame))
        assert "valid_l2" in large.metrics and not np.array_equal(large.predict(frame), small.predict(frame))
        client.delete_dataset(dataset)
        assert dataset.dataset_id not in [listed.dataset_id for listed in client.datasets()]


def test_predict_takes_a_dataset_instead_of_rows(server: Server):
    from test_categories import FIELDS, TABLE

    complete = completed(train_table(server, arrow_bytes(TABLE), ARROW, **FIELDS))
    dataset = upload(server, parquet_bytes(TABLE), PARQUET)["dataset_id"]
    rows = TABLE.select(["x", "city", "color"]).to_pandas().astype(object)
    rows = rows.where(rows.notna(), None).values.tolist()
    with server.client() as client:
        by_rows = client.post("/predict", json={"artifact_id": complete["artifact_id"], "X": rows})
        by_dataset = client.post("/predict", json={"artifact_id": complete["artifact_id"], "dataset_id": dataset})
        assert by_dataset.status_code == 200, by_dataset.text
        assert by_dataset.json()["predictions"] == by_rows.json()["predictions"]
        assert by_dataset.json()["shape"] == [TABLE.num_rows]
        for body, status, field in (
            ({"artifact_id": complete["artifact_id"], "dataset_id": dataset, "X": rows[:1]}, 400, "X"),
            ({"artifact": complete["artifact"], "artifact_format": "native", "dataset_id": dataset}, 422, "dataset_id"),
            ({"artifact_id": complete["artifact_id"], "dataset_id": "ds_" + "0" * 24}, 404, "dataset_id"),
        ):
            refused = client.post("/predict", json=body)
            assert refused.status_code == status, refused.text
            assert refused.json()["error"]["field"] == field
