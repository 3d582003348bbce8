"""The experiment's report: per turn and arm, the held-out scores of the arm's champion after that turn (turn 0: the
base model) on the task's metrics, with paired bootstrap 95% intervals against the base model and against the
baseline arm's champion at the same turn, the gate's decision, and the dataset-quality numbers (the probe annotated
by that turn's annotator; the turn's annotations, all / kept / dropped by noise control, against the train items'
human references), and the candidate's held-out retrieval P@5 (adaptive DMQR and the original query, `rag_eval`).
Written as Markdown + JSON + a curve plot under `data/experiments/<name>/`, and to MLflow: a parent run per
experiment with a child run per arm whose metrics are logged at step = turn, so the UI draws every arm's curve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from flows.experiment import ExperimentSpec, arm_turns  # noqa: E402
from stores import tracking  # noqa: E402
from tasks.config import Settings  # noqa: E402
from tasks.errors import FlywheelError  # noqa: E402
from tasks.llm.cached import total_usage  # noqa: E402
from tasks.metrics import paired_bootstrap  # noqa: E402

MLFLOW_EXPERIMENT = "flywheel-experiments"  # one parent run per experiment file name
LABELS = {"rouge_l": "ROUGE-L", "minilm_sim": "MiniLM", "exact_match": "accuracy"}  # the report's column names
GROUPS = ("all", "kept", "dropped")  # the turn's annotations, by noise control's decision


@dataclass
class Report:
    rows: pd.DataFrame
    markdown_path: Path
    plot_path: Path


def champion_scores(turns: list[dict], metrics: tuple[str, ...]) -> list[pd.DataFrame]:
    """Per-item held-out scores of the champion after each turn; index 0 is the base model (turn 1's start)."""
    boards = [t["scoreboard"].set_index("item_id") for t in turns]
    scores = [boards[0][boards[0]["role"] == "start"]]
    for turn, board in zip(turns, boards):
        promoted = turn["stages"]["promote"]["summary"]["promoted"]
        scores.append(board[board["role"] == ("candidate" if promoted else "start")])
    return [s[list(metrics)].sort_index() for s in scores]


def compare(a: pd.DataFrame, b: pd.DataFrame, seed: int) -> dict[str, float]:
    """Paired mean difference a − b per metric with its bootstrap interval, over the items both scored."""
    shared = a.index.intersection(b.index)
    result = {}
    for metric in a.columns:
        mean, low, high = paired_bootstrap((a.loc[shared, metric] - b.loc[shared, metric]).to_numpy(), seed)
        result |= {f"d_{metric}": mean, f"d_{metric}_low": low, f"d_{metric}_high": high}
    return result


def report_rows(spec: ExperimentSpec, arms: dict[str, Settings]) -> pd.DataFrame:
    turns = {arm: arm_turns(settings) for arm, settings in arms.items()}
    first = next(iter(arms.values()))
    seed, metrics, primary = first.seed, first.task.metrics, first.promote.primary_metric
    scores = {arm: champion_scores(t, metrics) for arm, t in turns.items() if t}
    quality = (f"probe_{primary}", *(f"quality_{group}_{primary}" for group in GROUPS))
    rows = []
    for arm, by_turn in scores.items():
        for turn, champion in enumerate(by_turn):
            row = {"arm": arm, "turn": turn, "items": len(champion)}
            row |= {metric: float(champion[metric].mean()) for metric in metrics}
            row |= {f"vs_base_{k}": v for k, v in compare(champion, by_turn[0], seed).items()}
            baseline = scores.get(spec.baseline, [])
            if arm != spec.baseline and turn < len(baseline):
                row |= {f"vs_baseline_{k}": v for k, v in compare(champion, baseline[turn], seed).items()}
            if turn:
                stages = turns[arm][turn - 1]["stages"]
                row["promoted"] = bool(stages["promote"]["summary"]["promoted"])
                row[f"candidate_{primary}"] = stages["evaluate"]["metrics"][f"candidate_{primary}"]
                found = stages["annotate"]["metrics"] | stages["denoise"]["metrics"]
                row |= {q: found.get(q) for q in quality}
                row["dropped"] = stages["denoise"]["metrics"].get("dropped")
                retrieval = stages.get("rag_eval", {}).get("metrics", {})  # none: skipped, or a turn before it
                row |= {f"rag_{c}_p_at_5": retrieval.get(f"candidate_{c}_p_at_5") for c in ("adaptive", "original")}
                row["seconds"] = sum(r["seconds"] for r in stages.values())
                usage = total_usage(r["summary"] for r in stages.values())
                row |= {key: usage[key] for key in ("prompt_tokens", "completion_tokens", "model_seconds")}
            rows.append(row)
    return pd.DataFrame(rows)


def _interval(row: pd.Series, prefix: str, metric: str) -> str:
    key = f"{prefix}_d_{metric}"
    if pd.isna(row.get(key)):
        return ""
    return f"{row[key]:+.3f} [{row[f'{key}_low']:+.3f}, {row[f'{key}_high']:+.3f}]"


def _number(value, digits: int = 3) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def markdown(spec: ExperimentSpec, rows: pd.DataFrame, metrics: tuple[str, ...], primary: str) -> str:
    name = LABELS[primary]
    against_baseline = (primary, *sorted(set(metrics) - {primary}))  # the gate's metric first
    header = (
        f"| turn | arm | {' | '.join(LABELS[m] for m in metrics)} | Δ {name} vs base [95% CI] | "
        + "".join(f"Δ {LABELS[m]} vs {spec.baseline} [95% CI] | " for m in against_baseline)
        + f"promoted | probe {name} | annotations {name} all / kept / dropped | retrieval P@5 adaptive / original | "
        "tokens in / out (k) | model s | s |"
    )
    lines = [
        f"# Experiment `{spec.name}`: {rows['arm'].nunique()} arms × {int(rows['turn'].max())} turns",
        "",
        f"Held-out: {int(rows['items'].max())} items never trained on; scores are the champion's after each turn "
        "(turn 0: the base model). Intervals: paired bootstrap over items, 95%.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for _, row in rows.sort_values(["turn", "arm"]).iterrows():
        quality = " / ".join(_number(row.get(f"quality_{g}_{primary}")) for g in GROUPS)
        promoted = "" if pd.isna(row.get("promoted")) else ("yes" if row["promoted"] else "no")
        cells = [
            str(int(row["turn"])),
            row["arm"],
            *(_number(row[m]) for m in metrics),
            _interval(row, "vs_base", primary) if row["turn"] else "",
            *(_interval(row, "vs_baseline", m) for m in against_baseline),
            promoted,
            _number(row.get(f"probe_{primary}")),
            quality if row["turn"] else "",
            " / ".join(_number(row.get(f"rag_{c}_p_at_5")) for c in ("adaptive", "original")) if row["turn"] else "",
            f"{_number(row.get('prompt_tokens', 0) / 1e3, 1)} / {_number(row.get('completion_tokens', 0) / 1e3, 1)}"
            if row["turn"]
            else "",
            _number(row.get("model_seconds"), 0),
            _number(row.get("seconds"), 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(spec: ExperimentSpec, rows: pd.DataFrame, path: Path, metrics: tuple[str, ...], primary: str) -> None:
    panels = tuple((m, f"held-out {LABELS[m]} (champion)") for m in metrics)
    panels += ((f"probe_{primary}", f"probe annotation {LABELS[primary]} (dataset quality)"),)
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for axis, (column, title) in zip(axes, panels):
        for arm, group in rows.groupby("arm"):
            group = group.dropna(subset=[column]) if column in group else group.iloc[0:0]
            axis.plot(group["turn"], group[column], marker="o", label=arm)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("turn")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=8)
    figure.suptitle(f"experiment {spec.name}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def log_to_mlflow(spec: ExperimentSpec, rows: pd.DataFrame, settings: Settings, files: list[Path]) -> None:
    """A parent run for the experiment and a child per arm with its per-turn metrics (step = turn), each turn
    logged once however often the report is written."""
    from mlflow import MlflowClient

    experiment_id = tracking.configure(settings.path("mlflow"), MLFLOW_EXPERIMENT)
    parent = tracking.find_or_create(experiment_id, "flywheel.experiment", spec.name, spec.name, {})
    client = MlflowClient()
    for arm, group in rows.groupby("arm"):
        child = tracking.find_or_create(
            experiment_id, "flywheel.experiment_arm", f"{spec.name}/{arm}", arm, {"mlflow.parentRunId": parent}
        )
        logged = int(client.get_run(child).data.tags.get("flywheel.reported_turns", -1))
        handle = tracking.RunHandle.of(child)
        for _, row in group[group["turn"] > logged].iterrows():
            numbers = {k: float(v) for k, v in row.items() if k not in ("arm", "turn") and _is_number(v)}
            handle.log_metrics(numbers, step=int(row["turn"]))
        handle.set_tags({"flywheel.reported_turns": int(group["turn"].max())})
    for path in files:
        tracking.RunHandle.of(parent).log_artifact(path)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, bool)) and not pd.isna(value)


def write_report(spec: ExperimentSpec, arms: dict[str, Settings]) -> Report:
    settings = next(iter(arms.values()))
    rows = report_rows(spec, arms)
    if rows.empty:
        raise FlywheelError(f"experiment {spec.name}: no arm has finished a turn yet")
    folder = settings.root / "data" / "experiments" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    markdown_path, plot_path, json_path = folder / "report.md", folder / "curves.png", folder / "results.json"
    metrics, primary = settings.task.metrics, settings.promote.primary_metric
    markdown_path.write_text(markdown(spec, rows, metrics, primary))
    plot(spec, rows, plot_path, metrics, primary)
    json_path.write_text(json.dumps(rows.to_dict("records"), indent=2, default=str) + "\n")
    log_to_mlflow(spec, rows, settings, [markdown_path, plot_path, json_path])
    return Report(rows, markdown_path, plot_path)
