"""The single entry point Dagster loads (workspace.yaml, `dagster dev -m ...definitions`)."""

import dagster as dg

from orchestration.assets import topic_assets

defs = dg.Definitions(assets=topic_assets)
