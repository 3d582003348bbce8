"""Retrieval over a document corpus: BM25 through DuckDB's full-text search (the extension file shipped in the
`duckdb-extension-fts` package, loaded by path: `INSTALL` would need the internet) and dense retrieval with MiniLM
vectors in NumPy, fused by reciprocal rank fusion.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd


def load_fts(con: duckdb.DuckDBPyConnection) -> None:
    spec = importlib.util.find_spec("duckdb_extension_fts")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package duckdb-extension-fts is not installed")
    version = duckdb.__version__
    path = Path(spec.submodule_search_locations[0]) / "extensions" / f"v{version}" / "fts.duckdb_extension"
    if not path.exists():
        raise RuntimeError(f"{path} missing: duckdb-extension-fts must match duckdb {version}")
    con.execute(f"LOAD '{path}'")


def reciprocal_rank_fusion(rankings: list[list[str]], k: int = 60) -> list[str]:
    """Documents ordered by sum of 1/(k + rank) over the rankings (rank starts at 1); ties keep first-seen order."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda doc_id: -scores[doc_id])


class CorpusIndex:
    """BM25 + dense index over (doc_id, text) rows, persisted in the store as table `corpus` (text, vector, FTS
    index). Only documents that are new or changed since the last build are embedded again."""

    def __init__(self, con: duckdb.DuckDBPyConnection, docs: pd.DataFrame, embed):
        self.con, self.embed = con, embed
        load_fts(con)
        con.execute("CREATE TABLE IF NOT EXISTS corpus (doc_id VARCHAR PRIMARY KEY, text VARCHAR, vector FLOAT[])")
        known = dict(con.execute("SELECT doc_id, text FROM corpus").fetchall())
        wanted = dict(zip(docs["doc_id"], docs["text"]))
        if known != wanted:
            self._rebuild(known, wanted)
        rows = con.execute("SELECT doc_id, vector FROM corpus ORDER BY doc_id").fetchall()
        self.doc_ids = [doc_id for doc_id, _ in rows]
        self.vectors = np.array([vector for _, vector in rows], dtype=np.float32)

    def _rebuild(self, known: dict[str, str], wanted: dict[str, str]) -> None:
        stale = [doc_id for doc_id in known if known[doc_id] != wanted.get(doc_id)]
        fresh = [doc_id for doc_id in wanted if known.get(doc_id) != wanted[doc_id]]
        vectors = self.embed([wanted[doc_id] for doc_id in fresh])
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute("DELETE FROM corpus WHERE doc_id IN (SELECT unnest(?))", [stale])
            self.con.executemany(
                "INSERT INTO corpus VALUES (?, ?, ?)",
                [(doc_id, wanted[doc_id], vector.tolist()) for doc_id, vector in zip(fresh, vectors)],
            )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("PRAGMA create_fts_index('corpus', 'doc_id', 'text', overwrite=1)")

    def bm25(self, query: str, k: int) -> list[str]:
        rows = self.con.execute(
            "SELECT doc_id, fts_main_corpus.match_bm25(doc_id, ?) AS score FROM corpus "
            "WHERE score IS NOT NULL ORDER BY score DESC, doc_id LIMIT ?",
            [query, k],
        ).fetchall()
        return [doc_id for doc_id, _ in rows]

    def dense(self, queries: list[str], k: int) -> list[list[str]]:
        scores = self.embed(queries) @ self.vectors.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[self.doc_ids[i] for i in row] for row in top]

    def search(self, query_pools: list[list[str]], k: int, rrf_k: int = 60, exclude: list[str] | None = None):
        """For each pool of queries: BM25 and dense rankings of every query, fused; `exclude[i]` is left out."""
        depth = k + 1
        flat = [q for pool in query_pools for q in pool]
        dense = iter(self.dense(flat, depth))
        results = []
        for position, pool in enumerate(query_pools):
            rankings = []
            for query in pool:
                rankings.extend([self.bm25(query, depth), next(dense)])
            fused = [d for d in reciprocal_rank_fusion(rankings, rrf_k) if not exclude or d != exclude[position]]
            results.append(fused[:k])
        return results
