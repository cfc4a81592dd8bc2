"""The package that installs the `boostream` command, as pip reads its pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"


def test_the_license_is_an_spdx_expression_not_the_table_setuptools_deprecates():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert project["license"] == "MIT"
