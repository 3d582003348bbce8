"""What the benchmarks share: a throwaway project (params file, store, MLflow) under .cache/bench/, the bundled items
in their seeded splits, a cached fine-tune, and logging a result to the MLflow experiment `flywheel-bench`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import yaml

from tests.project import REPO, link_shared

if TYPE_CHECKING:
    from tasks.config import Task


def project_settings(work: Path, name: str, overrides: dict):
    """Settings of a project in `work` (store, exports, MLflow there; the model cache shared with the repository):
    the repository's params.yaml with `overrides` merged key by key, written to params-<name>.yaml."""
    from tasks.config import load_settings, merge_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = merge_params(params, overrides)
    link_shared(work)
    path = work / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return load_settings(path)


def log_bench_run(run_name: str, params: dict, metrics: dict[str, float], artifact: Path, mlflow_dir: Path) -> None:
    import mlflow
    from stores import tracking

    experiment = tracking.configure(mlflow_dir, "flywheel-bench")
    with mlflow.start_run(experiment_id=experiment, run_name=run_name):
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(artifact))


def bench_splits(settings) -> dict[str, pd.DataFrame]:
    """The bundled Semanlink items by split (train / human / heldout, as the turn assigns them), each in a fixed
    order of the bench's own (no retrieved context: the benches compare data and methods, not prompts)."""
    from tasks.ingest.ingest import assign_split, ingest_semanlink
    from tasks.stage import with_fields

    records, _ = ingest_semanlink(settings.data.min_comment_chars, settings.data.min_title_chars)
    frame = with_fields(pd.DataFrame(records))
    frame["split"] = [
        assign_split(settings.seed, i, settings.data.heldout_fraction, settings.data.human_fraction)
        for i in frame["item_id"]
    ]
    frame["order"] = [hashlib.sha256(f"bench:{i}".encode()).hexdigest() for i in frame["item_id"]]
    frame = frame.sort_values("order").drop(columns="order").reset_index(drop=True)
    return {name: group.reset_index(drop=True) for name, group in frame.groupby("split")}


def caption_phase(items: pd.DataFrame, targets: list[str], task: Task) -> pd.DataFrame:
    """SFT rows (each item's caption prompt, its target, kind `sft-human`), as the retrain stage trains them."""
    from tasks.prompts import prompt_messages

    prompts = [prompt_messages(item, task) for item in items.to_dict("records")]
    return pd.DataFrame({"prompt": prompts, "target": list(targets), "kind": "sft-human"})


def fine_tuned(start: Path, items: pd.DataFrame, targets: list[str], settings, steps: int, work: Path) -> Path:
    """`start` after `steps` SFT steps on (each item's caption prompt, its target), with the retrain section's
    settings; cached in `work` by its inputs, so a rerun only loads it."""
    from tasks.retrain.retrain import train

    inputs = [
        str(start),
        list(items["item_id"]),
        list(targets),
        steps,
        settings.seed,
        settings.retrain.sft.learning_rate,
    ]
    key = json.dumps(inputs, default=lambda section: section.model_dump(mode="json"))
    target = work / f"sft-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not (target / "model" / "model.safetensors").exists():
        phase = caption_phase(items, targets, settings.task)
        cfg = settings.retrain.model_copy(update={"sft": settings.retrain.sft.model_copy(update={"max_steps": steps})})
        train(start, [phase], pd.DataFrame(), cfg, settings.seed, target)
    return target / "model"
