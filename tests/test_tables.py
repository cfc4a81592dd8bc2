"""Training tables sent as files: CSV or Parquet, as the whole body or as a multipart upload, train the
same model as the same table sent as JSON; their mistakes are answered naming the column or field."""

from __future__ import annotations

import base64
import decimal
import gzip
import io
import json

import joblib
import lightgbm
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from conftest import Server, parse_sse, start_server

CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
ARROW = "application/vnd.apache.arrow.stream"
PARAMS = {"n_estimators": 15, "num_leaves": 7, "learning_rate": 0.2, "seed": 3}


def table_of(X: np.ndarray, y: np.ndarray, names: list[str], target: str = "target") -> pa.Table:
    return pa.table({**{name: X[:, i] for i, name in enumerate(names)}, target: y})


def csv_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pcsv.write_csv(table, sink)
    return sink.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def arrow_bytes(table: pa.Table, file_format: bool = False, compression: str | None = None) -> bytes:
    """The table as an Arrow IPC stream (or in the IPC file format), in batches of 100 rows."""
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_file if file_format else pa.ipc.new_stream
    with writer(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as out:
        out.write_table(table, max_chunksize=100)
    return sink.getvalue().to_pybytes()


def query(**fields) -> dict[str, str]:
    """Request fields as a query string or a form carries them: text."""
    return {name: str(value) for name, value in fields.items()}


def post_table(server: Server, body: bytes, content_type: str, path: str = "/train/stream", **fields):
    with server.client() as client:
        return client.post(path, content=body, headers={"content-type": content_type}, params=query(**fields))


def train_table(server: Server, body: bytes, content_type: str, **fields) -> list:
    """POST /train/stream with the table as the body and the fields in the query string."""
    with server.client() as client:
        with client.stream(
            "POST", "/train/stream", content=body, headers={"content-type": content_type}, params=query(**fields)
        ) as response:
            assert response.status_code == 200, response.read()
            return list(parse_sse(response.iter_lines()))


def train_upload(server: Server, filename: str, body: bytes, **fields) -> list:
    """POST /train/stream as a multipart form: the table as its file part, the fields as form fields."""
    with server.client() as client:
        with client.stream(
            "POST", "/train/stream", files={"table": (filename, body)}, data=query(**fields)
        ) as response:
            assert response.status_code == 200, response.read()
            return list(parse_sse(response.iter_lines()))


def completed(events: list) -> dict:
    assert events[-1].type == "complete", events[-1]
    return events[-1].data


def booster_of(complete: dict):
    assert complete["format"] == "joblib"
    return joblib.load(io.BytesIO(base64.b64decode(complete["artifact"])))


def assert_same_model(from_file: dict, from_json: dict, X: np.ndarray) -> None:
    assert from_file["metrics"] == from_json["metrics"]
    assert from_file["iterations"] == from_json["iterations"]
    np.testing.assert_array_equal(booster_of(from_file).predict(X), booster_of(from_json).predict(X))


def json_body(X: np.ndarray, y: np.ndarray, names: list[str], **fields) -> dict:
    return {"X": X.tolist(), "y": y.tolist(), "feature_names": names, "params": PARAMS, **fields}


def names_for(X: np.ndarray) -> list[str]:
    return [f"col {i}" for i in range(X.shape[1])]  # a space: names are taken as they are


# The same model as JSON


def test_a_csv_body_trains_the_same_model_as_json(server: Server, diabetes):
    X, y = diabetes
    names = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    from_json = completed(server.train(json_body(X, y, names, valid_fraction=0.2)))
    from_csv = completed(
        train_table(server, csv_bytes(table_of(X, y, names)), CSV, target="target", valid_fraction=0.2, **PARAMS)
    )
    assert_same_model(from_csv, from_json, X)
    assert "valid_l2" in from_csv["metrics"]
    assert from_csv["feature_names"] == names
    assert booster_of(from_csv).feature_name() == names


def test_a_parquet_body_trains_the_same_model_as_json(server: Server, breast_cancer):
    X, y = breast_cancer
    names = [f"m{i}" for i in range(X.shape[1])]
    from_json = completed(server.train(json_body(X, y, names, objective="binary", valid_fraction=0.25)))
    body = parquet_bytes(table_of(X, y.astype(np.int64), names, target="diagnosis"))
    events = train_table(server, body, PARQUET, target="diagnosis", objective="binary", valid_fraction=0.25, **PARAMS)
    assert events[0].data["n_features"] == X.shape[1]
    from_parquet = completed(events)
    assert_same_model(from_parquet, from_json, X)
    assert from_parquet["classes"] == [0, 1]
    assert from_parquet["feature_names"] == names


def test_an_arrow_body_trains_the_same_model_as_json_and_parquet(server: Server, breast_cancer):
    X, y = breast_cancer
    names = [f"m{i}" for i in range(X.shape[1])]
    from_json = completed(server.train(json_body(X, y, names, objective="binary", valid_fraction=0.25)))
    table = table_of(X, y.astype(np.int64), names, target="diagnosis")
    fields = {"target": "diagnosis", "objective": "binary", "valid_fraction": 0.25, **PARAMS}
    from_parquet = completed(train_table(server, parquet_bytes(table), PARQUET, **fields))
    for body in (arrow_bytes(table), arrow_bytes(table, file_format=True)):
        events = train_table(server, body, ARROW, **fields)
        assert events[0].data["n_features"] == X.shape[1]
        from_arrow = completed(events)
        assert_same_model(from_arrow, from_json, X)
        assert_same_model(from_arrow, from_parquet, X)
        assert from_arrow["feature_names"] == names and from_arrow["classes"] == [0, 1]


def lightgbm_in_process(X, y, weight, rounds: int) -> lightgbm.Booster:
    """The server's LightGBM call with the same parameters, in this process."""
    from boostream.trainers.base import validate_params
    from boostream.trainers.lightgbm import LightGBMTrainer

    params = validate_params(LightGBMTrainer.params, {**PARAMS, "n_estimators": rounds})
    booster_params = {k: v for k, v in params.items() if k not in ("n_estimators", "early_stopping_rounds")}
    booster_params.update(objective="regression", metric="l2", verbose=-1)
    dataset = lightgbm.Dataset(X, y, weight=weight, params={"max_bin": params["max_bin"], "verbose": -1})
    return lightgbm.train(booster_params, dataset, num_boost_round=rounds)


def test_sample_weights_change_the_model_as_lightgbms_own_weights_do(server: Server, diabetes):
    X, y = diabetes
    weight = np.where(y > np.median(y), 5.0, 0.2)  # the upper half counts 25 times as much
    names = names_for(X)
    rounds = PARAMS["n_estimators"]
    unweighted = completed(server.train(json_body(X, y, names)))
    from_json = completed(server.train(json_body(X, y, names, weight=weight.tolist())))
    table = table_of(X, y, names).append_column("w", pa.array(weight))
    from_arrow = completed(train_table(server, arrow_bytes(table), ARROW, target="target", weight="w", **PARAMS))
    from_csv = completed(train_table(server, csv_bytes(table), CSV, target="target", weight="w", **PARAMS))
    expected = lightgbm_in_process(X, y, weight, rounds).predict(X)
    for complete in (from_json, from_arrow, from_csv):
        np.testing.assert_allclose(booster_of(complete).predict(X), expected, rtol=1e-9)
        assert complete["feature_names"] == names  # the weight column is no feature
    assert not np.allclose(booster_of(unweighted).predict(X), expected)
    assert booster_of(from_json).predict(X).mean() > booster_of(unweighted).predict(X).mean()


def test_weights_are_refused_where_they_cannot_count(server: Server, diabetes):
    X, y = diabetes
    names = names_for(X)
    with server.client() as client:
        for weight, words in (([1.0] * (len(y) - 1), "has 441 values, but X has 442 rows"),
                              ([-1.0] + [1.0] * (len(y) - 1), "0 or more; row 0"),
                              ([0.0] * len(y), "every sample weight is 0")):  # fmt: skip
            refused = client.post("/jobs", json=json_body(X, y, names, weight=weight))
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["field"] == "weight" and words in refused.json()["error"]["message"]
        table = table_of(X, y, names).append_column("w", pa.array(["heavy"] * len(y)))
        refused = post_table(server, csv_bytes(table), CSV, target="target", weight="w")
        assert refused.status_code == 400 and refused.json()["error"]["field"] == "w", refused.text


def test_a_multipart_upload_trains_the_same_model_as_json(server: Server, diabetes):
    X, y = diabetes
    names = [f"f{i}" for i in range(X.shape[1])]
    from_json = completed(server.train(json_body(X, y, names)))
    table = table_of(X, y, names, target="progression")
    from_csv = completed(train_upload(server, "diabetes.csv", csv_bytes(table), target="progression", **PARAMS))
    from_parquet = completed(
        train_upload(server, "diabetes.parquet", parquet_bytes(table), target="progression", **PARAMS)
    )
    from_arrow = completed(train_upload(server, "diabetes.arrows", arrow_bytes(table), target="progression", **PARAMS))
    assert_same_model(from_csv, from_json, X)
    assert_same_model(from_parquet, from_json, X)
    assert_same_model(from_arrow, from_json, X)


def test_a_csv_whose_first_column_name_starts_like_parquet_is_still_csv(server: Server, diabetes):
    names = ["PAR1_score", *(f"f{i}" for i in range(1, 10))]
    complete = completed(
        train_table(server, csv_bytes(table_of(*diabetes, names)), CSV, target="target", n_estimators="3")
    )
    assert complete["feature_names"] == names


def test_features_selects_the_columns_and_their_order(server: Server, diabetes):
    X, y = diabetes
    names = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    chosen = ["s5", "bmi", "bp"]
    columns = [names.index(name) for name in chosen]
    from_json = completed(server.train(json_body(X[:, columns], y, chosen)))
    events = train_table(
        server, csv_bytes(table_of(X, y, names)), CSV, target="target", features=" s5, bmi,bp", **PARAMS
    )
    assert events[0].data["n_features"] == 3
    from_csv = completed(events)
    assert from_csv["feature_names"] == chosen
    assert_same_model(from_csv, from_json, X[:, columns])


def test_string_labels_from_a_csv_train_a_multiclass_model(server: Server, iris):
    X, y = iris
    names = ["sepal length", "sepal width", "petal length", "petal width"]
    from_json = completed(server.train(json_body(X, y, names, objective="multiclass")))
    from_csv = completed(
        train_table(
            server,
            csv_bytes(table_of(X, y, names, target="species")),
            CSV,
            target="species",
            objective="multiclass",
            **PARAMS,
        )
    )
    assert from_csv["classes"] == ["setosa", "versicolor", "virginica"]
    assert_same_model(from_csv, from_json, X)


def test_missing_values_are_nan_as_json_null_is(server: Server, diabetes):
    X, y = diabetes
    X = X.copy()
    X[::7, 2] = np.nan
    X[3::11, 5] = np.nan
    names = names_for(X)
    body = json_body(X, y, names)
    body["X"] = [[None if np.isnan(value) else value for value in row] for row in body["X"]]
    from_json = completed(server.train(body))
    columns = {name: pa.array(X[:, i], from_pandas=True) for i, name in enumerate(names)}  # NaN as null
    from_parquet = completed(
        train_table(server, parquet_bytes(pa.table({**columns, "target": y})), PARQUET, target="target", **PARAMS)
    )
    from_csv = completed(
        train_table(server, csv_bytes(pa.table({**columns, "target": y})), CSV, target="target", **PARAMS)
    )
    assert_same_model(from_parquet, from_json, X)
    assert_same_model(from_csv, from_json, X)


def test_integer_boolean_and_decimal_columns_are_numbers(server: Server):
    rng = np.random.default_rng(0)
    count = 200
    integers, flags = rng.integers(0, 50, count), rng.random(count) < 0.5
    y = integers * 0.1 + flags + rng.random(count) * 0.01
    X = np.column_stack([integers, flags]).astype(np.float64)
    from_json = completed(server.train(json_body(X, y, ["n", "flag"])))
    table = pa.table({"n": pa.array(integers), "flag": pa.array(flags), "target": y})
    from_csv = completed(train_table(server, csv_bytes(table), CSV, target="target", **PARAMS))  # "true" and "false"
    assert_same_model(from_csv, from_json, X)
    decimals = table.set_column(0, "n", pa.array([decimal.Decimal(int(n)) for n in integers], pa.decimal128(6, 1)))
    from_parquet = completed(train_table(server, parquet_bytes(decimals), PARQUET, target="target", **PARAMS))
    assert_same_model(from_parquet, from_json, X)


def test_a_pandas_index_in_parquet_is_not_a_feature(server: Server, diabetes):
    X, y = diabetes
    names = names_for(X)
    table = table_of(X, y, names).append_column("__index_level_0__", pa.array(np.arange(len(y)) * 7))
    table = table.replace_schema_metadata({b"pandas": json.dumps({"index_columns": ["__index_level_0__"]}).encode()})
    complete = completed(train_table(server, parquet_bytes(table), PARQUET, target="target", **PARAMS))
    assert complete["feature_names"] == names


def test_a_job_takes_a_csv_body_too(server: Server, diabetes):
    X, y = diabetes
    names = names_for(X)
    response = post_table(server, csv_bytes(table_of(X, y, names)), CSV, path="/jobs", target="target", **PARAMS)
    assert response.status_code == 202, response.text
    job = server.wait_for_job(response.json()["job_id"])
    assert job["status"] == "succeeded"
    with server.client() as client:
        result = client.get(f"/jobs/{job['job_id']}/result").json()
    assert result["feature_names"] == names


def test_a_large_parquet_body_arrives_whole(server: Server):
    """64 MB: spooled through several write buffers, and its columns read in more than one group;
    the model is the one LightGBM trains in process on the same numbers."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(200_000, 40))
    X[rng.random(X.shape) < 0.01] = np.nan
    y = np.nan_to_num(X[:, 0]) * 2 + np.nan_to_num(X[:, 39]) + rng.normal(scale=0.1, size=len(X))
    names = [f"f{i}" for i in range(X.shape[1])]
    body = parquet_bytes(table_of(X, y, names))
    assert len(body) > 60e6
    params = {"n_estimators": 3, "num_leaves": 7, "seed": 1}
    complete = completed(train_table(server, body, PARQUET, target="target", **params))
    served = booster_of(complete)
    assert served.num_feature() == 40 and served.feature_name() == names
    in_process = lightgbm.train(served.params, lightgbm.Dataset(X, y), num_boost_round=3)
    np.testing.assert_array_equal(served.predict(X[:5000]), in_process.predict(X[:5000]))


# Mistakes, answered before any stream

SMALL = pa.table(
    {
        "a": [1.0, 2.0, 3.0, 4.0],
        "b": [0.5, 0.25, 0.0, 1.0],
        "city": ["Oslo", "Lima", "Oslo", "Pune"],
        "y": [1.0, 2.0, 3.0, 4.0],
    }
)
NUMBERS = SMALL.drop_columns(["city"])
PARQUET_OF_NUMBERS = parquet_bytes(NUMBERS)
BAD_TABLES = [
    # (what is wrong, body, content type, fields, status, field, words in the message)
    ("no target", csv_bytes(NUMBERS), CSV, {}, 400, "target", "`target`"),
    ("a target that is no column", csv_bytes(NUMBERS), CSV, {"target": "label"}, 400, "target", "no column 'label'"),
    (
        "a string feature column", csv_bytes(SMALL), CSV, {"target": "y"}, 400, "city",
        "column 'city' holds string, not numbers",
    ),
    (
        # A string column in Parquet is categorical (test_categories); a timestamp is neither.
        "a timestamp feature column in Parquet", parquet_bytes(NUMBERS.append_column("when", pa.array(
            [0, 1, 2, 3], pa.timestamp("s")))), PARQUET, {"target": "y"}, 400, "when", "column 'when' holds timestamp",
    ),
    ("a Parquet file sent as Arrow", PARQUET_OF_NUMBERS, ARROW, {"target": "y"}, 400, "file", "it is a Parquet file"),
    ("CSV sent as Arrow", csv_bytes(NUMBERS), ARROW, {"target": "y"}, 400, "file", "not an Arrow IPC stream"),
    (
        "a cut-off Arrow stream", arrow_bytes(NUMBERS)[:-60], ARROW, {"target": "y"}, 400, "file",
        "no end-of-stream marker",
    ),
    (
        # Cut between two batches: every message whole, only the marker missing.
        "an Arrow stream cut after a batch", arrow_bytes(NUMBERS)[:-8], ARROW, {"target": "y"}, 400, "file",
        "no end-of-stream marker",
    ),
    (
        "a compressed Arrow stream", arrow_bytes(NUMBERS, compression="zstd"), ARROW, {"target": "y"}, 400, "file",
        "send it uncompressed",
    ),
    # pyarrow infers types from the first 1 MiB; the column is read as numbers all the same.
    (
        "a string beyond the first MiB", b"a,y\n" + b"1,1\n" * 300_000 + b"one,2\n", CSV, {"target": "y"}, 400, "a",
        "invalid value 'one'",
    ),
    (
        "a fraction beyond the first MiB is fine, but not a null target", b"a,y\n" + b"1,1\n" * 300_000 + b"2.5,\n",
        CSV, {"target": "y"}, 400, "y", "no value in row 300000",
    ),
    ("a null in the target", b"a,b,y\n1,2,3\n4,5,\n6,7,8\n", CSV, {"target": "y"}, 400, "y", "no value in row 1"),
    (
        "a string target for regression", csv_bytes(SMALL), CSV, {"target": "city", "features": "a"}, 400, "city",
        "must be numbers",
    ),
    ("an infinite value", b"a,y\n1,1\ninf,2\n", CSV, {"target": "y"}, 400, "a", "infinite in row 1"),
    (
        "an infinite value in Parquet", parquet_bytes(pa.table({"a": [1.0, 2.0, -np.inf], "y": [1.0, 2.0, 3.0]})),
        PARQUET, {"target": "y"}, 400, "a", "infinite in row 2",
    ),
    ("ragged rows", b"a,b,y\n1,2,3\n4,5\n", CSV, {"target": "y"}, 400, "file", "Expected 3 columns, got 2"),
    ("no rows", b"a,b,y\n", CSV, {"target": "y"}, 400, "file", "no rows"),
    ("an empty body", b"", CSV, {"target": "y"}, 400, "file", "the table is empty (0 bytes): send CSV text"),
    (
        "an empty Parquet body", b"", PARQUET, {"target": "y"}, 400, "file",
        "the table is empty (0 bytes): send a Parquet file",
    ),
    (
        "CSV sent as Parquet", csv_bytes(NUMBERS), PARQUET, {"target": "y"}, 400, "file",
        "not a Parquet file (one starts with PAR1); it is text: a CSV table goes as text/csv",
    ),
    (
        "corrupt Parquet pages", PARQUET_OF_NUMBERS[:4] + b"\xff" * 24 + PARQUET_OF_NUMBERS[28:], PARQUET,
        {"target": "y"}, 400, "file", "Deserializing page header failed",
    ),
    (
        "an unknown feature column", csv_bytes(NUMBERS), CSV, {"target": "y", "features": "a,z"}, 400, "features",
        "no column 'z'",
    ),
    (
        "the target among the features", csv_bytes(NUMBERS), CSV, {"target": "y", "features": "a,y"}, 400, "features",
        "'y' is the target",
    ),
    ("a column name twice", b"a,a,y\n1,2,3\n", CSV, {"target": "y"}, 400, "a", "2 columns named 'a'"),
    (
        "a column name LightGBM refuses", b'"a,b",y\n1,2\n', CSV, {"target": "y"}, 400, "features",
        "'a,b' is not a usable feature name",
    ),
    (
        "an unknown hyperparameter", csv_bytes(NUMBERS), CSV, {"target": "y", "x": "1"}, 422, "params.x",
        "unknown parameter",
    ),
    (
        "a hyperparameter that is not a number", csv_bytes(NUMBERS), CSV, {"target": "y", "n_estimators": "abc"}, 422,
        "params.n_estimators", "must be a number",
    ),
    (
        "a fraction for an integer", csv_bytes(NUMBERS), CSV, {"target": "y", "num_leaves": "7.5"}, 422,
        "params.num_leaves", "must be an integer",
    ),
    (
        "valid_fraction that is not a number", csv_bytes(NUMBERS), CSV, {"target": "y", "valid_fraction": "half"}, 422,
        "valid_fraction", "'half'",
    ),
    (
        "an unknown objective", csv_bytes(NUMBERS), CSV, {"target": "y", "objective": "poisson"}, 422, "objective",
        "unknown objective",
    ),
    ("era on LightGBM", csv_bytes(NUMBERS), CSV, {"target": "y", "era": "b"}, 422, "era", "WarpGBM"),
]


@pytest.mark.parametrize(
    "case, body, content_type, fields, status, field, words", BAD_TABLES, ids=[c[0] for c in BAD_TABLES]
)
def test_a_bad_table_is_answered_with_status_and_field(
    server: Server, case, body, content_type, fields, status, field, words
):
    response = post_table(server, body, content_type, **fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert words in error["message"]


BINARY_AS_CSV = [
    # (what is sent as text/csv, words in the message)
    (
        "a Parquet file",
        PARQUET_OF_NUMBERS,
        "looks like a Parquet file, not CSV text: send it as application/vnd.apache.parquet",
    ),
    (
        "gzip-compressed CSV",
        gzip.compress(csv_bytes(NUMBERS)),
        "does not look like CSV text: byte 0 is 0x1f, a control character",
    ),
    ("binary after a CSV header", b"a,y\n1,1\n" + bytes(range(256)) * 8, "does not look like CSV text: byte 8 is 0x00"),
    ("binary beyond the first rows", b"a,y\n" + b"1,1\n" * 200 + bytes(range(256)) * 8, "Expected 2 columns"),
]


@pytest.mark.parametrize("case, body, words", BINARY_AS_CSV, ids=[c[0] for c in BINARY_AS_CSV])
def test_binary_sent_as_csv_is_never_echoed(server: Server, case, body, words):
    response = post_table(server, body, CSV, target="y")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "file" and words in error["message"], error
    assert error["message"].isprintable() and len(error["message"]) < 400, error["message"]


@pytest.mark.parametrize(
    "files, headers, content, words",
    [
        ({"a": ("a.csv", b"a,y\n1,1\n"), "b": ("b.csv", b"a,y\n1,1\n")}, {}, None, "more than one file"),
        (None, {"content-type": "multipart/form-data; boundary=xyz"}, b"not multipart at all", "cannot be read"),
        (None, {"content-type": "multipart/form-data"}, b"--xyz\r\n", "boundary"),
    ],
    ids=["two files", "malformed", "no boundary"],
)
def test_a_multipart_upload_that_cannot_be_read_is_a_json_400(server: Server, files, headers, content, words):
    with server.client() as client:
        response = client.post("/train/stream", files=files, headers=headers, content=content, params={"target": "y"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_multipart" and words in error["message"], error


def test_hyperparameters_are_read_from_text_as_json_gives_them(server: Server):
    events = train_table(
        server, csv_bytes(NUMBERS), CSV, target="y", n_estimators="1e1", learning_rate="0.5", min_data_in_leaf="1"
    )
    started = events[0].data
    assert started["params"]["n_estimators"] == 10 and started["params"]["learning_rate"] == 0.5
    assert completed(events)["iterations"] == 10


def test_a_bool_hyperparameter_reads_true_false_1_and_0():
    from boostream.requests.tables import _typed  # no backend has a bool parameter yet

    assert [_typed(text, bool) for text in ("true", "False", "1", "0", "yes")] == [True, False, True, False, "yes"]


def test_a_multipart_form_without_a_file_is_a_400(server: Server):
    with server.client() as client:
        response = client.post("/train/stream", data={"target": "y"}, files={"note": (None, "no table here")})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "file"


def test_a_multipart_upload_without_a_content_length_is_a_411(server: Server, diabetes):
    """A multipart upload is spooled to disk as it arrives: without a declared length, nothing bounds it."""
    boundary = "b0undary"
    table = csv_bytes(table_of(*diabetes, [f"f{i}" for i in range(10)]))
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="table"; filename="t.csv"\r\n'.encode(),
        b"Content-Type: text/csv\r\n\r\n",
        table,
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    with server.client() as client:
        chunked = client.post(
            "/jobs?target=target",
            content=iter(parts),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert chunked.status_code == 411, chunked.text
        assert chunked.json()["error"]["code"] == "length_required"
        declared = client.post(
            "/jobs?target=target",
            content=b"".join(parts),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert declared.status_code == 202, declared.text


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    yield from start_server(tmp_path_factory.mktemp("tables"), cpu_jobs=1, max_cells=600)


@pytest.mark.parametrize(
    "content_type, write",
    [(CSV, csv_bytes), (PARQUET, parquet_bytes), (ARROW, arrow_bytes)],
    ids=["csv", "parquet", "arrow"],
)
def test_a_table_over_the_cell_limit_is_a_413(small_server: Server, content_type, write):
    X = np.arange(800, dtype=np.float64).reshape(400, 2)
    response = post_table(small_server, write(table_of(X, X[:, 0], ["a", "b"])), content_type, target="target")
    assert response.status_code == 413, response.text
    assert "600" in response.json()["error"]["message"]
