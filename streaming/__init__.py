"""Streaming side of the review pipeline: ingestion, stream workers, sink configuration.

Runs without Dagster; `orchestration/` supervises it from outside.
"""
