"""The pipeline's HTTP API: `POST /reviews` (ingestion) and the statistics read API."""
