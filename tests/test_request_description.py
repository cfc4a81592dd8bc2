"""The training request is described once (`requests.spec.TrainOptions` and its arrays); every way
in (a JSON body, a table's query or form fields, the MCP tools, the CLI) is derived from it or
checked here against it. The constants the light clients keep a copy of (the CLI and the client
load no numpy) are checked against the one definition too."""

from __future__ import annotations

import msgspec

from boostream import cli, client
from boostream.config import Settings
from boostream.jobs.records import TERMINAL_EVENTS
from boostream.models.artifacts import FORMATS
from boostream.requests import tables
from boostream.requests.json_body import TrainRequestBody
from boostream.requests.schema import train_request_schema
from boostream.requests.spec import DATA_FIELDS, TrainOptions
from boostream.trainers import create_trainers
from boostream.trainers.base import OBJECTIVES

OPTIONS = set(TrainOptions.__struct_fields__)
DEFAULTS = TrainOptions()


def test_the_json_body_is_the_options_and_the_arrays():
    assert set(TrainRequestBody.__struct_fields__) == OPTIONS | set(DATA_FIELDS)


def test_the_mcp_training_tools_take_the_json_body_and_say_its_defaults():
    schema = train_request_schema(create_trainers(1), Settings().max_training_s)
    assert set(schema["properties"]) == OPTIONS | set(DATA_FIELDS)
    for name in ("model_type", "objective", "artifact_format"):
        assert schema["properties"][name]["default"] == getattr(DEFAULTS, name)
    assert schema["properties"]["objective"]["enum"] == list(OBJECTIVES)
    assert schema["properties"]["artifact_format"]["enum"] == list(FORMATS)
    required = {info.name for info in msgspec.structs.fields(TrainRequestBody) if info.required}
    assert set(schema["required"]) == required


def test_a_table_request_takes_the_options_as_text_fields_beside_its_columns():
    # feature_names come from the columns, params from every other field.
    # `categorical` is a list in JSON, comma-separated text beside a table.
    assert tables.OPTION_FIELDS == OPTIONS - {"feature_names", "params", "categorical"}
    assert tables.TABLE_FIELDS == {"target", "features", "era", "weight", "valid_rows", "categorical"}


def test_the_cli_keeps_every_request_field_out_of_its_params_and_knows_the_formats():
    assert cli.REQUEST_FIELDS == tables.OPTION_FIELDS | tables.TABLE_FIELDS | tables.ROUTE_FIELDS
    assert cli.ARTIFACT_FORMATS == FORMATS


def test_the_client_ends_a_stream_on_the_events_that_end_a_job():
    assert set(client.TERMINAL_EVENTS) == TERMINAL_EVENTS
