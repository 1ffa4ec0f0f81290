"""The tables the sink writes, checked before a connector is deployed onto them.

The Debezium JDBC sink creates a table on its first record and afterwards only adds columns
(`schema.evolution=basic`); it never changes a primary key. A table created under another key
(the `reviews` table of an older config, keyed by `(id, modified)` before it was keyed by each
record's Kafka coordinates) would make every upsert fail, the task FAILED on its first batch.
Deploying onto such a table is refused up front, saying what to do instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa

KAFKA_COORDINATES = ("__connect_topic", "__connect_partition", "__connect_offset")
"""The columns, and primary key, of `primary.key.mode=kafka` (Debezium's default names)."""


class IncompatibleTable(ValueError):
    """A sink table exists with another primary key than the connector writes it with."""


def expected_key(config: Mapping[str, str]) -> tuple[str, ...] | None:
    """The primary key columns the connector upserts on; None when it does not upsert on one."""
    mode = config.get("primary.key.mode", "none")
    fields = tuple(f.strip() for f in config.get("primary.key.fields", "").split(",") if f.strip())
    if config.get("insert.mode") != "upsert" or mode == "none":
        return None
    if mode == "kafka":
        return fields or KAFKA_COORDINATES
    return fields or None  # empty: every field of the key or value, not known before a record


def table_key(engine: sa.Engine, table: str) -> tuple[str, ...] | None:
    """The primary key columns of `schema.table`, () without one, None when it does not exist."""
    schema, _, name = table.rpartition(".")
    inspector = sa.inspect(engine)
    if not inspector.has_table(name, schema=schema or None):
        return None
    return tuple(inspector.get_pk_constraint(name, schema=schema or None)["constrained_columns"])


def check_table(engine: sa.Engine, name: str, config: Mapping[str, str]) -> None:
    """IncompatibleTable when connector `name` would upsert into an existing table on a key the
    table does not have; nothing when the table is absent (the sink creates it) or matches."""
    wanted = expected_key(config)
    if wanted is None:
        return
    table = config["collection.name.format"]
    found = table_key(engine, table)
    if found is None or set(found) == set(wanted):
        return
    raise IncompatibleTable(
        f"{table} has primary key ({', '.join(found) or 'none'}), but connector {name} "
        f"upserts on ({', '.join(wanted)}); the sink cannot re-key an existing table, so "
        "every write would fail. The table was created by an earlier connector config. On the "
        "local stack, run `make clean` and then `make up` (it deletes the local topics, tables "
        "and Dagster history, and ingests everything again). Elsewhere: stop the connector, "
        f"drop {table}, reset the connector's offsets (DELETE /connectors/{name}/offsets) so it "
        "reads its topic again from the start, then deploy again."
    )


def check_tables(database_url: str, configs: Mapping[str, Mapping[str, str]]) -> None:
    """`check_table` for every connector about to be deployed (name -> rendered config)."""
    engine = sa.create_engine(database_url)
    try:
        for name, config in configs.items():
            check_table(engine, name, config)
    finally:
        engine.dispose()
