"""The end-of-turn summary: rows in/out per stage, noise dropped, pairs made, the held-out scoreboard of the starting
and retrained models, the promotion decision, and how to open the MLflow UI."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from tasks.llm.cached import USAGE_COLUMNS, total_usage
from tasks.metrics import REFERENCE_METRICS


def _note(stage: str, m: dict, summary: dict) -> str:
    if stage == "ingest":
        return (
            f"{m.get('items_train', 0)} train / {m.get('items_human', 0)} human / {m.get('items_heldout', 0)} held-out"
        )
    if stage == "context":
        line = f"{int(m.get('docs_per_item', 0))} related documents per item in prompts"
        return line + (
            f", {m['rewrites_per_query']:.2f} DMQR rewrites per query" if m.get("rewrites_per_query") else ""
        )
    if stage == "refine":
        if summary.get("refined_version") is None:
            return "no refinement: the turn's starting model annotates"
        steps, examples = m.get("steps", 0), m.get("examples", 0)
        return f"v{summary['refined_version']}: {steps} SFT steps on {examples} human references"
    if stage == "annotate":
        return f"mean token log-prob {m.get('mean_logprob', float('nan')):.2f}"
    if stage == "denoise":
        return (
            f"{summary.get('method', '')}: noise dropped {m.get('dropped', 0)}, kept {m.get('kept', 0)}, "
            f"TaiLr γ {m.get('gamma', 0):.2f}"
        )
    if stage == "preference":
        return (
            f"{m.get('prompts', 0)} prompts ({m.get('categories', 0)} categories) → {m.get('responses', 0)} responses "
            f"({m.get('responses_filtered', 0)} filtered) → {m.get('pairs', 0)} pairs, "
            f"{m.get('pairs_corrected', 0)} corrected by humans, {m.get('pairs_queued', 0)} queued for labelling"
        )
    if stage == "rewrite":
        precision = {k.rsplit("_", 1)[1]: v for k, v in m.items() if k.startswith("tag_precision_at_")}
        before, after = precision.get("original", float("nan")), precision.get("rewritten", float("nan"))
        return (
            f"tag precision {before:.2f} (original) → {after:.2f} (DMQR pool, "
            f"{m.get('rewrites_per_query', 0):.1f} rewrites/query)"
        )
    if stage == "retrain":
        return (
            f"v{summary.get('candidate_version')}: SFT {m.get('sft_synthetic', 0)} synthetic + "
            f"{m.get('sft_human', 0)} human, DPO {m.get('dpo_pairs_trained', 0)} pairs"
        )
    if stage == "evaluate":
        return f"{int(m.get('items', 0))} held-out items, starting model and candidate"
    if stage == "rag_eval":
        return (
            f"{int(m.get('queries', 0))} held-out queries: candidate P@5 {m.get('candidate_adaptive_p_at_5', 0):.3f} "
            f"adaptive vs {m.get('candidate_original_p_at_5', 0):.3f} original "
            f"({m.get('candidate_adaptive_gain_p_at_5_relative', 0):+.1%}), "
            f"{m.get('candidate_adaptive_rewrites_per_query', 0):.1f} rewrites/query"
        )
    if stage == "promote":
        return summary.get("reason", "")
    return ""


def stage_line(result: dict) -> str:
    """The line printed as a stage finishes: its counts and time, then its key fact (the summary table's note)."""
    from tasks.runner import StageResult

    note = "" if result["summary"].get("skipped") else stage_note(result)
    return StageResult(**result).line() + (f"  {note}" if note else "")


def stage_note(result: dict) -> str:
    """A finished stage's key fact; a switched-off stage's is that it was skipped."""
    if result["summary"].get("skipped"):
        return "skipped"
    return _note(result["stage"], result["metrics"], result["summary"])


def model_work_table(results: list[dict]) -> Table:
    """Tokens, calls, cache hits and model-seconds per model stage and for the turn, as recorded when each stage ran
    (a stage found in the store now did that work then): what a cost estimate before scaling out starts from."""
    table = Table(title="Model work (as recorded when each stage ran)", title_justify="left")
    table.add_column("stage")
    for column in USAGE_COLUMNS:
        table.add_column(column.replace("_", " "), justify="right")
    used = [(r["stage"], r["summary"]["usage"]) for r in results if r["summary"].get("usage", {}).get("requests")]
    total = total_usage(r["summary"] for r in results)
    for stage, usage in used:
        table.add_row(stage, *(f"{usage.get(c, 0):.0f}" for c in USAGE_COLUMNS))
    table.add_section()
    table.add_row("turn", *(f"{total[c]:.0f}" for c in USAGE_COLUMNS))
    return table


def retrieval_table(m: dict, s: dict, benchmark: str = "Semanlink arXiv→tags") -> Table:
    """The retrieval scoreboard: P@5 per query pool for the starting model and the candidate, with the candidate's
    nDCG@10 and rewrites per query, and the adaptive gains with their 95% intervals."""
    table = Table(
        title=f"Held-out retrieval ({int(m['queries'])} {benchmark} queries never trained on)",
        title_justify="left",
    )
    for column in ("query pool", f"P@5 v{s['start_version']}", f"P@5 v{s['candidate_version']}", "nDCG@10", "rewrites"):
        table.add_column(column, justify="left" if column == "query pool" else "right")
    suffix = "_rewrites_per_query"
    for config in [k[len("candidate_") : -len(suffix)] for k in m if k.startswith("candidate_") and k.endswith(suffix)]:
        table.add_row(
            config,
            f"{m[f'start_{config}_p_at_5']:.4f}",
            f"{m[f'candidate_{config}_p_at_5']:.4f}",
            f"{m[f'candidate_{config}_ndcg_at_10']:.4f}",
            f"{m[f'candidate_{config}_rewrites_per_query']:.2f}",
        )
    table.add_section()
    for name, label in (
        ("start_adaptive_gain", "adaptive − original, start"),
        ("candidate_adaptive_gain", "adaptive − original, candidate"),
        ("delta_adaptive", "adaptive, candidate − start"),
    ):
        low, high = m[f"{name}_p_at_5_ci_low"], m[f"{name}_p_at_5_ci_high"]
        table.add_row(label, "", f"{m[f'{name}_p_at_5']:+.4f}", f"[{low:+.4f}, {high:+.4f}]", "")
    return table


def print_turn(
    results: list[dict], ui_command: str, data_version: str | None = None, console: Console | None = None
) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 140)
    turn = results[-1]["turn"]
    stages = Table(title=f"Flywheel turn {turn}", title_justify="left")
    for column in ("stage", "rows in", "rows out", "quarantined", "seconds", "LLM calls", "notes"):
        stages.add_column(column, justify="left" if column in ("stage", "notes") else "right")
    for r in results:
        seconds = f"{r['seconds']:.1f}" + (" (cached)" if r["cached"] else "")
        stages.add_row(
            r["stage"],
            str(r["rows_in"]),
            str(r["rows_out"]),
            str(r["quarantined"]),
            seconds,
            str(r["llm_calls"]),
            stage_note(r),
        )
    console.print(stages)
    if any(r["summary"].get("usage") for r in results):  # turns recorded before the accounting have none
        console.print(model_work_table(results))

    evaluation = next(r for r in results if r["stage"] == "evaluate")
    m, s = evaluation["metrics"], evaluation["summary"]
    board = Table(title=f"Held-out scoreboard ({int(m['items'])} items never trained on)", title_justify="left")
    for column in ("metric", f"start v{s['start_version']}", f"retrained v{s['candidate_version']}", "delta [95% CI]"):
        board.add_column(column, justify="left" if column == "metric" else "right")
    for metric in (name for name in REFERENCE_METRICS if f"start_{name}" in m):
        board.add_row(
            metric,
            f"{m[f'start_{metric}']:.4f}",
            f"{m[f'candidate_{metric}']:.4f}",
            f"{m[f'delta_{metric}']:+.4f} [{m[f'delta_{metric}_ci_low']:+.4f}, {m[f'delta_{metric}_ci_high']:+.4f}]",
        )
    console.print(board)
    retrieval = next((r for r in results if r["stage"] == "rag_eval" and r["metrics"]), None)
    if retrieval:
        console.print(retrieval_table(retrieval["metrics"], retrieval["summary"]))
    promotion = next(r for r in results if r["stage"] == "promote")["summary"]
    verdict = "promoted to champion" if promotion["promoted"] else "not promoted"
    console.print(
        f"Candidate v{promotion['candidate_version']} {verdict} ({promotion['metric']}): {promotion['reason']}"
    )
    if data_version:
        console.print(data_version)
    console.print(f"MLflow UI: {ui_command}")
