"""The API fuzzed with schemathesis from its own OpenAPI document: whatever it is sent, a live
``boride serve`` answers without a 5xx, and never leaves a component running."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from boride.config import Limits, Timeouts
from boride.server import ServerConfig, create_app
from tests.conftest import boride_processes
from tests.test_server_support import EXAMPLE_REGISTRY, Running, running_server

# Bounded so that the suite stays fast: hypothesis' generate phase only, a few examples per
# route. BORIDE_FUZZ_FULL=1 adds schemathesis' coverage phase (its explicit examples: about
# 3000 requests, a minute) and more generated examples.
FULL = os.environ.get("BORIDE_FUZZ_FULL") == "1"
MAX_EXAMPLES = 100 if FULL else 15
PHASES = [Phase.explicit, Phase.generate] if FULL else [Phase.generate]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "dev" / "tpl").mkdir(parents=True)
    config = ServerConfig(registry=(str(EXAMPLE_REGISTRY),), dev_root=root / "dev",
                          work_root=root / "work", limits=Limits(max_sessions=16),
                          timeouts=Timeouts(ready=20))
    with running_server(config) as server:
        yield server
    assert boride_processes() == []
    work = root / "work"
    assert not work.exists() or list(work.iterdir()) == []


# The document does not depend on the configuration: take it from an app never started.
# (schemathesis.pytest.from_fixture does not work with pytest 9.)
schema = schemathesis.openapi.from_dict(create_app(ServerConfig()).openapi())


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, phases=PHASES, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(fuzzed: Running, case: schemathesis.Case) -> None:
    case.call_and_validate(base_url=fuzzed.url, checks=[not_a_server_error, status_code_conformance,
                                   response_schema_conformance, negative_data_rejection])


def test_openapi_document_and_docs(fuzzed: Running, tmp_path: Path) -> None:
    with fuzzed.client() as http:
        doc = http.get("/openapi.json").json()
        assert http.get("/docs").status_code == 200
    paths = doc["paths"]
    for path in ("/", "/executor", "/executor/{sessionId}", "/executor/{sessionId}/warm",
                 "/executor/try", "/template/warm", "/proxy/template/{cyanId}/api/template/init",
                 "/proxy/template/{cyanId}/api/template/validate",
                 "/proxy/resolver/{cyanId}/api/resolve", "/metrics"):
        assert path in paths, path
    assert "/zip" not in paths and "/merge/{sessionId}" not in paths  # internal routes
    build = paths["/executor/{sessionId}"]["post"]["responses"]
    assert "application/x-gzip" in build["200"]["content"]
    assert "422" not in build and "400" in build
