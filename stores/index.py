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
    """BM25 + dense index over (doc_id, text) rows; the FTS index lives in the store as table `corpus`."""

    def __init__(self, con: duckdb.DuckDBPyConnection, docs: pd.DataFrame, embed):
        self.con, self.embed = con, embed
        self.doc_ids = list(docs["doc_id"])
        load_fts(con)
        con.register("_corpus", docs[["doc_id", "text"]])
        try:
            con.execute("CREATE OR REPLACE TABLE corpus AS SELECT doc_id, text FROM _corpus")
        finally:
            con.unregister("_corpus")
        con.execute("PRAGMA create_fts_index('corpus', 'doc_id', 'text', overwrite=1)")
        self.vectors = embed(list(docs["text"]))

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
