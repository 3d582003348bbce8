"""Retrieval speed on the bundled Semanlink arXiv->tags benchmark: queries/s of BM25 (all queries in one statement,
and DuckDB FTS's macro once per query) and of dense retrieval (query embedding included, float32 and bf16 autocast,
with the share of float32's top k that bf16 keeps) over its corpus, and what DMQR rewriting costs per query, adaptive
selection against running all four strategies, with the packaged model and an empty LLM-call cache (so every model
call is paid).
How well each configuration retrieves is bench/retrieval.py's job.

Run: .venv/bin/python bench/retrieval_speed.py [--rewrite-queries 32]
Prints a table, writes bench/results/retrieval_speed.json and logs to the MLflow experiment flywheel-bench.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("FLYWHEEL_PROGRESS", "0")

import stores  # noqa: E402,F401
from bench.common import log_bench_run, project_settings  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewrite-queries", type=int, default=32, help="queries rewritten per DMQR configuration")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "retrieval_speed")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "retrieval_speed.json")
    parser.add_argument("--mlflow-dir", type=Path, default=REPO / "mlflow", help="local MLflow backend to log to")
    args = parser.parse_args(argv)
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from stores.registry import WEIGHTS, ModelRef, convert_gguf, packaged_gguf, sha256_file
    from stores.store import Store
    from tasks.llm.embeddings import dense_index, embed
    from tasks.rewrite.beir import bundled_to_beir, load_beir
    from tasks.rewrite.dmqr import rewrite, select_strategies
    from tasks.runner import cached_llm

    shutil.rmtree(args.work, ignore_errors=True)  # an empty LLM-call cache: the rewriting costs are paid in full
    settings = project_settings(args.work, "retrieval_speed", {})
    bundled_to_beir("semanlink", args.work / "beir")
    bench = load_beir(*(args.work / "beir" / name for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv")))
    texts = [bench.queries[q] for q in sorted(bench.queries)]
    docs = pd.DataFrame({"doc_id": list(bench.corpus), "text": list(bench.corpus.values())})
    rows = []
    k = settings.rewrite.top_k
    top: dict[str, list[list[str]]] = {}
    embed(texts[:8])  # MiniLM loaded outside the timing
    with Store.open(settings.path("store")) as store:
        for dtype in ("float32", "bfloat16"):  # rewrite.dense_dtype: its top k against float32's
            started = time.perf_counter()
            index = dense_index(store.con, docs, dtype)
            seconds = time.perf_counter() - started
            rows.append({"what": f"index build, {dtype}", "queries": len(docs), "seconds": seconds})
            started = time.perf_counter()
            top[dtype] = index.dense(embed(texts, dtype=dtype), k)
            kept = sum(len(set(a) & set(b)) for a, b in zip(top[dtype], top["float32"])) / (k * len(texts))
            rows.append(
                {"what": f"dense {dtype} (embed + search)", "queries": len(texts),
                 "seconds": time.perf_counter() - started, "top_k_kept": kept}
            )  # fmt: skip
        started = time.perf_counter()
        macro = (
            f"SELECT doc_id, fts_main_{index.table}.match_bm25(doc_id, ?) AS score FROM {index.table} "
            "WHERE score IS NOT NULL ORDER BY score DESC, doc_id LIMIT ?"
        )  # one query's top k as CorpusIndex searched before bm25_many
        for text in texts:
            store.con.execute(macro, [text, k]).fetchall()
        rows.append(
            {"what": "BM25, the FTS macro per query", "queries": len(texts), "seconds": time.perf_counter() - started}
        )
        started = time.perf_counter()
        index.bm25_many(texts, k)
        rows.append({"what": "BM25", "queries": len(texts), "seconds": time.perf_counter() - started})

    gguf = packaged_gguf(settings.model.gguf_package, settings.model.gguf_file)
    path = convert_gguf(gguf, REPO / ".cache" / "models")
    ref = ModelRef(settings.model.registry_name, 1, sha256_file(path / WEIGHTS), path)
    names, cfg = list(settings.rewrite.strategies), settings.rewrite
    sample = texts[: args.rewrite_queries]
    for label, adaptive in (("DMQR all four", False), ("DMQR adaptive", True)):
        with Store.open(args.work / f"{'adaptive' if adaptive else 'all'}.duckdb") as store:  # a cache of its own
            llm = cached_llm(settings, store, ref)
            _ = llm.backend  # weights loaded outside the timing
            started = time.perf_counter()
            plans = [c for c, _ in select_strategies(sample, llm, names, cfg.max_query_chars)] if adaptive else None
            plans = plans or [names] * len(sample)
            rewrite(sample, plans, llm, cfg.sampling, cfg.max_query_chars)
            seconds = time.perf_counter() - started
        rows.append(
            {"what": label, "queries": len(sample), "seconds": seconds, "model_calls": llm.calls,
             "rewrites_per_query": sum(len(p) for p in plans) / len(sample)}
        )  # fmt: skip
    table = Table(title=f"Retrieval speed ({len(bench.corpus)} documents, top {k})")
    columns = ("what", "queries", "s", "queries/s", "s/query", "model calls", "rewrites/query", "vs all four")
    for column in (*columns, "top k kept"):
        table.add_column(column, justify="left" if column == "what" else "right")
    all_four = next(r for r in rows if r["what"] == "DMQR all four")
    for row in rows:
        row["qps"] = row["queries"] / row["seconds"]
        row["s_per_query"] = row["seconds"] / row["queries"]
        ratio = f"{row['s_per_query'] / all_four['s_per_query']:.2f}x" if "rewrites_per_query" in row else ""
        table.add_row(
            row["what"], str(row["queries"]), f"{row['seconds']:.2f}", f"{row['qps']:.1f}", f"{row['s_per_query']:.3f}",
            str(row.get("model_calls", "")), f"{row.get('rewrites_per_query', 0):.2f}", ratio,
            f"{row['top_k_kept']:.1%}" if "top_k_kept" in row else "",
        )  # fmt: skip
    Console(width=150).print(table)
    result = {"corpus": len(bench.corpus), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    metrics = {re.sub(r"\W+", "_", row["what"]).strip("_") + "_qps": row["qps"] for row in rows}
    log_bench_run("retrieval_speed", {"rewrite_queries": args.rewrite_queries}, metrics, args.out, args.mlflow_dir)
    return result


if __name__ == "__main__":
    main()
