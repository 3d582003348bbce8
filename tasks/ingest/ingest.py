"""Ingest: raw items into the `items` table, each with its named fields, its human reference and its split.

The item schema is task-neutral: an id, the human `reference` output, a mapping of named `fields` (text, or lists of
text) the task's prompt and content name, and optional `tags`. Sources: the bundled Semanlink bookmarks (inside the
`cherche==2.2.1` package, located with `find_spec` so the package itself is never imported: a bookmark is an item
when it carries text to caption, the arXiv papers' abstract or a long enough curator comment; its title is the
reference), the bundled QuaRTz science questions (tasks/ingest/quartz.py), or any JSONL file in the item schema
(`ItemRecord`). Every field the task names must be present on the items, or the stage stops with the field named.
Splits are a seeded hash of the item id: stable when items are added, and the held-out split is never trained on.

Output columns (`items`): item_id, source, reference, fields (a JSON object), tags, split.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Annotated

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stores.schema import Column, TableSpec
from tasks.config import ItemField
from tasks.errors import InputError
from tasks.ingest.quartz import ingest_quartz, quartz_file
from tasks.stage import StageContext, StageDef, StageOutput, require_task_fields

ITEMS = TableSpec(
    "items",
    (
        Column("item_id", "VARCHAR", min_length=1, max_length=200),
        Column("source", "VARCHAR", min_length=1),
        Column("reference", "VARCHAR", min_length=1, max_length=1000),
        Column("fields", "VARCHAR", min_length=2, max_length=400_000),  # JSON: {name: text or [text, ...]}
        Column("tags", "VARCHAR[]"),
        Column("split", "VARCHAR", min_length=4, max_length=7),
    ),
    key=("item_id",),
    description="Items to annotate, with their named fields, human reference and split.",
)
# names an item's fields cannot take: the item's own columns and the context stage's
RESERVED = ("item_id", "source", "reference", "tags", "split", "context")
SPLITS = ("train", "human", "heldout")
_ARXIV_PREFIX = re.compile(r"^\[\d{4}\.\d{4,5}(v\d+)?\]\s*")


class ItemRecord(BaseModel):
    """One line of an items JSONL file: `{"item_id", "reference", "fields": {name: text or [text]}, "tags"?}`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    item_id: str = Field(min_length=1, max_length=200)
    reference: str = Field(min_length=1, max_length=1000)
    fields: dict[ItemField, Annotated[str, Field(max_length=100_000)] | list[str]] = Field(min_length=1)
    tags: list[str] = []
    source: str = "jsonl"

    @model_validator(mode="after")
    def _has_text(self) -> ItemRecord:
        reserved = sorted(set(self.fields) & set(RESERVED))
        if reserved:
            raise ValueError(f"fields.{reserved[0]} is a reserved name (reserved: {', '.join(RESERVED)})")
        if not any(self.fields.values()):
            raise ValueError("an item needs text: every field is empty")
        return self


def assign_split(seed: int, item_id: str, heldout: float, human: float) -> str:
    draw = int(hashlib.sha256(f"{seed}:split:{item_id}".encode()).hexdigest()[:15], 16) / 16**15
    return "heldout" if draw < heldout else "human" if draw < heldout + human else "train"


def semanlink_dir() -> Path:
    spec = importlib.util.find_spec("cherche")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package cherche==2.2.1 is not installed (make setup installs it with --no-deps)")
    return Path(spec.submodule_search_locations[0]) / "data" / "semanlink"


def ingest_semanlink(min_comment_chars: int, min_title_chars: int) -> tuple[list[dict], dict]:
    """Bookmarks that carry text, as item records (reference: the title; fields: abstract, comment); returns
    (records, selection counts)."""
    folder = semanlink_dir()
    docs = json.loads((folder / "docs.json").read_text())
    arxiv = {doc["document"]: doc for doc in json.loads((folder / "arxiv.json").read_text())}
    tags = json.loads((folder / "tags.json").read_text())
    records = []
    for doc in docs:
        paper = arxiv.get(doc["document"], {})
        abstract = paper.get("arxiv_summary") or doc.get("arxiv_summary") or ""
        comment = (doc.get("comment") or "").strip()
        title = _ARXIV_PREFIX.sub("", doc.get("title") or "").strip()
        if not (abstract or len(comment) >= min_comment_chars) or len(title) < min_title_chars:
            continue
        records.append(
            {
                "item_id": "sl-" + hashlib.sha1(doc["document"].encode()).hexdigest()[:12],
                "source": "semanlink-arxiv" if abstract else "semanlink-bookmark",
                "reference": title,
                "fields": {"abstract": " ".join(abstract.split()), "comment": comment},
                "tags": [(tags.get(t, {}).get("prefLabel") or [t.rsplit("/", 1)[-1]])[0] for t in doc.get("tag", [])],
            }
        )
    return records, {"bookmarks": len(docs), "selected": len(records)}


def ingest_jsonl(path: Path, record: type[ItemRecord] = ItemRecord) -> tuple[list[dict], list[dict]]:
    """Valid item records and rejected lines; a reject names the file, line and field."""
    records, rejects = [], []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path.name} line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            rejects.append(_reject(where, f"invalid UTF-8 ({error.reason} at byte {error.start})", raw))
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            rejects.append(_reject(where, f"invalid JSON: {error.msg} at column {error.colno}", line))
            continue
        if not isinstance(value, dict):
            rejects.append(_reject(where, f"expected a JSON object, got {type(value).__name__}", line))
            continue
        try:
            records.append(record(**value).model_dump())
        except ValidationError as error:
            fields = "; ".join(f"field {'.'.join(map(str, e['loc'])) or '(item)'}: {e['msg']}" for e in error.errors())
            rejects.append(_reject(where, fields, value))
    return records, rejects


def _reject(where: str, reason: str, row) -> dict:
    shown = row if isinstance(row, dict) else {"line": row[:2000] if isinstance(row, str) else repr(row[:2000])}
    return {"row_key": where, "reason": f"{where}: {reason}", "row": shown}


def run(ctx: StageContext) -> StageOutput:
    data = ctx.settings.data
    rejects: list[dict] = []
    if data.source == "semanlink":
        records, metrics = ingest_semanlink(data.min_comment_chars, data.min_title_chars)
    elif data.source == "quartz":
        records, metrics = ingest_quartz()
    else:
        path = source_path(ctx.settings.root, data.source)
        records, rejects = ingest_jsonl(path)
        metrics = {"lines_rejected": len(rejects)}
        if not records:
            first = rejects[0]["reason"] if rejects else "the file is empty"
            raise InputError(f"{path}: no valid items ({len(rejects)} lines rejected; first: {first})")
    require_task_fields({name for record in records for name in record["fields"]}, ctx.settings)
    frame = pd.DataFrame(records, columns=[c.name for c in ITEMS.columns if c.name != "split"])
    frame["fields"] = [json.dumps(fields, ensure_ascii=False, sort_keys=True) for fields in frame["fields"]]
    frame["split"] = [
        assign_split(ctx.settings.seed, item_id, data.heldout_fraction, data.human_fraction)
        for item_id in frame["item_id"]
    ]
    for split in SPLITS:
        metrics[f"items_{split}"] = int((frame["split"] == split).sum())
    return StageOutput(
        {"items": frame}, rows_in=len(records) + len(rejects), metrics=metrics, rejects={"items": rejects}
    )


def source_path(root: Path, source: str) -> Path:
    path = (root / source).resolve()
    if not path.is_file():
        raise InputError(f"data.source: {path} is not a file (bundled data: 'semanlink' or 'quartz')")
    return path


def source_fingerprint(root: Path, source: str) -> str:
    """Content hash of the raw input, so a changed file is a new batch."""
    bundled = {"semanlink": lambda: sorted(semanlink_dir().glob("*.json")), "quartz": lambda: [quartz_file()]}
    files = bundled[source]() if source in bundled else [source_path(root, source)]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


STAGE = StageDef(
    name="ingest",
    outputs=(ITEMS,),
    upstream=(),
    sections=("data",),
    run=run,
    uses_model=False,
    per_turn=False,
    input_fingerprint=lambda settings: source_fingerprint(settings.root, settings.data.source),
)
