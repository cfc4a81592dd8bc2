"""GET /openapi.json: a valid OpenAPI 3.1 document of every route the app serves, its training
request the one the server and the MCP tools check with. (`make fuzz` runs schemathesis over it
against a real server; .ci/run does too.)"""

from __future__ import annotations

from pathlib import Path

from openapi_spec_validator import validate
from starlette.routing import Mount, Route
from test_access import bearer, make_key

from boostream.config import Settings
from boostream.requests.schema import train_request_schema
from boostream.streaming_server.app import create_app
from boostream.trainers import create_trainers

from conftest import Server, running_server

METHODS = {"get", "post", "delete", "put", "patch"}


def test_the_document_is_valid_openapi_3_1_and_lists_every_route_the_app_serves(server: Server):
    with server.client() as client:
        document = client.get("/openapi.json").json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    documented = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item if method in METHODS
    }
    served = {
        (route.path, method)
        for route in create_app(Settings()).routes
        if isinstance(route, Route) and not isinstance(route, Mount)
        for method in (route.methods or {"GET", "POST", "DELETE"}) - {"HEAD"}
    }
    assert served == documented, (served - documented, documented - served)


def test_the_training_request_is_the_one_the_server_checks(server: Server):
    with server.client() as client:
        document = client.get("/openapi.json").json()
    expected = train_request_schema(create_trainers(1), Settings().max_training_s)
    assert document["components"]["schemas"]["TrainRequest"] == expected
    parameters = {p["name"] for p in document["paths"]["/jobs"]["post"]["parameters"]}
    assert {"target", "features", "era", "objective", "n_estimators", "num_leaves", "num_bins"} <= parameters
    for path in ("/jobs", "/train/stream"):
        for status in ("401", "413", "422", "429", "507"):
            error = document["paths"][path]["post"]["responses"][status]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/Error"}, (path, status)


def test_the_document_needs_no_key(tmp_path: Path):
    with running_server(tmp_path) as keyed, keyed.client() as client:
        make_key(keyed.data_dir, "reader")
        assert client.get("/jobs").status_code == 401
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/jobs", headers=bearer("bst_wrong")).status_code == 401
