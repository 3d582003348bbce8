"""What a stage is: a declaration (name, output tables, upstream stages, the config sections it reads) plus a
`run(ctx)` that turns inputs into output tables. The runner (`tasks/runner.py`) owns everything around it:
batch ids, caching of finished batches, validation, quarantine, atomic writes, lineage and MLflow logging.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd

from stores import tracking
from stores.registry import ModelRef, Registry
from stores.schema import TableSpec
from stores.store import Store
from stores.tracking import RunHandle
from tasks.config import Settings
from tasks.errors import InputError


@dataclass(frozen=True)
class StageDef:
    name: str
    outputs: tuple[TableSpec, ...]
    upstream: tuple[str, ...]
    sections: tuple[str, ...]  # config sections in the params hash
    run: Callable[[StageContext], StageOutput]
    uses_model: bool = True  # generates, scores or trains: a GPU stage
    per_turn: bool = True
    model_when: Callable[[Settings], bool] | None = None  # uses the model only under these settings (then per turn)
    registers_models: bool = False  # registers candidates: its batch is per model lineage (tasks/runner.py)
    input_fingerprint: Callable[[Settings], str | None] | None = None  # files read besides tables (in the batch id)

    def uses_model_in(self, settings: Settings) -> bool:
        return self.uses_model or (self.model_when is not None and self.model_when(settings))

    def per_turn_in(self, settings: Settings) -> bool:
        """A stage that calls the model is per turn: its output depends on the turn's starting model."""
        return self.per_turn or self.uses_model_in(settings)


@dataclass
class StageOutput:
    tables: dict[str, pd.DataFrame]
    rows_in: int
    metrics: dict[str, float] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)  # small facts later stages or the CLI need (e.g. a model version)
    rejects: dict[str, list[dict]] = field(default_factory=dict)  # table -> rows the stage itself refused


@dataclass
class StageContext:
    settings: Settings
    store: Store
    turn: int
    batch_id: str
    upstream: dict[str, str]  # upstream stage name -> its batch id
    start_model: ModelRef | None  # the champion the turn started from
    registry: Registry
    mlrun: RunHandle  # this stage's MLflow run
    turn_run: RunHandle  # the turn's parent MLflow run
    llm_factory: Callable[[ModelRef], object]
    upstream_summary: Callable[[str], dict]

    @cached_property
    def llm(self):
        """The cached model client for the turn's starting model."""
        return self.llm_factory(self.start_model)

    @cached_property
    def turn_model(self) -> ModelRef:
        """The model this turn's data work starts from: the start model refined on the turn's human titles (the
        `refine` stage), or the start model itself where refinement is off or not upstream."""
        if "refine" not in self.upstream:
            return self.start_model
        version = self.upstream_summary("refine").get("refined_version")
        return self.start_model if version is None else self.registry.get(version)

    def log_scoreboard(self, figure, name: str, metrics: dict[str, float], prefix: str) -> None:
        """A scoreboard's chart on the stage's and the turn's MLflow runs (the figure is closed), and its metrics,
        named `<prefix>_<metric>`, on the turn's run and on the lineage's curve at step = turn."""
        import matplotlib.pyplot as plt

        for run in (self.mlrun, self.turn_run):
            run.log_figure(figure, name)
        plt.close(figure)
        per_turn = {f"{prefix}_{k}": v for k, v in metrics.items()}
        self.turn_run.log_metrics(per_turn, step=self.turn)
        tracking.history_run(self.turn_run).log_metrics(per_turn, step=self.turn)

    def read(self, stage: str, table: str) -> pd.DataFrame:
        return self.store.read(table, self.upstream[stage])

    def prompt_items(self) -> pd.DataFrame:
        """All items, their fields as columns, with their retrieved context (`context`: related items' references)
        when the stage reads it."""
        items = with_fields(self.read("ingest", "items"))
        require_task_fields(set(items.columns), self.settings)
        if "context" not in self.upstream:
            return items
        return with_context(items, self.read("context", "contexts"))

    def items(self, split: str) -> pd.DataFrame:
        """Items of one split (with their context) in a fixed, seeded order (the same order every turn)."""
        items = self.prompt_items()
        return seeded_order(items[items["split"] == split], self.settings.seed)

    def probe(self) -> pd.DataFrame:
        """The dataset-quality probe: the last `data.probe_items` train items in the seeded order, never in a window."""
        items = self.items("train")
        return items.iloc[len(items) - min(self.settings.data.probe_items, len(items)) :].reset_index(drop=True)

    def turn_slice(self, split: str, count: int) -> pd.DataFrame:
        """This turn's `count` items of a split: consecutive windows over the seeded order, wrapping around (the
        train split's probe excluded)."""
        items = self.items(split)
        if split == "train":
            items = items.iloc[: len(items) - min(self.settings.data.probe_items, len(items))]
        return items.iloc[turn_window(len(items), self.turn, count)].reset_index(drop=True)


def turn_window(length: int, turn: int, count: int) -> list[int]:
    """Positions of a turn's `count` entries in a sequence of `length`: consecutive windows, turn after turn,
    wrapping around (never more than the sequence holds)."""
    if length == 0 or count == 0:
        return []
    start = ((turn - 1) * count) % length
    return [(start + offset) % length for offset in range(min(count, length))]


def seeded_order(items: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Items in a fixed order that depends only on the seed and their ids."""
    keys = [hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest() for item_id in items["item_id"]]
    return items.assign(_order=keys).sort_values("_order").drop(columns="_order").reset_index(drop=True)


def derive_seed(*parts) -> int:
    """A per-call seed from the run seed and the call's identity (stage, item, candidate...)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")


def with_fields(items: pd.DataFrame) -> pd.DataFrame:
    """Items with each of their named fields (the `fields` JSON object) as a column of its own, the way stages read
    them (`item["abstract"]`); a field an item lacks is None."""
    if "fields" not in items:
        columns = ", ".join(items.columns)
        raise InputError(f"items with columns {columns} and no fields (an older flywheel's store?): use a new store")
    fields = [json.loads(value) if isinstance(value, str) else dict(value) for value in items["fields"]]
    names = list(dict.fromkeys(name for row in fields for name in row))
    columns = {name: [row.get(name) for row in fields] for name in names}
    return items.drop(columns="fields").assign(**columns)


def require_task_fields(present: set[str], settings: Settings) -> None:
    """Every field the task names is one some item has (tags and the retrieved context are every item's; an empty
    value counts), so a misspelt field stops the turn with the task's field and the items' named, instead of
    prompting blank."""
    present = present | {"tags", "context"}
    for where, name in settings.task.named_fields():
        if name not in present:
            names = ", ".join(sorted(present - {"item_id", "source", "reference", "split"}))
            source = settings.data.source
            raise InputError(
                f"task.{where}: the items of data.source {source} have no field {name!r} ({names}); "
                "fix the name, or give the items the field (an empty value counts)"
            )


def with_context(items: pd.DataFrame, contexts: pd.DataFrame) -> pd.DataFrame:
    """Items with their retrieved related titles as `context`, the column caption prompts read."""
    related = contexts[["item_id", "related_titles"]].rename(columns={"related_titles": "context"})
    return items.merge(related, on="item_id", how="left")
