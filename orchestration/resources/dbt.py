"""dbt's CLI on the batch project."""

from __future__ import annotations

from functools import cached_property

from dagster_dbt import DbtCliResource
from dbt.version import __version__ as dbt_core_version
from packaging import version

from orchestration.dbt_project import DBT_PROJECT
from streaming.batch.dbt import dbt_executable
from streaming.settings import Settings


class OfflineDbtCliResource(DbtCliResource):
    """dagster-dbt's dbt CLI resource, minus its `dbt --version` call: that command always asks
    PyPI for the latest release (dbt ignores DBT_VERSION_CHECK there), which hangs or fails
    without internet. The version is the installed dbt-core's (this project runs dbt Core)."""

    @cached_property
    def _cli_version(self) -> version.Version:
        return version.parse(dbt_core_version)

    @classmethod
    def from_settings(cls, settings: Settings) -> OfflineDbtCliResource:
        """The repository's dbt project, run by the dbt installed beside this Python."""
        return cls(project_dir=DBT_PROJECT, dbt_executable=dbt_executable())  # type: ignore[arg-type]  # its validator takes a DbtProject
