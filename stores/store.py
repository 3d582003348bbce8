"""The embedded DuckDB store: stage tables with lineage, quarantine, stage-run records, turn records.

Writes are idempotent (primary keys + INSERT OR IGNORE: a rerun inserts nothing new) and a stage's rows, its
quarantined rows and its stage-run record commit in one transaction, so a stage's output is all-or-nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

from stores.errors import StoreError
from stores.schema import LINEAGE_NAMES, TableSpec

_SYSTEM_DDL = (
    """CREATE TABLE IF NOT EXISTS stage_runs (
        batch_id VARCHAR PRIMARY KEY, stage VARCHAR NOT NULL, turn INTEGER, model_version VARCHAR,
        params_hash VARCHAR NOT NULL, run_id VARCHAR, rows_in INTEGER NOT NULL, rows_out INTEGER NOT NULL,
        quarantined INTEGER NOT NULL, seconds DOUBLE NOT NULL, summary VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        batch_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, table_name VARCHAR NOT NULL, row_key VARCHAR NOT NULL,
        reason VARCHAR NOT NULL, row_json VARCHAR NOT NULL, run_id VARCHAR, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (batch_id, table_name, row_key, reason))""",
    """CREATE TABLE IF NOT EXISTS turn_starts (
        lineage VARCHAR NOT NULL, turn INTEGER NOT NULL, start_model_version INTEGER NOT NULL,
        created_at TIMESTAMP NOT NULL, PRIMARY KEY (lineage, turn))""",
    """CREATE TABLE IF NOT EXISTS data_versions (
        lineage VARCHAR NOT NULL, turn INTEGER NOT NULL, batch_id VARCHAR NOT NULL, md5 VARCHAR NOT NULL,
        dvc_file VARCHAR NOT NULL, dvc_text VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (lineage, turn, batch_id))""",
)
# Stores made before turns were keyed by model lineage kept them in `turns`, all under the default registry name.
_LEGACY_TURNS = (
    "INSERT OR IGNORE INTO turn_starts SELECT 'flywheel-policy', turn, start_model_version, created_at FROM turns"
)


@dataclass(frozen=True)
class Lineage:
    stage: str
    model_version: str
    run_id: str
    params_hash: str
    batch_id: str

    def stamp(self, frame: pd.DataFrame) -> pd.DataFrame:
        stamped = frame.copy()
        for name in LINEAGE_NAMES[:-1]:
            stamped[name] = getattr(self, name)
        stamped["created_at"] = utc_now()
        return stamped


@dataclass(frozen=True)
class StageRunRecord:
    batch_id: str
    stage: str
    turn: int | None
    model_version: str
    params_hash: str
    run_id: str
    rows_in: int
    rows_out: int
    quarantined: int
    seconds: float
    summary: dict


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Store:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.con = duckdb.connect(str(self.path))
        except OSError as error:
            raise StoreError(f"cannot open the store at {self.path}: {error.strerror or error}") from error
        except duckdb.IOException as error:
            busy = "lock" in str(error).lower()
            hint = "another flywheel process is using it; wait for it to finish" if busy else str(error)
            raise StoreError(f"cannot open the store at {self.path}: {hint}") from error
        for ddl in _SYSTEM_DDL:
            self.con.execute(ddl)
        if self.has_table("turns"):
            self.con.execute(_LEGACY_TURNS)

    @classmethod
    @contextmanager
    def open(cls, path: Path | str) -> Iterator[Store]:
        store = cls(path)
        try:
            yield store
        finally:
            store.close()

    def close(self) -> None:
        self.con.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def ensure(self, spec: TableSpec) -> None:
        """Create the table, or add the columns a newer declaration has to a table an older version made. A table
        whose required columns the declaration no longer has cannot take new rows: that is an error naming them."""
        self.con.execute(spec.ddl())
        query = "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = ?"
        found = self.con.execute(query, [spec.name]).fetchall()
        present = {name for name, _ in found}
        declared = {column.name for column in spec.all_columns}
        dropped = sorted(name for name, nullable in found if nullable == "NO" and name not in declared)
        if dropped:
            raise StoreError(
                f"{self.path}: table {spec.name} was written by an older flywheel (its columns {', '.join(dropped)} "
                "are gone from the schema); point paths.store at a new file, or move this one aside"
            )
        for column in spec.all_columns:
            if column.name not in present:
                self.con.execute(f"ALTER TABLE {spec.name} ADD COLUMN {column.name} {column.sql_type}")

    def insert(self, spec: TableSpec, frame: pd.DataFrame, lineage: Lineage) -> int:
        """Insert rows not already present (by primary key); returns how many were new."""
        self.ensure(spec)
        if frame.empty:
            return 0
        stamped = lineage.stamp(frame[list(spec.column_names)])
        names = ", ".join(c.name for c in spec.all_columns)
        before = self.count(spec.name)
        self.con.register("_incoming", stamped)
        try:
            self.con.execute(f"INSERT OR IGNORE INTO {spec.name} ({names}) SELECT {names} FROM _incoming")
        finally:
            self.con.unregister("_incoming")
        return self.count(spec.name) - before

    def count(self, table: str, batch_id: str | None = None) -> int:
        if not self.has_table(table):
            return 0
        if batch_id is None:
            return self.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return self.con.execute(f"SELECT count(*) FROM {table} WHERE batch_id = ?", [batch_id]).fetchone()[0]

    def has_table(self, table: str) -> bool:
        query = "SELECT count(*) FROM information_schema.tables WHERE table_name = ?"
        return self.con.execute(query, [table]).fetchone()[0] > 0

    def read(self, table: str, batch_id: str | None = None) -> pd.DataFrame:
        if batch_id is None:
            return self.con.execute(f"SELECT * FROM {table}").df()
        return self.con.execute(f"SELECT * FROM {table} WHERE batch_id = ? ORDER BY ALL", [batch_id]).df()

    def quarantine(self, stage: str, table: str, batch_id: str, run_id: str, rejects: list[dict]) -> int:
        """Record rejected rows with their reasons; they are kept, never silently dropped."""
        if not rejects:
            return 0
        frame = pd.DataFrame(
            {
                "batch_id": batch_id,
                "stage": stage,
                "table_name": table,
                "row_key": [r["row_key"] for r in rejects],
                "reason": [r["reason"] for r in rejects],
                "row_json": [json.dumps(r["row"], default=str, ensure_ascii=False) for r in rejects],
                "run_id": run_id,
                "created_at": utc_now(),
            }
        )
        self.con.register("_rejects", frame)
        try:
            self.con.execute("INSERT OR IGNORE INTO quarantine SELECT * FROM _rejects")
        finally:
            self.con.unregister("_rejects")
        return len(frame)

    def record_stage_run(self, record: StageRunRecord) -> None:
        self.con.execute(
            "INSERT OR IGNORE INTO stage_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                record.batch_id,
                record.stage,
                record.turn,
                record.model_version,
                record.params_hash,
                record.run_id,
                record.rows_in,
                record.rows_out,
                record.quarantined,
                record.seconds,
                json.dumps(record.summary, sort_keys=True, default=str),
                utc_now(),
            ],
        )

    def stage_run(self, batch_id: str) -> StageRunRecord | None:
        row = self.con.execute(
            "SELECT batch_id, stage, turn, model_version, params_hash, run_id, rows_in, rows_out, quarantined, "
            "seconds, summary FROM stage_runs WHERE batch_id = ?",
            [batch_id],
        ).fetchone()
        if row is None:
            return None
        return StageRunRecord(*row[:-1], summary=json.loads(row[-1]))

    # A lineage is one chain of model versions (a registered model name): the project's, or one experiment arm's.
    def turn_start_version(self, lineage: str, turn: int) -> int | None:
        query = "SELECT start_model_version FROM turn_starts WHERE lineage = ? AND turn = ?"
        row = self.con.execute(query, [lineage, turn]).fetchone()
        return None if row is None else row[0]

    def last_turn(self, lineage: str) -> int | None:
        return self.con.execute("SELECT max(turn) FROM turn_starts WHERE lineage = ?", [lineage]).fetchone()[0]

    def record_turn_start(self, lineage: str, turn: int, model_version: int) -> None:
        query = "INSERT OR IGNORE INTO turn_starts VALUES (?, ?, ?, ?)"
        self.con.execute(query, [lineage, turn, model_version, utc_now()])

    # A data version is a finished turn's DVC-tracked snapshot (tasks/publish): keyed by the turn's promote batch.
    def record_data_version(self, lineage: str, turn: int, batch_id: str, md5: str, dvc_file: str, text: str) -> None:
        query = "INSERT OR IGNORE INTO data_versions VALUES (?, ?, ?, ?, ?, ?, ?)"
        self.con.execute(query, [lineage, turn, batch_id, md5, dvc_file, text, utc_now()])

    def data_version(self, lineage: str, turn: int, batch_id: str | None = None) -> tuple[str, str, str] | None:
        """(md5, .dvc file relative to the project, its text) of the turn's snapshot for that promote batch, or
        (batch_id None) the turn's latest snapshot; None if not recorded."""
        query = (
            "SELECT md5, dvc_file, dvc_text FROM data_versions WHERE lineage = ? AND turn = ? "
            "AND (batch_id = ? OR ? IS NULL) ORDER BY created_at DESC LIMIT 1"
        )
        return self.con.execute(query, [lineage, turn, batch_id, batch_id]).fetchone()

    def export_parquet(self, table: str, batch_id: str, path: Path) -> None:
        """Write one batch of a table to Parquet atomically (temp file + rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        frame = self.read(table, batch_id) if self.has_table(table) else pd.DataFrame()
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
