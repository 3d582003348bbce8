"""Noise scores for any items file: `flywheel denoise score --items FILE --out FILE [--method M] [--score S]`.

Input: JSONL in the project's item schema (tasks/ingest/ingest.py `ItemRecord`) with an optional `annotation` per
line (default: the line's `reference`). Each annotation is scored by the current `champion` given its item, through the
project store's LLM-call cache, and the chosen noise-control method decides. The CLI's score is `fitted` unless
told otherwise: it fits on the project's human split (the first `denoise.trusted_items` human items of its data
source), whose titles are what a file of human-written annotations looks like; the turn's `denoise.score` (`nll`)
suits the model's own samples, whose style the trusted fit has not seen. Output: JSONL with
item_id, annotation, method, noise_score, threshold, kept, reason, plus the run's gamma and noise_level; lines that
could not be used go to `<out>.rejects.jsonl` with file, line and field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from stores.store import Store
from tasks.config import Denoise, Settings
from tasks.denoise.denoise import decision_table, noise_decision
from tasks.errors import InputError
from tasks.ingest.ingest import ItemRecord, ingest_jsonl
from tasks.stage import with_fields


class AnnotatedItem(ItemRecord):
    annotation: str | None = None


def score_file(
    settings: Settings, items_path: Path, out_path: Path, method: str | None = None, score: str | None = None
) -> dict:
    if not items_path.is_file():
        raise InputError(f"{items_path}: not a file")
    records, rejects = ingest_jsonl(items_path, AnnotatedItem)
    if not records:
        raise InputError(f"{items_path}: no valid items ({len(rejects)} lines rejected)")
    chosen = {"method": method, "score": score}
    cfg = Denoise.model_validate(settings.denoise.model_dump() | {k: v for k, v in chosen.items() if v is not None})
    items = with_fields(pd.DataFrame(records))
    annotations = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "candidate": 0,
            "caption": items["annotation"].fillna(items["reference"]),
        }
    )
    from tasks.runner import cached_llm, register_base_model

    model = register_base_model(settings)
    trusted = human_split(settings) if cfg.score == "fitted" else items.iloc[0:0]
    with Store.open(settings.path("store")) as store:
        llm = cached_llm(settings, store, model)
        decision, _ = noise_decision(cfg, annotations, items, trusted, llm, settings.task, settings.seed)
    table = decision_table(annotations, decision).drop(columns="candidate")
    table = table.rename(columns={"caption": "annotation"}).assign(
        gamma=decision.gamma, noise_level=decision.noise_level, model=model.label
    )
    _write_jsonl(out_path, table.to_dict("records"))
    _write_jsonl(out_path.with_suffix(".rejects.jsonl"), rejects)
    return {
        "scored": len(table),
        "dropped": int((~table["kept"]).sum()),
        "rejected": len(rejects),
        "gamma": decision.gamma,
    }


def human_split(settings: Settings) -> pd.DataFrame:
    """The project's first `denoise.trusted_items` human-split items (its data source ingested on demand, once)."""
    from tasks.runner import run_stage

    ingested = run_stage("ingest", settings, settings.turn)
    with Store.open(settings.path("store")) as store:
        items = with_fields(store.read("items", ingested.batch_id))
    return items[items["split"] == "human"].head(settings.denoise.trusted_items).reset_index(drop=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    plain = lambda value: value.item() if hasattr(value, "item") else str(value)  # noqa: E731  (NumPy scalars)
    tmp.write_text("".join(json.dumps(row, default=plain, ensure_ascii=False) + "\n" for row in rows))
    os.replace(tmp, path)
