"""Query rewriting for retrieval: the turn's model rewrites each query, and retrieval over the corpus runs with the
pool {original query, rewrite}, BM25 + dense, fused by RRF. The original always stays in the pool (as in DMQR-RAG).
The full DMQR-RAG (four strategies, adaptive selection, BEIR evaluation) comes in its own issue; a strategy is a
template plus a name in `STRATEGIES`.

Query = an item's content (abstract or curator comment); corpus = the non-held-out items (title + text, without
tags). Retrieval quality is measured without any model: tag precision@k, the fraction of retrieved documents that
share a curator tag with the query's item, for the original query alone and for the pool.

Input: `items`. Output columns (`rewrites`): item_id, strategy, query, rewritten, retrieved_original, retrieved,
tag_precision_original, tag_precision.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stores.index import CorpusIndex
from stores.schema import Column, TableSpec
from tasks.config import Rewrite
from tasks.llm.embeddings import embed
from tasks.prompts import clip, first_line
from tasks.stage import StageContext, StageDef, StageOutput

STRATEGIES = {
    "general": (
        "Rewrite the following text as a concise search query. Remove noise and keep all the relevant "
        "information (topics, methods, named entities). Answer with the query only.\n\nText: {query}"
    ),
}
REWRITES = TableSpec(
    "rewrites",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("strategy", "VARCHAR", min_length=1),
        Column("query", "VARCHAR", min_length=1),
        Column("rewritten", "VARCHAR"),
        Column("retrieved_original", "VARCHAR[]"),
        Column("retrieved", "VARCHAR[]"),
        Column("tag_precision_original", "DOUBLE", min_value=0.0, max_value=1.0),
        Column("tag_precision", "DOUBLE", min_value=0.0, max_value=1.0),
    ),
    key=("item_id", "strategy"),
)


def rewrite_queries(queries: list[str], llm, cfg: Rewrite) -> list[str]:
    template = STRATEGIES[cfg.strategy]
    prompts = [[{"role": "user", "content": template.format(query=q)}] for q in queries]
    generations = llm.generate(prompts, cfg.sampling, [0] * len(prompts), desc=f"rewrite/{cfg.strategy}")
    return [first_line(g.text) for g in generations]


def tag_precision(retrieved: list[str], query_tags: set[str], tags_by_id: dict[str, set[str]]) -> float:
    if not retrieved:
        return 0.0
    return sum(bool(tags_by_id.get(d, set()) & query_tags) for d in retrieved) / len(retrieved)


def run(ctx: StageContext) -> StageOutput:
    cfg, max_chars = ctx.settings.rewrite, ctx.settings.data.max_signal_chars
    items = ctx.read("ingest", "items")
    corpus = items[items["split"] != "heldout"]
    docs = pd.DataFrame(
        {
            "doc_id": corpus["item_id"],
            "text": [f"{t}. {a or c}" for t, a, c in zip(corpus["title"], corpus["abstract"], corpus["comment"])],
        }
    )
    index = CorpusIndex(ctx.store.con, docs, embed)
    queries_items = ctx.turn_slice("train", cfg.queries_per_turn)
    queries = [clip(a or c, max_chars) for a, c in zip(queries_items["abstract"], queries_items["comment"])]
    rewritten = rewrite_queries(queries, ctx.llm, cfg)
    ids = list(queries_items["item_id"])
    original = index.search([[q] for q in queries], cfg.top_k, cfg.rrf_k, exclude=ids)
    pooled = index.search([[q, r] if r else [q] for q, r in zip(queries, rewritten)], cfg.top_k, cfg.rrf_k, ids)
    tags_by_id = {i: set(t) for i, t in zip(items["item_id"], items["tags"])}
    frame = pd.DataFrame(
        {
            "item_id": ids,
            "strategy": cfg.strategy,
            "query": queries,
            "rewritten": rewritten,
            "retrieved_original": original,
            "retrieved": pooled,
            "tag_precision_original": [tag_precision(r, tags_by_id[i], tags_by_id) for r, i in zip(original, ids)],
            "tag_precision": [tag_precision(r, tags_by_id[i], tags_by_id) for r, i in zip(pooled, ids)],
        }
    )
    metrics = {
        "corpus_docs": len(docs),
        f"tag_precision_at_{cfg.top_k}_original": float(np.mean(frame["tag_precision_original"])),
        f"tag_precision_at_{cfg.top_k}_rewritten": float(np.mean(frame["tag_precision"])),
    }
    return StageOutput({"rewrites": frame}, rows_in=len(queries_items), metrics=metrics)


STAGE = StageDef(name="rewrite", outputs=(REWRITES,), upstream=("ingest",), sections=("data", "rewrite"), run=run)
