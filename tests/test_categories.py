"""Categorical features: a string column and a dictionary column (a pandas `category`) train as
LightGBM categories whichever way the table comes, and the model carries its categories, so that
/predict, the downloaded model read by LightGBM itself and the notebook client map the same values
alike, a category never seen in training as a missing value."""

from __future__ import annotations

from pathlib import Path

import lightgbm
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_tables import (
    ARROW,
    CSV,
    PARAMS,
    PARQUET,
    arrow_bytes,
    completed,
    csv_bytes,
    parquet_bytes,
    post_table,
    train_table,
)

from boostream import categories
from boostream.client import Client
from boostream.errors import InvalidData, InvalidParameter
from boostream.jobs import inputs
from boostream.requests.spec import TrainOptions, assemble_training_data, build_spec
from boostream.trainers import create_trainers

from conftest import Server

CITIES = ["Oslo", "Lima", "Pune", "Kyiv", "Baku"]
COLORS = ["red", "green", "blue"]
# Enough rows per category for LightGBM to split on it (min_data_per_group is 100).
ROWS = 1500


def sample(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """x, a string column `city` with a few missing, a pandas category `color` (its categories in an
    order of their own, not sorted), and a label that depends on all three."""
    rng = np.random.default_rng(seed)
    city = rng.choice(CITIES, rows).astype(object)
    city[rng.random(rows) < 0.05] = None
    color = pd.Categorical(rng.choice(COLORS, rows), categories=COLORS)
    x = rng.normal(size=rows)
    effect = {"Oslo": 3.0, "Lima": -2.0, "Pune": 1.0, "Kyiv": 0.0, "Baku": -1.0, None: 0.5}
    y = x + np.array([effect[c] for c in city]) + np.where(color == "green", 2.0, 0.0) + rng.normal(0, 0.1, rows)
    return pd.DataFrame({"x": x, "city": city, "color": color, "y": y})


FRAME = sample()
TABLE = pa.Table.from_pandas(FRAME, preserve_index=False)
FIELDS = {"target": "y", "artifact_format": "native", **PARAMS}
# Rows to predict: every category, one never seen ("Mars"), and missing values.
ASKED = pd.DataFrame(
    {
        "x": [0.0, 0.0, 0.0, 0.0, 0.5, 0.5],
        "city": ["Oslo", "Lima", "Mars", None, "Pune", "Kyiv"],
        "color": ["green", "red", "blue", "green", None, "purple"],
    }
)


def native_model(complete: dict) -> lightgbm.Booster:
    import base64

    return lightgbm.Booster(model_str=base64.b64decode(complete["artifact"]).decode())


def as_lightgbm_reads_it(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows as a LightGBM user passes them: the categorical columns as pandas categories."""
    return frame.astype({"city": "category", "color": "category"})


def test_a_string_and_a_dictionary_column_train_as_categories_from_every_format(server: Server):
    assert "string" in str(TABLE.schema.field("city").type)  # large_string from pandas 3
    assert pa.types.is_dictionary(TABLE.schema.field("color").type)
    from_arrow = completed(train_table(server, arrow_bytes(TABLE), ARROW, **FIELDS))
    from_parquet = completed(train_table(server, parquet_bytes(TABLE), PARQUET, **FIELDS))
    # CSV has no types: its text columns are categories where the request says so.
    from_csv = completed(train_table(server, csv_bytes(TABLE), CSV, categorical="city,color", **FIELDS))
    rows = FRAME[["x", "city", "color"]].astype(object).where(FRAME[["x", "city", "color"]].notna(), None)
    from_json = completed(
        server.train(
            {
                "X": rows.values.tolist(),
                "y": FRAME["y"].tolist(),
                "feature_names": ["x", "city", "color"],
                "categorical": ["city", "color"],
                "params": PARAMS,
                "artifact_format": "native",
            }  # fmt: skip
        )
    )
    expected = native_model(from_arrow)
    # The categories are sorted, whatever order the pandas category had them in.
    assert expected.pandas_categorical == [sorted(CITIES), sorted(COLORS)]
    assert expected.params["categorical_feature"] == [1, 2]
    tree_splits = str(expected.dump_model()["tree_info"])
    assert "'decision_type': '=='" in tree_splits  # LightGBM split on categories, not on codes as numbers
    asked = as_lightgbm_reads_it(FRAME[["x", "city", "color"]])
    for complete in (from_parquet, from_csv, from_json):
        assert complete["metrics"] == from_arrow["metrics"]
        assert complete["feature_names"] == ["x", "city", "color"]
        np.testing.assert_array_equal(native_model(complete).predict(asked), expected.predict(asked))
    # The categories matter: the fit is far better than x alone could make it.
    assert from_arrow["metrics"]["train_l2"] < 0.5


def test_predict_maps_categories_as_lightgbm_does_and_an_unseen_one_is_missing(server: Server):
    complete = completed(train_table(server, arrow_bytes(TABLE), ARROW, **FIELDS))
    downloaded = native_model(complete)
    with server.client() as client:
        rows = ASKED.astype(object).where(ASKED.notna(), None).values.tolist()
        answer = client.post("/predict", json={"artifact_id": complete["artifact_id"], "X": rows})
        assert answer.status_code == 200, answer.text
        predicted = np.array(answer.json()["predictions"])
        # An uploaded native model maps them the same.
        uploaded = client.post(
            "/predict", json={"artifact": complete["artifact"], "artifact_format": "native", "X": rows}
        )
        assert uploaded.status_code == 200, uploaded.text
    # LightGBM's own reading of the downloaded model: pandas categories mapped by its
    # pandas_categorical line, an unseen one ("Mars", "purple") a missing value.
    by_lightgbm = downloaded.predict(as_lightgbm_reads_it(ASKED))
    np.testing.assert_allclose(predicted, by_lightgbm, rtol=1e-12)
    np.testing.assert_allclose(np.array(uploaded.json()["predictions"]), by_lightgbm, rtol=1e-12)
    missing = ASKED.copy()
    missing.loc[2, "city"] = None  # "Mars" predicts as a missing city does
    missing.loc[5, "color"] = None
    np.testing.assert_allclose(by_lightgbm, downloaded.predict(as_lightgbm_reads_it(missing)), rtol=1e-12)
    assert predicted[0] - predicted[1] > 4  # Oslo and green against Lima and red: 3 + 2 against -2


def test_the_notebook_client_trains_on_categories_and_predicts_from_a_dataframe(server: Server):
    with Client(server.url) as client:
        model = client.train(FRAME, target="y", params=PARAMS, progress=False)
    with server.client() as http:
        rows = ASKED.astype(object).where(ASKED.notna(), None).values.tolist()
        answer = http.post("/predict", json={"artifact_id": model.artifact_id, "X": rows}).json()
    np.testing.assert_allclose(model.predict(ASKED), answer["predictions"], rtol=1e-12)
    np.testing.assert_allclose(model.predict(pa.Table.from_pandas(ASKED)), answer["predictions"], rtol=1e-12)


BAD = [
    # (what is wrong, body, content type, fields, field, words)
    (
        "a CSV text column not named categorical",
        csv_bytes(TABLE),
        CSV,
        {"target": "y"},
        "city",
        "if its values are categories, name it in `categorical`",
    ),
    (
        "categorical naming no feature",
        arrow_bytes(TABLE),
        ARROW,
        {"target": "y", "categorical": "town"},
        "categorical",
        "names 'town', which is no feature column",
    ),
    (
        "categorical naming the target",
        arrow_bytes(TABLE),
        ARROW,
        {"target": "y", "categorical": "y"},
        "categorical",
        "names 'y', which is no feature column",
    ),
]


@pytest.mark.parametrize("case, body, content_type, fields, field, words", BAD, ids=[c[0] for c in BAD])
def test_a_categorical_mistake_in_a_table_names_its_column(
    server: Server, case, body, content_type, fields, field, words
):
    refused = post_table(server, body, content_type, **fields)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == field
    assert words in refused.json()["error"]["message"]


def test_json_strings_are_categories_only_where_categorical_names_them(server: Server):
    with server.client() as client:
        rows = [[1.0, "a"], [2.0, "b"]] * 50
        refused = client.post("/jobs", json={"X": rows, "y": [1, 2] * 50})
        assert refused.status_code == 400 and refused.json()["error"]["field"] == "X"
        assert "X[0][1] is 'a', not a number" in refused.json()["error"]["message"]
        refused = client.post("/jobs", json={"X": rows, "y": [1, 2] * 50, "categorical": ["f0"]})
        assert refused.status_code == 400 and refused.json()["error"]["field"] == "X"
        assert "name its feature ('f1') in categorical" in refused.json()["error"]["message"]
        mixed = [[1.0, "a"], [2.0, 3]] * 50
        refused = client.post("/jobs", json={"X": mixed, "y": [1, 2] * 50, "categorical": ["f1"]})
        assert refused.status_code == 400 and refused.json()["error"]["field"] == "f1"
        assert "mixes strings and numbers" in refused.json()["error"]["message"]


def test_a_string_sent_to_predict_for_a_numeric_feature_is_refused_naming_it(server: Server):
    complete = completed(train_table(server, arrow_bytes(TABLE), ARROW, **FIELDS))
    with server.client() as client:
        refused = client.post("/predict", json={"artifact_id": complete["artifact_id"], "X": [["zero", "Oslo", "red"]]})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == "X"
    assert "X[0][0] is 'zero', not a number" in refused.json()["error"]["message"]
    # A code sent for a category (as LightGBM takes them from numpy) would predict as a missing value.
    with server.client() as client:
        refused = client.post("/predict", json={"artifact_id": complete["artifact_id"], "X": [[0.0, 3, "red"]]})
    assert refused.status_code == 400, refused.text
    assert "X[0][1] is 3, but feature 1's categories are strings" in refused.json()["error"]["message"]


def test_warpgbm_refuses_categories_naming_the_column():
    trainers = create_trainers(1)
    X, found = np.zeros((4, 2)), {"city": ["Lima", "Oslo"]}
    options = TrainOptions(model_type="warpgbm", feature_names=["x", "city"])
    data = assemble_training_data(options, X, np.arange(4.0), categories=found)
    with pytest.raises(InvalidParameter) as refused:
        build_spec(options, lambda: data, trainers, unavailable={})  # as on a machine where WarpGBM runs
    assert refused.value.field == "city"
    assert "column 'city' holds categories, and WarpGBM trains on numbers only" in refused.value.message
    assert "use model_type 'lightgbm'" in refused.value.message


def test_a_jobs_categories_are_kept_with_its_arrays_for_a_restart(tmp_path: Path):
    options = TrainOptions(feature_names=["x", "city"])
    data = assemble_training_data(options, np.zeros((4, 2)), np.arange(4.0), categories={"city": ["Lima", "Oslo"]})
    inputs.save(tmp_path, data)
    loaded = inputs.load(tmp_path)
    assert loaded is not None and loaded.categories == {"city": ["Lima", "Oslo"]}


def test_a_column_of_too_many_categories_is_refused_as_an_identifier():
    column = pa.array([f"id{i}" for i in range(categories.MAX_CATEGORIES + 1)])
    with pytest.raises(InvalidData) as refused:
        categories.encode(column, "user")
    assert refused.value.field == "user" and "looks like an identifier" in refused.value.message


def test_a_model_whose_categories_do_not_fit_it_is_refused():
    with pytest.raises(ValueError, match="categories for 1 features, but has 2 categorical"):
        categories.check([["a"]], [1, 2], 3)
    with pytest.raises(ValueError, match="beyond its 3 features"):
        categories.check([["a"]], [7], 3)
    assert categories.check(None, [1], 3) == {}  # trained on codes: it is sent codes


def test_minus_zero_is_the_category_zero_and_integers_beyond_a_double_are_refused():
    coded, found = categories.encode(pa.array([-0.0, 0.0, 1.0, float("nan")]), "x")
    assert found == [0.0, 1.0]
    np.testing.assert_array_equal(coded, [0.0, 0.0, 1.0, np.nan])
    np.testing.assert_array_equal(categories.codes(np.array([-0.0, 0.0]), categories.lookup(found), 0), [0.0, 0.0])
    with pytest.raises(InvalidData, match="beyond 2\\*\\*53"):
        categories.encode(pa.array([2**53 + 1, 1]), "id")


def long_strings(rows: int) -> pa.Table:
    """One string of 100 kB, the same in every row: a few kilobytes once compressed or in a dictionary."""
    text = "x" * 100_000
    return pa.table({"a": np.arange(rows, dtype=np.float64), "note": [text] * rows, "y": np.arange(rows) % 2})


def test_a_long_string_repeated_is_refused_before_it_is_copied_for_every_row(server: Server):
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(long_strings(600), sink, compression="zstd")
    parquet = sink.getvalue().to_pybytes()
    assert len(parquet) < 20_000  # 60 MB of text
    dictionary = long_strings(600)
    dictionary = dictionary.set_column(1, "note", dictionary.column("note").dictionary_encode())
    for body, content_type in ((parquet, PARQUET), (arrow_bytes(dictionary), ARROW)):
        for path in ("/train/stream", "/datasets"):
            with server.client() as client:
                fields = {"target": "y"} if path == "/train/stream" else {}
                refused = client.post(path, content=body, headers={"content-type": content_type}, params=fields)
            if path == "/datasets" and refused.status_code == 201:  # kept as a dictionary, not expanded
                assert refused.json()["size_bytes"] < 1_000_000
                continue
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["field"] == "note"
            assert "has a value of 100000 bytes: a category is at most 1024" in refused.json()["error"]["message"]
