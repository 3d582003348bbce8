"""Does retrieval feedback teach the rewriter? The packaged model (v1) samples rewrites of train queries of the
Semanlink arXiv→tags benchmark, each scored by what it retrieves (tasks/rewrite/feedback.py, as the rewrite stage
does); v1 is trained on that feedback alone, one model per recipe:

- `sft`: SFT on the rewriting and selection targets (the winners; what the rewrite stage feeds the turn today),
- `select`: SFT on the selection targets alone (which strategies helped which query; the rewriting is left alone),
- `dpo`: DPO on rewriting pairs (per query and strategy, the best-retrieving sample over the worst),

then v1 and every trained model are scored on the held-out queries as the turn's retrieval scoreboard scores them
(original, each strategy, all four, adaptive: P@5 with paired bootstrap 95% intervals), and on the perovskite
title→abstract benchmark (tasks/rewrite/beir.py), another domain and task that no recipe learns from. Model calls
are cached in the bench project (.cache/bench/feedback).

Run: .venv/bin/python bench/rewrite_feedback.py [--train-queries 64] [--heldout 64] [--samples 4] [--epochs 1]
  [--recipes sft select dpo] [--transfer 64] [--dpo-learning-rate LR]
Prints a scoreboard per recipe and the feedback's statistics, writes bench/results/rewrite_feedback.json, logs to
MLflow.
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

RECIPES = ("sft", "select", "dpo")


def training_sets(feedback, cfg, names: list[str], max_chars: int):
    """Per recipe, (SFT rows with their prompts, DPO pairs with their prompts) from the same feedback."""
    import pandas as pd

    from tasks.rewrite.feedback import feedback_pairs, feedback_targets, strategy_number, target_prompts

    targets = feedback_targets(feedback, cfg)
    numbers = [strategy_number(s) for s in targets["strategy"]]
    sft = targets.assign(prompt=target_prompts(targets["query_id"], targets["kind"], numbers, names, max_chars))
    pairs = feedback_pairs(feedback, cfg)
    numbers = [strategy_number(s) for s in pairs["strategy"]]
    pairs = pairs.assign(
        prompt=target_prompts(pairs["query_id"], ["sft-rewrite"] * len(pairs), numbers, names, max_chars)
    )
    none = pd.DataFrame()
    return {
        "sft": (sft, none),
        "select": (sft[sft["kind"] == "sft-select"].reset_index(drop=True), none),
        "dpo": (sft.iloc[0:0], pairs),
    }


def train_recipe(base, rows, pairs, settings, epochs: int, work: Path) -> tuple[Path, int, int]:
    """v1 trained on one recipe's rows (SFT) and pairs (DPO), `epochs` passes over each; cached by content. Returns
    (the model folder, SFT steps, DPO steps)."""
    import pandas as pd

    from tasks.retrain.retrain import phase_steps, train

    cfg = settings.retrain
    # the retrain stage trains a feedback phase one pass over its rows: `epochs` passes are the rows repeated
    phases = [pd.concat([rows] * epochs, ignore_index=True)] if len(rows) else []
    sft_steps = sum(phase_steps(phases, cfg.sft))
    dpo_steps = epochs * -(-len(pairs) // (cfg.dpo.batch_size * cfg.dpo.gradient_accumulation))
    contents = [list(rows.get("target", [])), list(pairs.get("chosen", [])), list(pairs.get("rejected", []))]
    key = json.dumps([base.fingerprint, contents, sft_steps, dpo_steps, settings.seed, cfg.model_dump(mode="json")])
    out = work / f"feedback-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not (out / "model" / "model.safetensors").exists():
        dpo = cfg.dpo.model_copy(update={"max_steps": dpo_steps, "rounds": min(cfg.dpo.rounds, max(1, dpo_steps))})
        train(base.path, phases, pairs, cfg.model_copy(update={"dpo": dpo}), settings.seed, out)
    return out / "model", sft_steps, dpo_steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-queries", type=int, default=64, help="train queries sampled for feedback")
    parser.add_argument("--heldout", type=int, default=64, help="held-out queries scored")
    parser.add_argument("--samples", type=int, default=4, help="rewrites sampled per query and strategy")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the targets or pairs (turn: 1)")
    parser.add_argument("--dpo-learning-rate", type=float, default=None, help="default: retrain.dpo.learning_rate")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES), help="what v1 trains on")
    parser.add_argument("--transfer", type=int, default=64, help="perovskite queries also scored (0: none)")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench" / "feedback")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rewrite_feedback.json")
    parser.add_argument("--mlflow-dir", type=Path, default=REPO / "mlflow", help="local MLflow backend to log to")
    args = parser.parse_args(argv)
    import pandas as pd
    from rich.console import Console

    from flows.summary import retrieval_table
    from stores.registry import ModelRef, sha256_file
    from stores.store import Store
    from tasks.llm.embeddings import dense_index
    from tasks.rag_eval.scoreboard import heldout_queries, summarize
    from tasks.rewrite.beir import bundled_benchmark
    from tasks.rewrite.feedback import benchmark_index, collect_feedback, train_window
    from tasks.rewrite.rag_eval import score_queries
    from tasks.runner import cached_llm, register_base_model

    started = time.perf_counter()
    overrides = {"rewrite": {"feedback": {"samples": args.samples}}, "rag_eval": {"queries": args.heldout}}
    if args.dpo_learning_rate:
        overrides["retrain"] = {"dpo": {"learning_rate": args.dpo_learning_rate}}
    settings = project_settings(args.work, "feedback", overrides)
    cfg, seed = settings.rewrite, settings.seed
    names = list(cfg.strategies)
    retrieval = {"fusion": cfg.fusion, "rrf_k": cfg.rrf_k, "depth": cfg.fusion_depth}  # score_queries' order
    base = register_base_model(settings)
    with Store.open(settings.path("store")) as store:
        bench, index = benchmark_index(store.con, cfg.dense_dtype)
        train_ids = train_window(bench, settings.rag_eval.heldout_fraction, seed, 1, args.train_queries)
        llm = cached_llm(settings, store, base)
        feedback = collect_feedback(
            bench, train_ids, llm, index, names, cfg.feedback, cfg.max_query_chars, retrieval, seed
        )
        sets = training_sets(feedback, cfg.feedback, names, cfg.max_query_chars)
        # the held-out Semanlink queries, and the first --transfer queries of a benchmark no recipe learns from
        boards = {"semanlink": (bench, heldout_queries(bench, settings), index)}
        if args.transfer:
            other = bundled_benchmark("perovskite")
            docs = pd.DataFrame({"doc_id": list(other.corpus), "text": list(other.corpus.values())})
            other_index = dense_index(store.con, docs, cfg.dense_dtype, "rag_perovskite")
            boards["perovskite"] = (other, sorted(other.queries)[: args.transfer], other_index)

        def scoreboard(model: ModelRef, role: str, board: str) -> pd.DataFrame:
            benchmark, query_ids, corpus_index = boards[board]
            llm = cached_llm(settings, store, model)
            scores, _, _ = score_queries(
                benchmark, query_ids, llm, corpus_index, names, cfg.sampling, cfg.max_query_chars, *retrieval.values()
            )
            return scores.assign(role=role, model=model.label).rename(columns=lambda c: c.replace("@", "_at_"))

        start_scores = {board: scoreboard(base, "start", board) for board in boards}
        recipes = {}
        for number, recipe in enumerate(args.recipes, start=2):
            rows, pairs = sets[recipe]
            path, sft_steps, dpo_steps = train_recipe(base, rows, pairs, settings, args.epochs, args.work)
            taught = ModelRef(f"bench-feedback-{recipe}", number, sha256_file(path / "model.safetensors"), path)
            recipes[recipe] = {
                "sft_rows": len(rows),
                "sft_steps": sft_steps,
                "dpo_pairs": len(pairs),
                "dpo_steps": dpo_steps,
            }
            for board in boards:
                scores = pd.concat([start_scores[board], scoreboard(taught, "candidate", board)], ignore_index=True)
                recipes[recipe][board] = summarize(scores, seed)
    rewrites = feedback[feedback["strategy"] != "original"]
    best = rewrites.groupby(["query_id", "strategy"])["gain"].max()
    sft = sets["sft"][0]
    statistics = {
        "train_queries": len(train_ids),
        "rewrites_scored": len(rewrites),
        "share_of_rewrites_beating_original": float((rewrites["gain"] > 0).mean()),
        "share_of_query_strategies_with_a_winner": float((best > cfg.feedback.min_gain).mean()),
        "mean_best_gain_ndcg": float(best.mean()),
        "sft_rewrite_targets": int((sft["kind"] == "sft-rewrite").sum()),
        "sft_select_targets": int((sft["kind"] == "sft-select").sum()),
        "rewrite_pairs": len(sets["dpo"][1]),
        **{f"winner_share_{n}": float((best.xs(n, level="strategy") > cfg.feedback.min_gain).mean()) for n in names},
    }
    result = {"statistics": statistics, "recipes": recipes, "seconds": time.perf_counter() - started}
    console = Console(width=150)
    titles = {"semanlink": "Semanlink arXiv→tags", "perovskite": "perovskite title→abstract"}
    for recipe, outcome in recipes.items():
        console.print(
            f"recipe {recipe}: {outcome['sft_rows']} SFT rows ({outcome['sft_steps']} steps), "
            f"{outcome['dpo_pairs']} DPO pairs ({outcome['dpo_steps']} steps)"
        )
        for board, title in titles.items():
            if board in outcome:
                versions = {"start_version": base.version, "candidate_version": recipe}
                console.print(retrieval_table(outcome[board], versions, title))
    console.print(statistics)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    flat = {
        f"{recipe}_{board}_{k}": v
        for recipe, outcome in recipes.items()
        for board in titles
        for k, v in outcome.get(board, {}).items()
    }
    log_bench_run("rewrite_feedback", vars(args), statistics | flat, args.out, args.mlflow_dir)
    return result


if __name__ == "__main__":
    main()
