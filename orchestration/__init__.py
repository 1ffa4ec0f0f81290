"""Dagster orchestration of the review pipeline: depends on `streaming/`, never the reverse."""
