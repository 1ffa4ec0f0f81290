"""The control plane refuses strangers: the schema registry and Dagster's UI, both behind the
stack's proxy (stack/proxy.py), answer only their own Host names and only logged-in callers;
the registry's read-only user cannot register; Dagster's GraphQL takes no mutation a foreign
page could send (a GET, a form POST, a WebSocket of another Origin), and nothing runs when one
is refused."""

from __future__ import annotations

import base64
import http.client
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from streaming.settings import dagster_auth, read_secret, registry_auth

pytestmark = pytest.mark.integration

SCHEMA = json.dumps({"type": "record", "name": "Probe", "fields": [{"name": "a", "type": "int"}]})
TAG = "control-plane-auth-test"


@pytest.fixture(scope="module")
def registry_url() -> str:
    return os.environ["SCHEMA_REGISTRY_URL"]


@pytest.fixture(scope="module")
def reader() -> tuple[str, str]:
    user = os.environ["SCHEMA_REGISTRY_READER_USER"]
    path = os.environ["SCHEMA_REGISTRY_READER_PASSWORD_FILE"]
    return user, read_secret(path, "SCHEMA_REGISTRY_READER_PASSWORD_FILE")


@pytest.fixture(scope="module")
def dagster() -> str:
    return os.environ["DAGSTER_URL"].rstrip("/")


@pytest.fixture(scope="module")
def login() -> tuple[str, str]:
    auth = dagster_auth()
    assert auth, "make up names DAGSTER_USER and DAGSTER_PASSWORD_FILE in .stack/env"
    return auth


def test_the_registry_refuses_anonymous_callers(registry_url: str) -> None:
    assert httpx.get(f"{registry_url}/subjects", timeout=10).status_code == 401
    assert registry_auth(), "make up names SCHEMA_REGISTRY_USER for our clients"
    assert (
        httpx.get(f"{registry_url}/subjects", auth=registry_auth(), timeout=10).status_code == 200
    )


def test_the_registry_refuses_a_foreign_host(registry_url: str) -> None:
    answer = httpx.get(
        f"{registry_url}/subjects",
        auth=registry_auth(),
        headers={"Host": "rebound.example"},
        timeout=10,
    )
    assert answer.status_code == 421


def test_the_read_only_user_reads_but_cannot_register(
    registry_url: str, reader: tuple[str, str]
) -> None:
    assert httpx.get(f"{registry_url}/subjects", auth=reader, timeout=10).status_code == 200
    subject = f"control-plane-{uuid.uuid4().hex[:8]}-value"
    answer = httpx.post(
        f"{registry_url}/subjects/{subject}/versions",
        json={"schema": SCHEMA},
        auth=reader,
        timeout=10,
    )
    assert answer.status_code == 403
    listed = httpx.get(f"{registry_url}/subjects", auth=reader, timeout=10).json()
    assert subject not in listed


def test_dagster_asks_for_a_login(dagster: str) -> None:
    answer = httpx.get(f"{dagster}/server_info", timeout=10)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")


def test_dagster_refuses_a_foreign_host(dagster: str, login: tuple[str, str]) -> None:
    answer = httpx.get(
        f"{dagster}/server_info", auth=login, headers={"Host": "rebound.example"}, timeout=10
    )
    assert answer.status_code == 421


def graphql(dagster: str, login: tuple[str, str], query: str, **variables: Any) -> dict[str, Any]:
    answer = httpx.post(
        f"{dagster}/graphql",
        json={"query": query, "variables": variables},
        auth=login,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def test_a_json_post_with_the_login_is_answered(dagster: str, login: tuple[str, str]) -> None:
    assert graphql(dagster, login, "{ version }")["version"]


LAUNCH = """mutation {{ launchRun(executionParams: {{
  selector: {{repositoryLocationName: "{location}", repositoryName: "{repository}",
              jobName: "reconciliation"}},
  runConfigData: {{}},
  executionMetadata: {{tags: [{{key: "{tag}", value: "{value}"}}]}} }}) {{ __typename }} }}"""
RUNS = """query Runs($key: String!, $value: String!) {
  runsOrError(filter: {tags: [{key: $key, value: $value}]}) {
    ... on Runs { results { runId } } } }"""
TERMINATE = "mutation Stop($id: String!) { terminateRun(runId: $id) { __typename } }"


@pytest.fixture
def launch(dagster: str, login: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """A mutation that would launch the reconciliation job, tagged with a fresh value (the
    selector read from the server, so only the proxy stands between it and a run); any run it
    launched anyway is terminated afterwards."""
    found = graphql(
        dagster,
        login,
        "{ repositoriesOrError { ... on RepositoryConnection { nodes { name "
        "location { name } jobs { name } } } } }",
    )
    repo = next(
        r
        for r in found["repositoriesOrError"]["nodes"]
        if "reconciliation" in {j["name"] for j in r["jobs"]}
    )
    value = uuid.uuid4().hex
    mutation = LAUNCH.format(
        location=repo["location"]["name"], repository=repo["name"], tag=TAG, value=value
    )
    yield mutation, value
    for run in launched(dagster, login, value):
        graphql(dagster, login, TERMINATE, id=run)


def launched(dagster: str, login: tuple[str, str], value: str) -> list[str]:
    runs = graphql(dagster, login, RUNS, key=TAG, value=value)["runsOrError"]["results"]
    return [r["runId"] for r in runs]


def test_a_mutation_as_a_get_is_refused_and_launches_nothing(
    dagster: str, login: tuple[str, str], launch: tuple[str, str]
) -> None:
    mutation, value = launch
    answer = httpx.get(f"{dagster}/graphql", params={"query": mutation}, auth=login, timeout=30)
    assert answer.status_code == 405
    assert launched(dagster, login, value) == []


@pytest.mark.parametrize("body", ["form", "multipart", "text"])
def test_a_mutation_in_a_form_post_is_refused_and_launches_nothing(
    dagster: str, login: tuple[str, str], launch: tuple[str, str], body: str
) -> None:
    mutation, value = launch
    send: dict[str, Any] = {
        "form": {"data": {"query": mutation}},
        "multipart": {"files": {"query": (None, mutation)}},
        "text": {
            "content": json.dumps({"query": mutation}),
            "headers": {"Content-Type": "text/plain"},
        },
    }[body]
    answer = httpx.post(f"{dagster}/graphql", auth=login, timeout=30, **send)
    assert answer.status_code == 415
    assert launched(dagster, login, value) == []


def upgrade(dagster: str, login: tuple[str, str], origin: str | None) -> int:
    """The status of a GraphQL WebSocket handshake through the proxy (the connection is then
    closed: the status is what the browser would get)."""
    url = urlsplit(dagster)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=10)
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol": "graphql-ws",
        "Authorization": "Basic " + base64.b64encode(":".join(login).encode()).decode(),
    }
    if origin is not None:
        headers["Origin"] = origin
    try:
        conn.request("GET", "/graphql", headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_graphql_websocket_takes_only_its_own_origin(
    dagster: str, login: tuple[str, str]
) -> None:
    assert upgrade(dagster, login, dagster) == 101
    assert upgrade(dagster, login, "http://rebound.example") == 403
    assert upgrade(dagster, login, None) == 403


def test_the_password_files_are_private() -> None:
    for variable in ("DAGSTER_PASSWORD_FILE", "SCHEMA_REGISTRY_PASSWORD_FILE"):
        assert Path(os.environ[variable]).stat().st_mode & 0o777 == 0o600, variable
