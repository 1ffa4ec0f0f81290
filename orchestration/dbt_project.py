"""The dbt project as Dagster sees it: the manifest (parsed when stale), the translator that
names its assets as the rest of the graph does, and the connection dbt gets from DATABASE_URL."""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtProject

from orchestration.topology import batch_key, table_key
from streaming.batch.dbt import PROJECT_DIR, dbt_env, dbt_executable

BUILT_DAILY = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=1))
"""Dagster's own freshness for every batch asset (the `fresh_within_a_day` checks' promise)."""


def _project_files(project: Path) -> Iterator[Path]:
    for pattern in ("*.yml", "models/**/*", "macros/**/*", "tests/**/*"):
        yield from (p for p in project.glob(pattern) if p.is_file())


def prepare_manifest(project: Path = PROJECT_DIR) -> Path:
    """`target/manifest.json`, parsed again when missing or older than a file of the project.

    Every process that loads the definitions (the code server, each run) calls this; the parse
    writes into a directory of its own and the manifest is moved into place atomically, so
    processes starting together never read a half-written one.
    """
    manifest = project / "target" / "manifest.json"
    newest = max(p.stat().st_mtime for p in _project_files(project))
    if manifest.exists() and manifest.stat().st_mtime >= newest:
        return manifest
    manifest.parent.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="parse-", dir=manifest.parent))
    try:
        env = {**dbt_env("postgresql://localhost/reviews"), "DBT_TARGET_PATH": str(scratch)}
        env["DBT_LOG_PATH"] = str(scratch)
        done = subprocess.run(
            [dbt_executable(), "parse", "--quiet"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"dbt parse of {project} failed:\n{done.stdout}{done.stderr}")
        os.replace(scratch / "manifest.json", manifest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifest


DBT_PROJECT = DbtProject(project_dir=PROJECT_DIR)
MANIFEST = prepare_manifest()


class BatchTranslator(DagsterDbtTranslator):
    """Asset keys as the rest of the graph names them: models `batch/<model>`, the sink's table
    `postgres/<table>`, the verdicts as their source's meta says (`batch/review_verdicts`)."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        kind = dbt_resource_props["resource_type"]
        if kind == "source" and dbt_resource_props["source_name"] == "stream":
            return table_key(dbt_resource_props["name"])
        if kind == "model":
            return batch_key(dbt_resource_props["name"])
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "batch" if dbt_resource_props["resource_type"] == "model" else None

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if not unique_id.startswith("model."):
            return spec
        return spec.replace_attributes(freshness_policy=BUILT_DAILY)


TRANSLATOR = BatchTranslator()


@contextmanager
def dbt_connection(database_url: str) -> Iterator[None]:
    """The dbt CLI resource passes this process's environment to dbt (and reads the profile in
    it): PG* from DATABASE_URL and the offline flags for the call's duration. A run process
    executes one step at a time (in-process executor), so nothing else sees the change."""
    saved = dict(os.environ)
    os.environ.update(dbt_env(database_url, base={}))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
