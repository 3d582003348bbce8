"""Does retrieval feedback teach the rewriter? The packaged model (v1) samples rewrites of train queries of the
Semanlink arXiv→tags benchmark, each scored by what it retrieves (tasks/rewrite/feedback.py, as the rewrite stage
does); v1 is fine-tuned on the winners (rewriting and selection targets) alone; then both models are scored on the
held-out queries as the turn's retrieval scoreboard scores them (original, each strategy, all four, adaptive: P@5
with paired bootstrap 95% intervals). Model calls are cached in the bench project (.cache/bench/feedback).

Run: .venv/bin/python bench/rewrite_feedback.py [--train-queries 64] [--heldout 64] [--samples 4] [--epochs 2]
Prints the scoreboard and the feedback's statistics, writes bench/results/rewrite_feedback.json, logs to MLflow.
"""

from __future__ import annotations

import argparse
import hashlib
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
    parser.add_argument("--train-queries", type=int, default=64, help="train queries sampled for feedback")
    parser.add_argument("--heldout", type=int, default=64, help="held-out queries scored")
    parser.add_argument("--samples", type=int, default=4, help="rewrites sampled per query and strategy")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the feedback targets")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "feedback")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rewrite_feedback.json")
    parser.add_argument("--mlflow-dir", type=Path, default=REPO / "mlflow", help="local MLflow backend to log to")
    args = parser.parse_args(argv)
    import pandas as pd
    from rich.console import Console

    from flows.summary import retrieval_table
    from stores.registry import ModelRef, sha256_file
    from stores.store import Store
    from tasks.rag_eval.scoreboard import heldout_queries, summarize
    from tasks.retrain.retrain import train
    from tasks.rewrite.feedback import (
        benchmark_index,
        collect_feedback,
        feedback_targets,
        strategy_number,
        target_prompts,
        train_window,
    )
    from tasks.rewrite.rag_eval import score_queries
    from tasks.runner import cached_llm, register_base_model

    started = time.perf_counter()
    overrides = {"rewrite": {"feedback": {"samples": args.samples}}, "rag_eval": {"queries": args.heldout}}
    settings = project_settings(args.work, "feedback", overrides)
    cfg, seed = settings.rewrite, settings.seed
    names = list(cfg.strategies)
    retrieval = {"rrf_k": cfg.rrf_k, "fusion": cfg.fusion, "depth": cfg.fusion_depth}
    base = register_base_model(settings)
    with Store.open(settings.path("store")) as store:
        bench, index = benchmark_index(store.con)
        train_ids = train_window(bench, settings.rag_eval.heldout_fraction, seed, 1, args.train_queries)
        llm = cached_llm(settings, store, base)
        feedback = collect_feedback(
            bench, train_ids, llm, index, names, cfg.feedback, cfg.max_query_chars, retrieval, seed
        )
        targets = feedback_targets(feedback, cfg.feedback)
        numbers = [strategy_number(s) for s in targets["strategy"]]
        prompts = target_prompts(targets["query_id"], targets["kind"], numbers, names, cfg.max_query_chars)
        phase = targets.assign(prompt=prompts)
        steps = args.epochs * -(-len(phase) // settings.retrain.sft.batch_size)
        key = json.dumps([base.fingerprint, list(phase["target"]), steps, seed])
        out = args.work / f"feedback-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        if not (out / "model" / "model.safetensors").exists():
            sft = settings.retrain.sft.model_copy(update={"max_steps": steps})
            train(base.path, [phase], pd.DataFrame(), settings.retrain.model_copy(update={"sft": sft}), seed, out)
        taught = ModelRef("bench-feedback", 2, sha256_file(out / "model" / "model.safetensors"), out / "model")
        heldout_ids = heldout_queries(bench, settings)
        boards = []
        for role, model in (("start", base), ("candidate", taught)):
            scores, _, _ = score_queries(
                bench,
                heldout_ids,
                cached_llm(settings, store, model),
                index,
                names,
                cfg.sampling,
                cfg.max_query_chars,
                cfg.fusion,
                cfg.rrf_k,
                cfg.fusion_depth,
            )
            boards.append(scores.assign(role=role, model=model.label))
    scores = pd.concat(boards, ignore_index=True).rename(columns=lambda c: c.replace("@", "_at_"))
    summary = summarize(scores, seed)
    rewrites = feedback[feedback["strategy"] != "original"]
    best = rewrites.groupby(["query_id", "strategy"])["gain"].max()
    statistics = {
        "train_queries": len(train_ids),
        "rewrites_scored": len(rewrites),
        "share_of_rewrites_beating_original": float((rewrites["gain"] > 0).mean()),
        "share_of_query_strategies_with_a_winner": float((best > cfg.feedback.min_gain).mean()),
        "mean_best_gain_ndcg": float(best.mean()),
        "sft_rewrite_targets": int((targets["kind"] == "sft-rewrite").sum()),
        "sft_select_targets": int((targets["kind"] == "sft-select").sum()),
        "training_steps": steps,
        **{f"winner_share_{n}": float((best.xs(n, level="strategy") > cfg.feedback.min_gain).mean()) for n in names},
    }
    result = {"statistics": statistics, "scoreboard": summary, "seconds": time.perf_counter() - started}
    console = Console(width=150)
    console.print(retrieval_table(summary, {"start_version": base.version, "candidate_version": "fb"}))
    console.print(statistics)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    log_bench_run("rewrite_feedback", vars(args), statistics | summary, args.out, args.mlflow_dir)
    return result


if __name__ == "__main__":
    main()
