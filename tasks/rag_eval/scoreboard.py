"""The retrieval scoreboard: each turn, the starting model and the retrained candidate rewrite the same held-out
queries of the bundled Semanlink arXiv→tags benchmark (a paper's title and abstract; its curator tags are the
relevant documents), and retrieval runs as in the rewrite stage (BM25 + dense, fused at `rewrite.fusion_depth`) for
the original query alone, each strategy, all of them and the model's adaptive choice. The held-out queries are a
seeded share of the benchmark (`rag_eval.heldout_fraction`) that no stage learns from, the same every turn, so turn
N+1's rewriter is comparable with turn N's, next to the caption scoreboard. Differences come with paired bootstrap
95% intervals over queries: adaptive − original for each model, candidate − start for adaptive.

Input: the candidate (`retrain`). Output columns (`rag_scores`): query_id, role, model, config, strategies (applied),
p_at_5, hit_at_5, recall_at_10, ndcg_at_10, mrr_at_10, rewrites.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from stores.schema import Column, TableSpec  # noqa: E402
from tasks.metrics import paired_bootstrap  # noqa: E402
from tasks.rewrite.beir import Benchmark, split_queries  # noqa: E402
from tasks.rewrite.feedback import benchmark_index  # noqa: E402
from tasks.rewrite.rag_eval import score_queries  # noqa: E402
from tasks.stage import StageContext, StageDef, StageOutput  # noqa: E402

METRICS = ("p_at_5", "hit_at_5", "recall_at_10", "ndcg_at_10", "mrr_at_10")
RAG_SCORES = TableSpec(
    "rag_scores",
    (
        Column("query_id", "VARCHAR", min_length=1),
        Column("role", "VARCHAR", min_length=1),  # start | candidate
        Column("model", "VARCHAR", min_length=1),
        Column("config", "VARCHAR", min_length=1),  # original | a strategy | all | adaptive
        Column("strategies", "VARCHAR[]"),
        *(Column(metric, "DOUBLE", min_value=0.0, max_value=1.0) for metric in METRICS),
        Column("rewrites", "INTEGER", min_value=0),
    ),
    key=("query_id", "role", "config"),
    item_level=False,  # rows describe benchmark queries, not items
)


def heldout_queries(bench: Benchmark, settings) -> list[str]:
    """The held-out query ids the scoreboard scores: the first `rag_eval.queries` of the held-out side, seeded."""
    _, heldout = split_queries(sorted(bench.queries), settings.rag_eval.heldout_fraction, settings.seed)
    return heldout[: settings.rag_eval.queries]


def summarize(scores: pd.DataFrame, seed: int) -> dict[str, float]:
    """Per role and config: mean P@5, nDCG@10 and rewrites/query; per role: adaptive − original P@5 (mean, 95%
    interval, relative gain); candidate − start of adaptive P@5; each model's strategy picks and top pick's share."""
    result: dict[str, float] = {"queries": float(scores["query_id"].nunique())}
    means = scores.groupby(["role", "config"], sort=False)[["p_at_5", "ndcg_at_10", "rewrites"]].mean()
    for (role, config), row in means.iterrows():
        result |= {
            f"{role}_{config}_p_at_5": row["p_at_5"],
            f"{role}_{config}_ndcg_at_10": row["ndcg_at_10"],
            f"{role}_{config}_rewrites_per_query": row["rewrites"],
        }
    p_at_5 = scores.pivot_table(index="query_id", columns=["role", "config"], values="p_at_5")
    differences = {f"{role}_adaptive_gain": (role, "adaptive", role, "original") for role in ("start", "candidate")}
    differences["delta_adaptive"] = ("candidate", "adaptive", "start", "adaptive")
    for name, (role, config, base_role, base_config) in differences.items():
        mean, low, high = paired_bootstrap(p_at_5[(role, config)] - p_at_5[(base_role, base_config)], seed)
        base = p_at_5[(base_role, base_config)].mean()
        result |= {
            f"{name}_p_at_5": mean,
            f"{name}_p_at_5_ci_low": low,
            f"{name}_p_at_5_ci_high": high,
            f"{name}_p_at_5_relative": mean / base if base else float("nan"),
        }
    for role in ("start", "candidate"):
        chosen = scores[(scores["role"] == role) & (scores["config"] == "adaptive")]["strategies"]
        picks = pd.Series([name for names in chosen for name in names], dtype=object).value_counts()
        result[f"{role}_top_strategy_share"] = float(picks.iloc[0] / picks.sum()) if len(picks) else 0.0
        result |= {f"{role}_selected_{name}": float(count) for name, count in picks.items()}
    return result


def chart(summary: dict[str, float], configs: list[str], start_label: str, candidate_label: str):
    figure, axis = plt.subplots(figsize=(8, 3.5))
    positions = np.arange(len(configs))
    for offset, role, label, color in (
        (-0.2, "start", start_label, "#9d9da1"),
        (0.2, "candidate", candidate_label, "#4c78a8"),
    ):
        axis.bar(positions + offset, [summary[f"{role}_{c}_p_at_5"] for c in configs], 0.4, label=label, color=color)
    axis.set_xticks(positions, configs)
    axis.set_ylabel("P@5")
    axis.legend(fontsize=8)
    low, high = summary["candidate_adaptive_gain_p_at_5_ci_low"], summary["candidate_adaptive_gain_p_at_5_ci_high"]
    axis.set_title(
        f"Held-out retrieval ({int(summary['queries'])} queries): candidate adaptive − original "
        f"{summary['candidate_adaptive_gain_p_at_5']:+.3f} [{low:+.3f}, {high:+.3f}]",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.settings.rewrite
    bench, index = benchmark_index(ctx.store.con, cfg.dense_dtype)
    query_ids = heldout_queries(bench, ctx.settings)
    candidate = ctx.registry.get(ctx.upstream_summary("retrain")["candidate_version"])
    tables = []
    for role, llm in (("start", ctx.llm), ("candidate", ctx.llm_factory(candidate))):
        scores, _, _ = score_queries(
            bench,
            query_ids,
            llm,
            index,
            list(cfg.strategies),
            cfg.sampling,
            cfg.max_query_chars,
            cfg.fusion,
            cfg.rrf_k,
            cfg.fusion_depth,
        )
        tables.append(scores.assign(role=role, model=llm.model.label))
    scores = pd.concat(tables, ignore_index=True).rename(columns=lambda c: c.replace("@", "_at_"))
    summary = summarize(scores, ctx.settings.seed)
    figure = chart(summary, list(dict.fromkeys(scores["config"])), ctx.start_model.label, candidate.label)
    ctx.log_scoreboard(figure, "rag_scoreboard.png", summary, "rag")
    facts = {"start_version": ctx.start_model.version, "candidate_version": candidate.version}
    return StageOutput({"rag_scores": scores}, rows_in=len(query_ids), metrics=summary, summary=facts)


STAGE = StageDef(
    name="rag_eval",
    outputs=(RAG_SCORES,),
    upstream=("retrain",),
    sections=("rewrite", "rag_eval"),
    run=run,
)
