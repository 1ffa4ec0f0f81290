"""The asset graph: ingest (backfill), stream (external), batch (SQL models), reconciliation."""
