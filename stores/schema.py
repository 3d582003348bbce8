"""Declared table schemas: one `TableSpec` per stage output, the single source for DuckDB DDL and expectations.

A stage declares its output columns once; the store creates the table from the declaration and the Great
Expectations suite (`tasks/validate.py`) checks rows against the same declaration, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str  # DuckDB type: VARCHAR, DOUBLE, INTEGER, BOOLEAN, VARCHAR[]
    nullable: bool = False
    min_value: float | None = None
    max_value: float | None = None
    min_length: int | None = None  # for VARCHAR columns
    max_length: int | None = None


# Lineage every row carries, filled by the stage runner, never by stage logic.
LINEAGE = (
    Column("stage", "VARCHAR"),
    Column("model_version", "VARCHAR"),
    Column("run_id", "VARCHAR"),
    Column("params_hash", "VARCHAR"),
    Column("batch_id", "VARCHAR"),
    Column("created_at", "TIMESTAMP"),
)
LINEAGE_NAMES = tuple(column.name for column in LINEAGE)


@dataclass(frozen=True)
class TableSpec:
    """A stage output table: declared columns (lineage excluded) and the key that makes writes idempotent."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # unique within a batch; the primary key is (batch_id, *key)
    description: str = ""
    item_level: bool = field(default=True)  # rows describe one item (item_id column required)

    def __post_init__(self) -> None:
        names = self.column_names
        missing = [k for k in self.key if k not in names]
        if missing:
            raise ValueError(f"table {self.name}: key columns {missing} are not declared")
        if self.item_level and "item_id" not in names:
            raise ValueError(f"table {self.name}: item-level tables must declare item_id")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def all_columns(self) -> tuple[Column, ...]:
        return self.columns + LINEAGE

    def ddl(self) -> str:
        cols = ", ".join(f"{c.name} {c.sql_type}{'' if c.nullable else ' NOT NULL'}" for c in self.all_columns)
        key = ", ".join(("batch_id", *self.key))
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({cols}, PRIMARY KEY ({key}))"
