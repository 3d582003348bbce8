"""Content-addressed LLM-call cache in DuckDB.

Key = sha256 of (call kind, model fingerprint, canonical prompt JSON, sampling params, seed). The fingerprint is the
sha256 of the model weights, so the key names the exact model whatever registry version it was given. Results are
committed per backend batch, so a stage killed half-way resumes without repeating a single finished call.
"""

from __future__ import annotations

import hashlib
import json

import duckdb

from stores.store import utc_now

_DDL = """CREATE TABLE IF NOT EXISTS llm_calls (
    key VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, model_fingerprint VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL, request VARCHAR NOT NULL, response VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL)"""


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def call_key(kind: str, model_fingerprint: str, request: dict) -> str:
    return hashlib.sha256(canonical([kind, model_fingerprint, request]).encode()).hexdigest()


class LLMCallCache:
    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        self.con.execute(_DDL)

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        if not keys:
            return {}
        rows = self.con.execute(
            "SELECT key, response FROM llm_calls WHERE key IN (SELECT unnest(?))", [keys]
        ).fetchall()
        return {key: json.loads(response) for key, response in rows}

    def put_many(self, kind: str, model_fingerprint: str, model_version: str, entries: list[tuple[str, dict, dict]]):
        """entries: (key, request, response); one transaction, existing keys are left alone."""
        if not entries:
            return
        now = utc_now()
        rows = [
            (key, kind, model_fingerprint, model_version, canonical(request), canonical(response), now)
            for key, request, response in entries
        ]
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.executemany("INSERT OR IGNORE INTO llm_calls VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def count(self) -> int:
        return self.con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
