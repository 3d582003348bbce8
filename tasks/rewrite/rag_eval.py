"""DMQR-RAG evaluated on a BEIR-layout benchmark: the same retrieval (BM25 + dense, fused) for each way of building
query pools: the original query only, each single strategy (original + its rewrite), all strategies, and the
model's adaptive selection. Metrics: P@5, Hit@5, Recall@10, nDCG@10, MRR@10, and the average number of rewrites per
query (the cost). Retrieval is the rewrite stage's (`rewrite.fusion_depth` documents from each ranking); below a
depth of 10 a pool can fuse to fewer than 10 documents, and the @10 metrics count what it has. One function behind
`flywheel rag eval`, `bench/retrieval.py` and the turn's retrieval scoreboard (`tasks/rag_eval`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from stores.index import CorpusIndex, Fusion
from tasks.config import Sampling
from tasks.errors import InputError
from tasks.llm.embeddings import dense_index
from tasks.rewrite.beir import Benchmark, load_beir
from tasks.rewrite.dmqr import QueryPool, rewrite, select_strategies
from tasks.rewrite.metrics import query_metrics
from tasks.rewrite.strategies import STRATEGIES


def rag_configs(names: list[str], selections: list[list[str]]) -> dict[str, list[list[str]]]:
    """Config name -> the strategies each query's pool applies."""
    count = len(selections)
    configs = {"original": [[] for _ in range(count)]}
    configs |= {name: [[name] for _ in range(count)] for name in names}
    if len(names) > 1:
        configs["all"] = [list(names) for _ in range(count)]
    configs["adaptive"] = selections
    return configs


def score_queries(
    bench: Benchmark,
    query_ids: list[str],
    llm,
    index: CorpusIndex,
    names: list[str],
    sampling: Sampling,
    max_chars: int,
    fusion: Fusion,
    rrf_k: int,
    depth: int,
) -> tuple[pd.DataFrame, list[tuple[list[str], str]], list[dict[str, str]]]:
    """One row per query and config (the strategies applied, its metrics, how many rewrites its pool used); per
    query, the model's adaptive selection (strategies, reason) and its rewrites by every strategy."""
    texts = [bench.queries[q] for q in query_ids]
    rewrites = rewrite(texts, [names] * len(texts), llm, sampling, max_chars)
    selections = select_strategies(texts, llm, names, max_chars)
    rows = []
    for config, plans in rag_configs(names, [chosen for chosen, _ in selections]).items():
        pools = [QueryPool(t, plan, "", r) for t, plan, r in zip(texts, plans, rewrites)]
        retrieved = index.search([p.queries for p in pools], 10, rrf_k, fusion=fusion, depth=depth)
        rows += [
            {
                "query_id": q,
                "config": config,
                "strategies": p.strategies,
                **query_metrics(r, bench.qrels[q]),
                "rewrites": len(p.queries) - 1,
            }
            for q, p, r in zip(query_ids, pools, retrieved)
        ]
    return pd.DataFrame(rows), selections, rewrites


def evaluate_rag(
    bench: Benchmark,
    llm,
    con,
    names: list[str],
    sampling: Sampling,
    max_chars: int,
    fusion: Fusion = "rrf",
    rrf_k: int = 60,
    table: str = "corpus",
    limit: int | None = None,
    *,
    depth: int,
    dtype: str,
) -> dict:
    query_ids = sorted(bench.queries)[:limit]
    docs = pd.DataFrame({"doc_id": list(bench.corpus), "text": list(bench.corpus.values())})
    index = dense_index(con, docs, dtype, table)
    scores, selections, rewrites = score_queries(
        bench, query_ids, llm, index, names, sampling, max_chars, fusion, rrf_k, depth
    )
    means = scores.drop(columns=["query_id", "strategies"]).rename(columns={"rewrites": "rewrites_per_query"})
    usage = Counter(name for chosen, _ in selections for name in chosen)
    return {
        "queries": len(query_ids),
        "documents": len(bench.corpus),
        "fusion": fusion,
        "fusion_depth": depth,
        "configs": [
            {"config": c, **group.drop(columns="config").mean().to_dict()}
            for c, group in means.groupby("config", sort=False)
        ],
        "selection_counts": {name: usage.get(name, 0) for name in names},
        "examples": [
            {"query_id": q, "selected": chosen, "reason": reason, "rewrites": r}
            for q, (chosen, reason), r in list(zip(query_ids, selections, rewrites))[:5]
        ],
    }


def rag_eval_files(
    settings,
    corpus: Path,
    queries: Path,
    qrels: Path,
    out: Path,
    strategies: list[str] | None = None,
    fusion: Fusion | None = None,
    limit: int | None = None,
    depth: int | None = None,
) -> dict:
    """`flywheel rag eval`: load a BEIR benchmark, evaluate it with the champion, write the metrics JSON."""
    from stores.store import Store
    from tasks.runner import cached_llm, register_base_model

    cfg = settings.rewrite
    names = list(strategies or cfg.strategies)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise InputError(f"unknown strategies {unknown}; known: {sorted(STRATEGIES)}")
    bench = load_beir(corpus, queries, qrels)
    model = register_base_model(settings)
    table = "rag_" + hashlib.sha256(Path(corpus).read_bytes()).hexdigest()[:12]  # one index per corpus content
    with Store.open(settings.path("store")) as store:
        llm = cached_llm(settings, store, model)
        result = evaluate_rag(
            bench,
            llm,
            store.con,
            names,
            cfg.sampling,
            cfg.max_query_chars,
            fusion or cfg.fusion,
            cfg.rrf_k,
            table,
            limit,
            depth=depth or cfg.fusion_depth,
            dtype=cfg.dense_dtype,
        )
    result["model"] = model.label
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    return result


def rag_table(result: dict):
    """The metrics per config as a rich table, with P@5 relative to the original query."""
    from rich.table import Table

    table = Table(
        title=f"DMQR-RAG on {result['queries']} queries, {result['documents']} documents "
        f"({result['fusion']}, fusion depth {result['fusion_depth']})"
    )
    columns = ("p@5", "hit@5", "recall@10", "ndcg@10", "mrr@10")
    for column in ("config", *columns, "Δ P@5", "rewrites/query"):
        table.add_column(column, justify="left" if column == "config" else "right")
    base = next(r["p@5"] for r in result["configs"] if r["config"] == "original")
    for row in result["configs"]:
        change = f"{(row['p@5'] / base - 1):+.1%}" if base else "—"
        table.add_row(row["config"], *(f"{row[c]:.4f}" for c in columns), change, f"{row['rewrites_per_query']:.2f}")
    return table
