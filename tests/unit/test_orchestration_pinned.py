"""What a run reaches is the deployment's: a run config cannot re-point the code location's
resources at another URL, executable, module or directory (orchestration.resources.deployed)."""

from __future__ import annotations

import dagster as dg
import pytest

from orchestration.definitions import defs
from orchestration.resources import ConnectResource, deployed

LOCATIONS = [
    ("kafka", "bootstrap_servers", "evil:9092"),
    ("schema_registry", "url", "http://evil.example/apis/ccompat/v7"),
    ("postgres", "database_url", "postgresql://evil.example/x"),
    ("review_source", "api_url", "http://evil.example/api-2.0"),
    ("connect", "url", "http://evil.example:8083"),
    ("worker_runtime", "python", "/tmp/evil-python"),
    ("worker_runtime", "modules", {"fraud-filter-0": "evil.module"}),
    ("worker_runtime", "root", "/tmp"),
    ("worker_runtime", "health_urls", {"fraud-filter-0": "http://evil.example/health"}),
    ("dbt", "dbt_executable", "/tmp/evil-dbt"),
    ("dbt", "project_dir", "/tmp"),
]


@pytest.mark.parametrize(("resource", "field", "value"), LOCATIONS)
def test_a_run_config_that_re_points_a_resource_is_refused(
    resource: str, field: str, value: object
) -> None:
    job = defs.resolve_job_def("batch_statistics")
    run_config = {"resources": {resource: {"config": {field: value}}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match=f'unexpected config entry "{field}"'):
        dg.validate_run_config(job, run_config)


def test_the_scratch_schemas_stay_a_runs_choice() -> None:
    job = defs.resolve_job_def("batch_statistics")
    dg.validate_run_config(job, {"resources": {"schemas": {"config": {"batch_schema": "b2"}}}})


def test_a_deployed_resource_is_the_settings_read_in_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONNECT_URL", "http://connect.internal:8083")
    seen: list[str] = []

    @dg.asset
    def probe(connect: ConnectResource) -> None:
        seen.append(connect.url)

    resources = {"connect": deployed(ConnectResource)}
    assert dg.materialize([probe], resources=resources).success
    assert seen == ["http://connect.internal:8083"]
    evil = {"resources": {"connect": {"config": {"url": "http://evil.example"}}}}
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.materialize([probe], resources=resources, run_config=evil)
    assert seen == ["http://connect.internal:8083"], "the refused run never ran"
