"""The PostgreSQL sink: Kafka Connect JDBC sink connectors kept as configuration, and their
operations (deploy, status, restart, pause, resume) from code and from the `reviews` CLI.

Connector configs live in `streaming/sink/connectors/<name>.json` without connection details;
`render.render_connector` adds those from DATABASE_URL at deploy time, so no credential is
committed. Why each setting is what it is: `streaming/sink/README.md`.
"""
