"""`GET /openapi.json`: the HTTP API as an OpenAPI 3.1 document.

Its requests come from the descriptions the server checks them with: the JSON training request is
`requests.schema.train_request_schema` (the MCP `train` tool's input too, from `TrainOptions` and
each backend's `ParamSpec`s), a table upload's query fields are `requests.tables`' option and table
fields with the same schemas, and every route the app serves is listed (a test holds the two
together). Every error is the one documented body, `Error`, under the statuses the README's table
gives each route.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from boostream import __version__
from boostream.jobs.records import JobStatus
from boostream.models.artifacts import FORMATS as ARTIFACT_FORMATS
from boostream.models.predicting import OUTPUTS
from boostream.requests.schema import table_schema, train_request_schema, tune_request_schema
from boostream.requests.spec import TABLE_FIELDS
from boostream.service import Service
from boostream.streaming_server.limits import DEFAULT_PAGE, MAX_ID, MAX_PAGE, ON_DISCONNECT
from boostream.tuning import STATUSES as TUNE_STATUSES

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
TABLE_MEDIA = {
    "text/csv": "CSV text: a header row, then a row per sample",
    "application/vnd.apache.parquet": "a Parquet file",
    "application/vnd.apache.arrow.stream": "an Arrow IPC stream: the fastest way in (mapped, not parsed)",
    "application/vnd.apache.arrow.file": "a file in the Arrow IPC file format (Feather 2)",
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
# One event of a stream, as a reader parses it: its data is JSON text.
SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
ID_PATTERN = "^[0-9a-f]{32}$"
DATASET_ID_PATTERN = "^ds_[0-9a-f]{24}$"
STATUSES = "|".join(status.value for status in JobStatus)
STATUS_TEXT = {
    400: "The body cannot be read: malformed JSON, a key sent twice, data that does not fit together.",
    401: "No API key, or one that is unknown or revoked (a server with keys).",
    403: "A page of another origin, an untrusted artifact, or /metrics without an admin key.",
    404: "No such job or artifact (unknown, deleted, expired, or another key's).",
    405: "A method the path does not take.",
    408: "The request's headers did not come whole in time, or its body stopped arriving.",
    409: "The job is not where the request needs it (its `status` says where).",
    410: "The artifact's file is missing from the server.",
    411: "A multipart upload without a Content-Length.",
    413: "A body or table over the server's limits.",
    415: "A body of a media type the route does not take.",
    421: "A Host the server does not answer to.",
    422: "An option or hyperparameter that is unknown, of the wrong type or out of bounds.",
    429: "A full queue, or a key over its jobs or its request rate; `Retry-After` says when to try again.",
    503: (
        "A backend that cannot train here, a store out of reach for now, or as many request bodies held"
        " as the server may (`Retry-After`)."
    ),
    507: "The server's disk is full.",
}
# Every route may answer these: the access checks come first.
ALWAYS = (401, 421, 429)
# 404: a dataset the request names is not (or no longer) there.
SUBMIT_ERRORS = (400, 403, 404, 408, 411, 413, 415, 422, 503, 507)


def openapi_document(service: Service) -> dict[str, Any]:
    trainers = service.trainers
    train_request = train_request_schema(trainers, service.settings.max_training_s)
    job_id = _path_id("job_id", "A job's id, as `POST /jobs` answered it.")
    artifact_id = _path_id("artifact_id", "An artifact's id, from the job's `complete` event or status.")
    submit_body: dict[str, Any] = {
        "required": True,
        "content": {
            JSON: {"schema": {"$ref": "#/components/schemas/TrainRequest"}},
            **{
                media: {"schema": {"type": "string", "format": "binary", "description": text}}
                for media, text in TABLE_MEDIA.items()
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A .csv, .parquet, .arrows (Arrow IPC stream) or .arrow file.",
                        }
                    },
                    "required": ["file"],
                }
            },
        },
    }
    dataset_pattern = {"type": "string", "pattern": DATASET_ID_PATTERN}
    tune_id = _path_id("tune_id", "A search's id, as `POST /tunes` answered it.")
    # Where a job's or a search's events resume: EventSource's header, or the query.
    follow_parameters = [
        {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}},
        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string", "pattern": "^([0-9]{1,18})?$"}},
    ]
    tune_body = {"required": True, "content": {JSON: {"schema": {"$ref": "#/components/schemas/TuneRequest"}}}}
    table_fields = [
        *_table_query_parameters(trainers, train_request),
        *(
            {"name": name, "in": "query", "schema": dataset_pattern, "description": it}
            for name, it in (
                ("dataset_id", "Train on this dataset (POST /datasets) instead of a body: send none."),
                ("valid_dataset_id", "With dataset_id: this dataset's rows are the validation set."),
            )
        ),
    ]
    dataset_id = _path_id("dataset_id", "A dataset's id, as `POST /datasets` answered it.", DATASET_ID_PATTERN)
    dataset_body = {
        **submit_body,
        "content": {
            **submit_body["content"],
            JSON: {"schema": {"$ref": "#/components/schemas/DatasetColumns"}},
        },
    }
    paths: dict[str, Any] = {
        "/": {
            "get": _operation(
                "dashboard",
                "The browser dashboard.",
                {200: {"description": "Its page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
                always=(),
            )
        },
        "/health": {
            "get": _operation(
                "health", "The server's state: backends, queues, workers.", {200: _json("Health")}, always=()
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus text format (an admin key's, on a server with keys).",
                {200: {"description": "The metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                403,
            )
        },
        "/openapi.json": {
            "get": _operation(
                "openapi",
                "This document.",
                {200: {"description": "OpenAPI 3.1.", "content": {JSON: {"schema": {"type": "object"}}}}},
                always=(421, 429),
            )
        },
        "/models": {
            "get": _operation(
                "list_models", "Each backend: availability, objectives, hyperparameters.", {200: _json("Models")}
            )
        },
        "/session": {
            "get": _operation(
                "who_am_i",
                "Whether this browser must sign in, and as whom it is.",
                {200: _json("Session")},
                always=(421, 429),
            ),
            "post": {
                **_operation(
                    "sign_in",
                    "Sign a browser in with an API key: sets the session cookie.",
                    {200: _json("Session")},
                    400,
                    403,
                    422,
                    always=(401, 421, 429),
                ),
                "requestBody": {
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {"api_key": {"type": "string"}},
                                "description": "The key, unless it comes as a bearer token; a server "
                                "without keys takes none.",
                            }
                        }
                    }
                },
            },
            "delete": _operation(
                "sign_out", "Sign the browser out.", {204: {"description": "Signed out."}}, 403, always=(421, 429)
            ),
        },
        "/train/stream": {
            "post": {
                **_operation(
                    "train_stream",
                    "Create a job and stream its events to its end.",
                    {
                        200: {
                            "description": "The job's events.",
                            "content": {EVENT_STREAM: {"schema": SSE_EVENT}},
                        }
                    },
                    *SUBMIT_ERRORS,
                ),
                "parameters": [
                    {
                        "name": "on_disconnect",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(ON_DISCONNECT), "default": ON_DISCONNECT[0]},
                    },
                    *table_fields,
                ],
                "requestBody": submit_body,
            }
        },
        "/jobs": {
            "post": {
                **_operation(
                    "create_job",
                    "Create a job; follow it by the URLs answered.",
                    {202: _json("JobCreated", headers={"Location": {"schema": {"type": "string"}}})},
                    *SUBMIT_ERRORS,
                ),
                "parameters": table_fields,
                "requestBody": submit_body,
            },
            "get": {
                **_operation(
                    "list_jobs", "The caller's jobs (an admin's: all), newest first.", {200: _json("JobList")}, 422
                ),
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "pattern": f"^(|({STATUSES})(,({STATUSES}))*)$"},
                        "description": "Comma-separated statuses.",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"}},
                ],
            },
        },
        "/jobs/{job_id}": {
            "parameters": [job_id],
            "get": _operation(
                "job_status", "A job's status, progress, metrics, timings and error.", {200: _json("Job")}, 404
            ),
            "delete": _operation(
                "delete_job",
                "Remove a finished job, its events and its artifact.",
                {204: {"description": "Removed."}},
                403,
                404,
                409,
            ),
        },
        "/jobs/{job_id}/events": {
            "parameters": [job_id],
            "get": {
                **_operation(
                    "job_events",
                    "The job's events after Last-Event-ID (or `after`), then live ones, to its end.",
                    {
                        200: {"description": "The events.", "content": {EVENT_STREAM: {"schema": SSE_EVENT}}},
                        204: {"description": "The job has ended and nothing is left after that id."},
                    },
                    404,
                    422,
                ),
                "parameters": follow_parameters,
            },
        },
        "/jobs/{job_id}/result": {
            "parameters": [job_id],
            "get": _operation(
                "job_result",
                "The `complete` event of a job that succeeded, with its artifact.",
                {200: _json("Result")},
                404,
                409,
            ),
        },
        "/jobs/{job_id}/cancel": {
            "parameters": [job_id],
            "post": _operation("cancel_job", "Stop a job at its next round.", {202: _json("Cancelled")}, 403, 404, 409),
        },
        "/artifacts/{artifact_id}": {
            "parameters": [artifact_id],
            "get": {
                **_operation(
                    "download_artifact",
                    "The model file, signed (X-Boostream-Signature).",
                    {
                        200: {
                            "description": "The file.",
                            "content": {
                                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                                "text/plain": {"schema": {"type": "string"}},
                                JSON: {"schema": {}},
                            },
                        }
                    },
                    404,
                    410,
                    422,
                ),
                "parameters": [
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(ARTIFACT_FORMATS), "default": "joblib"},
                    }
                ],
            },
        },
        "/artifacts/{artifact_id}/metadata": {
            "parameters": [artifact_id],
            "get": _operation("artifact_metadata", "What is known of an artifact.", {200: _json("Artifact")}, 404),
        },
        "/tune/stream": {
            "post": {
                **_operation(
                    "tune_stream",
                    "Run a hyperparameter search, each trial a job, and stream its events to its end.",
                    {200: {"description": "The search's events.", "content": {EVENT_STREAM: {"schema": SSE_EVENT}}}},
                    *SUBMIT_ERRORS,
                ),  # fmt: skip
                "requestBody": tune_body,
            }
        },
        "/tunes": {
            "post": {
                **_operation(
                    "create_tune",
                    "Start a hyperparameter search; follow it by the URLs answered.",
                    {202: _json("TuneCreated", headers={"Location": {"schema": {"type": "string"}}})},
                    *SUBMIT_ERRORS,
                ),  # fmt: skip
                "requestBody": tune_body,
            },
            "get": _operation(
                "list_tunes", "The caller's searches (an admin's: all), newest first.", {200: _json("TuneList")}
            ),
        },
        "/tunes/{tune_id}": {
            "parameters": [tune_id],
            "get": _operation("tune_status", "A search's status, trials and best trial.", {200: _json("Tune")}, 404),
            "delete": _operation(
                "delete_tune", "Forget a finished search (its trials' jobs stay).", {204: {"description": "Gone."}},
                404, 409,
            ),  # fmt: skip
        },
        "/tunes/{tune_id}/events": {
            "parameters": [tune_id],
            "get": {
                **_operation(
                    "tune_events",
                    "The search's events after Last-Event-ID (or `after`), then live ones, to its end.",
                    {
                        200: {"description": "The events.", "content": {EVENT_STREAM: {"schema": SSE_EVENT}}},
                        204: {"description": "The search has ended and nothing is left after that id."},
                    },
                    404,
                    422,
                ),
                "parameters": follow_parameters,
            },
        },
        "/tunes/{tune_id}/result": {
            "parameters": [tune_id],
            "get": _operation(
                "tune_result", "The `complete` event of a search that succeeded.", {200: _json("TuneResult")}, 404, 409
            ),
        },
        "/tunes/{tune_id}/cancel": {
            "parameters": [tune_id],
            "post": _operation(
                "cancel_tune", "Stop a search, each trial after its round.", {202: _json("TuneCancelled")}, 404, 409
            ),
        },
        "/datasets": {
            "post": {
                **_operation(
                    "create_dataset",
                    "Upload a table once (CSV, Parquet, Arrow, or JSON columns), decoded once; train on it "
                    "with `dataset_id` in a training request's query, without a body.",
                    {201: _json("Dataset", headers={"Location": {"schema": {"type": "string"}}})},
                    400,
                    403,
                    408,
                    411,
                    413,
                    415,
                    422,
                    503,
                    507,
                ),
                "parameters": [
                    {
                        "name": "name",
                        "in": "query",
                        "schema": {"type": "string", "maxLength": 200},
                        "description": "A label for people.",
                    }
                ],
                "requestBody": dataset_body,
            },
            "get": _operation(
                "list_datasets", "The caller's datasets (an admin's: all), newest first.", {200: _json("DatasetList")}
            ),
        },
        "/datasets/{dataset_id}": {
            "parameters": [dataset_id],
            "get": _operation("dataset", "A dataset's shape and columns.", {200: _json("Dataset")}, 404),
            "delete": _operation("delete_dataset", "Remove a dataset.", {204: {"description": "Removed."}}, 404),
        },
        "/predict": {
            "post": {
                **_operation(
                    "predict",
                    "Predictions from a stored artifact, or one handed back with its signature.",
                    {200: _json("Predictions")},
                    400,
                    403,
                    404,
                    408,
                    410,
                    413,
                    415,
                    422,
                    503,
                    507,
                ),
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
                },
            }
        },
        # MCP's own protocol (JSON-RPC over Streamable HTTP, specified at modelcontextprotocol.io):
        # listed with its methods, its answers left to that specification.
        "/mcp": {
            method: {
                "operationId": f"mcp_{method}",
                "summary": f"MCP over Streamable HTTP: {what}.",
                "responses": {"default": {"description": "As the MCP specification says."}},
            }
            for method, what in (
                ("post", "a JSON-RPC message"),
                ("get", "the session's stream of server messages"),
                ("delete", "the end of a session"),
            )
        },
    }
    _link(
        paths["/jobs"]["post"], "202", "job_id", ("job_status", "job_events", "job_result", "cancel_job", "delete_job")
    )
    _link(paths["/jobs/{job_id}"]["get"], "200", "artifact_id", ("download_artifact", "artifact_metadata"))
    _link(
        paths["/tunes"]["post"], "202", "tune_id",
        ("tune_status", "tune_events", "tune_result", "cancel_tune", "delete_tune"),
    )  # fmt: skip
    _link(paths["/datasets"]["post"], "201", "dataset_id", ("dataset", "delete_dataset"))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "boostream",
            "version": __version__,
            "summary": "Train gradient-boosted trees (LightGBM on a CPU, WarpGBM on a GPU), streaming their progress.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`boostream keys create NAME` makes one.",
                },
                "session": {"type": "apiKey", "in": "cookie", "name": "boostream_session"},
            },
            "schemas": _schemas(train_request),
        },
        "security": [{"apiKey": []}, {"session": []}, {}],
    }


def _operation(
    operation_id: str, summary: str, answers: Mapping[int, Any], *errors: int, always: tuple[int, ...] = ALWAYS
) -> dict[str, Any]:
    responses: dict[str, Any] = {str(status): answer for status, answer in answers.items()}
    for status in sorted({*errors, *always, 405}):
        responses[str(status)] = {
            "description": STATUS_TEXT.get(status, "Refused."),
            "content": {JSON: {"schema": ERROR_REF}},
        }
    return {"operationId": operation_id, "summary": summary, "responses": responses}


def _link(operation: dict[str, Any], status: str, field: str, to: tuple[str, ...]) -> None:
    """Where an answer's id leads (OpenAPI links): what a stateful client, or fuzzer, does next."""
    operation["responses"][status]["links"] = {
        target: {"operationId": target, "parameters": {field: f"$response.body#/{field}"}} for target in to
    }


def _json(schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": schema,
        "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def _path_id(name: str, description: str, pattern: str = "") -> dict[str, Any]:
    schema = {"type": "string", "pattern": pattern or ID_PATTERN}  # what the server makes: any other is a 404
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _table_query_parameters(trainers: Mapping[str, Any], train_request: dict[str, Any]) -> list[dict[str, Any]]:
    """A CSV, Parquet or Arrow body's fields, as query parameters: its columns, the options (with the JSON
    request's schemas), and each backend's hyperparameters by name."""
    from boostream.requests import tables  # pyarrow loads in ~0.3 s: only when the document is made

    options = train_request["properties"]
    column, count = {"type": "string"}, {"type": "integer", "minimum": 1}
    fields = {
        "target": (column, "A table body: the label column (required with one)."),
        "features": (column, "A table body: the feature columns, comma-separated (default: all the others)."),
        "era": (column, "A table body, WarpGBM: the column of era ids."),
        "weight": (column, "A table body, LightGBM: the column of sample weights."),
        "valid_rows": (count, "A table body: its last this many rows are the validation set."),
        "categorical": (
            column,
            "A table body, LightGBM: the feature columns whose values are categories, comma-separated "
            "(CSV text needs naming; Parquet and Arrow string and dictionary columns are categorical unnamed).",
        ),
    }
    parameters = [
        {"name": name, "in": "query", "schema": schema, "description": description}
        for name, (schema, description) in fields.items()
    ]
    assert {parameter["name"] for parameter in parameters} == set(TABLE_FIELDS)
    parameters += [{"name": name, "in": "query", "schema": options[name]} for name in sorted(tables.OPTION_FIELDS)]
    seen = {parameter["name"] for parameter in parameters}
    for trainer in trainers.values():
        for spec in trainer.params:
            if spec.name not in seen:
                seen.add(spec.name)
                parameters.append(
                    {
                        "name": spec.name,
                        "in": "query",
                        "schema": spec.json_schema(),
                        "description": f"A table body: {spec.description}",
                    }
                )
    return parameters


def _schemas(train_request: dict[str, Any]) -> dict[str, Any]:
    numbers = {"type": "object", "additionalProperties": {"type": ["number", "null"]}}
    status = {"type": "string", "enum": [s.value for s in JobStatus]}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": "string"},
                        "status": {"type": "string"},
                    },
                }
            },
        },
        "TrainRequest": train_request,
        "TuneRequest": tune_request_schema(train_request),
        "TuneCreated": {
            "type": "object",
            "required": ["tune_id", "status", "status_url", "events_url", "result_url", "cancel_url"],
            "properties": {
                "tune_id": {"type": "string"},
                "status": {"type": "string", "enum": list(TUNE_STATUSES)},
                **{name: {"type": "string"} for name in ("status_url", "events_url", "result_url", "cancel_url")},
            },
        },
        "Tune": {
            "type": "object",
            "required": ["tune_id", "status", "n_trials", "trials", "best", "created_at"],
            "properties": {
                "tune_id": {"type": "string"},
                "status": {"type": "string", "enum": list(TUNE_STATUSES)},
                "metric": {"type": "string"},
                "n_trials": {"type": "integer"},
                "trials": {"type": "object", "description": "Trials by state: running, complete, pruned, failed."},
                "best": {"type": ["object", "null"]},
                "created_at": {"type": "number"},
                "finished_at": {"type": ["number", "null"]},
                "error": {"type": ["object", "null"]},
            },
        },
        "TuneCancelled": {
            "type": "object",
            "required": ["tune_id", "status", "cancel_requested"],
            "properties": {
                "tune_id": {"type": "string"},
                "status": {"type": "string", "enum": list(TUNE_STATUSES)},
                "cancel_requested": {"type": "boolean"},
            },
        },
        "TuneList": {
            "type": "object",
            "required": ["tunes"],
            "properties": {"tunes": {"type": "array", "items": {"$ref": "#/components/schemas/Tune"}}},
        },
        "TuneResult": {
            "type": "object",
            "required": ["best", "best_params", "best_value", "artifact_id", "leaderboard"],
            "properties": {
                "best": {"type": "object"},
                "best_params": {"type": "object"},
                "best_value": {"type": "number"},
                "artifact_id": {"type": "string", "description": "The best trial's model, trained in the search."},
                "leaderboard": {"type": "array", "items": {"type": "object"}},
                "importances": {"type": ["object", "null"]},
            },
        },
        "PredictRequest": {
            "type": "object",
            "additionalProperties": False,
            "allOf": [
                {"oneOf": [{"required": ["artifact_id"]}, {"required": ["artifact"]}]},
                {"oneOf": [{"required": ["X"]}, {"required": ["dataset_id", "artifact_id"]}]},
            ],
            "properties": {
                "dataset_id": {
                    "type": "string",
                    "pattern": DATASET_ID_PATTERN,
                    "description": "Instead of X: every row of this dataset, its columns picked by the "
                    "model's feature names (with artifact_id).",
                },
                "X": table_schema(
                    "Rows to predict, each a list of numbers (null: missing); a categorical feature's values "
                    "as in training (strings or numbers; one the model never saw is missing)."
                ),
                "artifact_id": {"type": "string", "pattern": ID_PATTERN},
                "artifact": {
                    "type": "string",
                    "description": "A model file in base64, as a `complete` event carried it.",
                },
                "artifact_format": {"type": "string", "enum": list(ARTIFACT_FORMATS), "default": "joblib"},
                "signature": {"type": "string"},
                "output": {"type": "string", "enum": list(OUTPUTS), "default": "value"},
            },
        },
        "Dataset": {
            "type": "object",
            "required": ["dataset_id", "rows", "columns", "format", "size_bytes", "created_at", "expires_at"],
            "properties": {
                "dataset_id": {"type": "string"},
                "name": {"type": ["string", "null"]},
                "rows": {"type": "integer"},
                "columns": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "type": {"type": "string"}},
                    },
                },
                "format": {"type": "string", "enum": ["json", "csv", "parquet", "arrow"]},
                "size_bytes": {"type": "integer"},
                "created_at": {"type": "number", "description": "Unix time."},
                "expires_at": {"type": "number", "description": "Unix time: a use (training) pushes it back."},
            },
        },
        "DatasetList": {
            "type": "object",
            "required": ["datasets"],
            "properties": {"datasets": {"type": "array", "items": {"$ref": "#/components/schemas/Dataset"}}},
        },
        "DatasetColumns": {
            "type": "object",
            "required": ["columns"],
            "additionalProperties": False,
            "properties": {
                "columns": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": {
                        "type": "array",
                        "items": {"type": ["number", "string", "boolean", "null"]},
                    },
                    "description": "Each column's values by its name, every column as long.",
                }
            },
        },
        "JobCreated": {
            "type": "object",
            "required": ["job_id", "status", "status_url", "events_url", "result_url", "cancel_url"],
            "properties": {
                "job_id": {"type": "string"},
                "status": status,
                **{name: {"type": "string"} for name in ("status_url", "events_url", "result_url", "cancel_url")},
            },
        },
        "Job": {
            "type": "object",
            "required": ["job_id", "status", "model_type", "objective", "device", "progress", "created_at"],
            "properties": {
                "job_id": {"type": "string"},
                "status": status,
                "owner": {"type": ["string", "null"]},
                "model_type": {"type": "string"},
                "objective": {"type": "string"},
                "device": {"type": "string"},
                "created_at": {"type": "string"},
                "started_at": {"type": ["string", "null"]},
                "finished_at": {"type": ["string", "null"]},
                "progress": {"type": "object"},
                "metrics": numbers,
                "error": {"type": ["object", "null"]},
                "artifact_id": {"type": ["string", "null"]},
            },
        },
        "JobList": {
            "type": "object",
            "required": ["jobs", "next_cursor"],
            "properties": {
                "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "Cancelled": {
            "type": "object",
            "required": ["job_id", "status", "cancel_requested"],
            "properties": {"job_id": {"type": "string"}, "status": status, "cancel_requested": {"type": "boolean"}},
        },
        "Result": {
            "type": "object",
            "required": ["job_id", "artifact_id", "artifact", "metrics", "iterations", "best_iteration"],
            "properties": {
                "job_id": {"type": "string"},
                "artifact_id": {"type": "string"},
                "artifact": {"type": "string", "description": "The model file in base64."},
                "format": {"type": "string"},
                "metrics": numbers,
                "iterations": {"type": "integer"},
                "best_iteration": {"type": "integer"},
            },
        },
        "Artifact": {"type": "object", "required": ["artifact_id"], "properties": {"artifact_id": {"type": "string"}}},
        "Predictions": {
            "type": "object",
            "required": ["predictions", "shape", "output"],
            "properties": {
                "predictions": {"type": "array"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "output": {"type": "string", "enum": list(OUTPUTS)},
                "classes": {"type": ["array", "null"]},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "version", "backends", "queue"],
            "properties": {
                "status": {"type": "string"},
                "version": {"type": "string"},
                "backends": {"type": "object"},
                "queue": {"type": "object"},
            },
        },
        "Models": {
            "type": "object",
            "required": ["models"],
            "properties": {"models": {"type": "array", "items": {"type": "object"}}},
        },
        "Session": {
            "type": "object",
            "required": ["keys_required", "name", "admin"],
            "properties": {
                "keys_required": {"type": "boolean"},
                "signed_in": {"type": "boolean"},
                "name": {"type": ["string", "null"]},
                "admin": {"type": "boolean"},
            },
        },
    }
