"""DMQR-RAG in the turn: the turn's model rewrites each query with the strategies it selects for it (adaptive
selection among `rewrite.strategies`, or all of them), and retrieval over the corpus runs with the pool {original
query, rewrites}, BM25 + dense, fused (RRF or rerank by similarity to the original). The strategies, selection and
fusion live in `strategies.py`, `dmqr.py` and `stores/index.py`; `rag_eval.py` measures them on BEIR benchmarks.

Query = an item's content (abstract or curator comment); corpus = the non-held-out items (title + text, without
tags). Retrieval quality is measured without any model: tag precision@k, the fraction of retrieved documents that
share a curator tag with the query's item, for the original query alone and for the pool.

With `rewrite.feedback.queries_per_turn` > 0 the stage also collects retrieval feedback on the turn's window of
the Semanlink arXiv→tags train queries (`feedback.py`): sampled rewrites scored against that benchmark's judgments,
which the retrain stage turns into rewriting and selection targets.

Input: `items`. Output columns (`rewrites`): item_id, strategy, rewritten (one row per applied strategy);
(`retrievals`): item_id, selected, reason, retrieved_original, retrieved, tag_precision_original, tag_precision;
(`rewrite_feedback`): see `feedback.py`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from stores.index import CorpusIndex
from stores.schema import Column, TableSpec
from tasks.llm.embeddings import dense_index
from tasks.prompts import clip, item_content
from tasks.rewrite.dmqr import build_pools
from tasks.rewrite.feedback import FEEDBACK, benchmark_index, collect_feedback, train_window
from tasks.stage import StageContext, StageDef, StageOutput, with_fields

REWRITES = TableSpec(
    "rewrites",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("strategy", "VARCHAR", min_length=1),
        Column("rewritten", "VARCHAR"),
    ),
    key=("item_id", "strategy"),
)
RETRIEVALS = TableSpec(
    "retrievals",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("selected", "VARCHAR[]"),
        Column("reason", "VARCHAR"),
        Column("retrieved_original", "VARCHAR[]"),
        Column("retrieved", "VARCHAR[]"),
        Column("tag_precision_original", "DOUBLE", min_value=0.0, max_value=1.0),
        Column("tag_precision", "DOUBLE", min_value=0.0, max_value=1.0),
    ),
    key=("item_id",),
)


def tag_precision(retrieved: list[str], query_tags: set[str], tags_by_id: dict[str, set[str]]) -> float:
    if not retrieved:
        return 0.0
    return sum(bool(tags_by_id.get(d, set()) & query_tags) for d in retrieved) / len(retrieved)


def corpus_index(ctx: StageContext) -> CorpusIndex:
    items = with_fields(ctx.read("ingest", "items"))
    corpus = items[items["split"] != "heldout"]
    task = ctx.settings.task
    texts = [f"{item['reference']}. {item_content(item, task)}" for item in corpus.to_dict("records")]
    docs = pd.DataFrame({"doc_id": corpus["item_id"], "text": texts})
    return dense_index(ctx.store.con, docs, ctx.settings.rewrite.dense_dtype)


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.settings.rewrite
    items = ctx.read("ingest", "items")
    index = corpus_index(ctx)
    queries_items = ctx.turn_slice("train", cfg.queries_per_turn)
    task = ctx.settings.task
    queries = [clip(item_content(item, task), cfg.max_query_chars) for item in queries_items.to_dict("records")]
    pools = build_pools(queries, ctx.llm, list(cfg.strategies), cfg.adaptive, cfg.sampling, cfg.max_query_chars)
    ids = list(queries_items["item_id"])
    search = dict(k=cfg.top_k, rrf_k=cfg.rrf_k, exclude=ids, fusion=cfg.fusion, depth=cfg.fusion_depth)
    original = index.search([[q] for q in queries], **search)
    pooled = index.search([p.queries for p in pools], **search)
    tags_by_id = {i: set(t) for i, t in zip(items["item_id"], items["tags"])}
    retrievals = pd.DataFrame(
        {
            "item_id": ids,
            "selected": [p.strategies for p in pools],
            "reason": [p.reason for p in pools],
            "retrieved_original": original,
            "retrieved": pooled,
            "tag_precision_original": [tag_precision(r, tags_by_id[i], tags_by_id) for r, i in zip(original, ids)],
            "tag_precision": [tag_precision(r, tags_by_id[i], tags_by_id) for r, i in zip(pooled, ids)],
        }
    )
    rewrites = pd.DataFrame(
        [(i, name, text) for i, p in zip(ids, pools) for name, text in p.rewrites.items()],
        columns=["item_id", "strategy", "rewritten"],
    )
    feedback = retrieval_feedback(ctx)
    usage = Counter(name for p in pools for name in p.strategies)
    metrics = {
        "corpus_docs": len(index.doc_ids),
        "rewrites_per_query": float(np.mean([len(p.queries) - 1 for p in pools])),
        f"tag_precision_at_{cfg.top_k}_original": float(np.mean(retrievals["tag_precision_original"])),
        f"tag_precision_at_{cfg.top_k}_rewritten": float(np.mean(retrievals["tag_precision"])),
        **{f"selected_{name}": usage.get(name, 0) for name in cfg.strategies},
        "feedback_queries": feedback["query_id"].nunique(),
        "feedback_rewrites_beating_original": int((feedback["gain"] > 0).sum()),
    }
    tables = {"rewrites": rewrites, "retrievals": retrievals, "rewrite_feedback": feedback}
    return StageOutput(tables, rows_in=len(queries_items), metrics=metrics)


def retrieval_feedback(ctx: StageContext) -> pd.DataFrame:
    """The turn model's sampled rewrites of this turn's benchmark train queries, scored (none when switched off)."""
    cfg, seed = ctx.settings.rewrite, ctx.settings.seed
    if not cfg.feedback.queries_per_turn:
        return pd.DataFrame(columns=list(FEEDBACK.column_names))
    bench, index = benchmark_index(ctx.store.con, cfg.dense_dtype)
    count = cfg.feedback.queries_per_turn
    query_ids = train_window(bench, ctx.settings.rag_eval.heldout_fraction, seed, ctx.turn, count)
    retrieval = {"rrf_k": cfg.rrf_k, "fusion": cfg.fusion, "depth": cfg.fusion_depth}
    names, chars = list(cfg.strategies), cfg.max_query_chars
    return collect_feedback(bench, query_ids, ctx.llm, index, names, cfg.feedback, chars, retrieval, seed)


STAGE = StageDef(
    name="rewrite",
    outputs=(REWRITES, RETRIEVALS, FEEDBACK),
    upstream=("ingest",),
    # rag_eval.heldout_fraction: which benchmark queries feedback never trains on
    sections=("data", "task.content", "rewrite", "rag_eval.heldout_fraction"),
    run=run,
)
