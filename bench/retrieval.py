"""DMQR-RAG on the bundled Semanlink arXiv→tags benchmark (314 queries, 433 tag documents, 1,315 judgments), in one
command: original query only, each strategy alone, all four, and adaptive selection; RRF and rerank fusion.

The benchmark is converted to BEIR layout (`flywheel rag semanlink`) and evaluated by the same function as
`flywheel rag eval`, with the packaged model (v1) as rewriter. Model calls go through the LLM-call cache of the
bench project in .cache/bench/retrieval, so the second fusion and any rerun cost no model call.

The fusion depth (how many documents each query's BM25 and dense rankings bring to the fusion, `rewrite.fusion_depth`)
is swept too: a rewrite can only add documents within it.

Run: .venv/bin/python bench/retrieval.py [--limit N] [--fusion rrf rerank] [--depths 6 10 20 60]
Prints a table per fusion, writes bench/results/retrieval.json and logs to the MLflow experiment flywheel-bench.
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--limit", type=int, default=None, help="only the first N queries (sorted by id)")
    parser.add_argument("--fusion", nargs="+", default=["rrf", "rerank"], choices=["rrf", "rerank"])
    parser.add_argument("--depths", nargs="+", type=int, default=[6, 10, 20, 60], help="fusion depths to compare")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "retrieval")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "retrieval.json")
    parser.add_argument("--mlflow-dir", type=Path, default=REPO / "mlflow", help="local MLflow backend to log to")
    args = parser.parse_args(argv)
    from rich.console import Console

    from tasks.rewrite.beir import bundled_to_beir
    from tasks.rewrite.rag_eval import rag_eval_files, rag_table

    started = time.perf_counter()
    settings = project_settings(args.work, "retrieval", {})
    data = args.work / "semanlink-beir"
    counts = bundled_to_beir("semanlink", data)
    files = (data / "corpus.jsonl", data / "queries.jsonl", data / "qrels.tsv")
    console = Console(width=150)
    result = {"benchmark": counts, "runs": []}
    for fusion in args.fusion:
        for depth in args.depths:
            out = args.work / f"{fusion}-{depth}.json"
            run = rag_eval_files(settings, *files, out, fusion=fusion, limit=args.limit, depth=depth)
            console.print(rag_table(run))
            result["runs"].append(run)
        console.print(f"adaptive selection counts: {run['selection_counts']}")
    result["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    metrics = {
        f"{run['fusion']}_d{run['fusion_depth']}_{row['config']}_{name.replace('@', '_at_')}": row[name]
        for run in result["runs"]
        for row in run["configs"]
        for name in ("p@5", "ndcg@10", "rewrites_per_query")
    }
    log_bench_run(
        "retrieval",
        {"limit": args.limit, "fusion": args.fusion, "depths": args.depths},
        metrics,
        args.out,
        args.mlflow_dir,
    )
    return result


if __name__ == "__main__":
    main()
