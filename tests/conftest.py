"""Shared fixtures: our compiled forms, a seeded local KoboToolbox-compatible server on
127.0.0.1, a warehouse file in a temporary folder, and Prefect's test harness."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The tests (and the commands they start) keep their Prefect runs in a home of their own:
# ~/.prefect/prefect.db may have been migrated by a newer Prefect elsewhere on the machine
# (another checkout), which this one cannot start its server on; nor should tests add
# runs to a data manager's history.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="terrain-tests-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

from forms.build import BuiltForm, project_form  # noqa: E402
from kobo.seed import SeededServer, seeded_server  # noqa: E402


@pytest.fixture(scope="session")
def household() -> BuiltForm:
    return project_form("household_survey")


@pytest.fixture
def seeded(household: BuiltForm) -> Iterator[SeededServer]:
    """A fresh server per test: 250 household submissions, new-style paging (100/1000)."""
    server = seeded_server([household], 250, seed=7)
    with server.server:
        yield server


@pytest.fixture
def warehouse_path(tmp_path: Path) -> Path:
    return tmp_path / "terrain.duckdb"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Real Prefect flow runs against a temporary local Prefect API."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
