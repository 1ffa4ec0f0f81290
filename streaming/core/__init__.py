"""Pure logic shared by batch code, stream workers and tests: no Kafka, no Dagster, no I/O."""
