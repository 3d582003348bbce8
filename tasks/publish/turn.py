"""A finished turn as one object: its stage records and output tables (read from the store by the turn's batch
ids), the model it started from and the candidate it trained. What the snapshot, the dataset and its card read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stores import tracking
from stores.registry import ModelRef, Registry
from stores.store import StageRunRecord, Store
from tasks.config import Settings
from tasks.errors import FlywheelError
from tasks.runner import STAGES, batch_ids


@dataclass
class FinishedTurn:
    settings: Settings
    turn: int
    ids: dict[str, str]  # stage -> batch id
    records: dict[str, StageRunRecord]
    tables: dict[str, pd.DataFrame]  # every stage output table, this turn's batch
    start_model: ModelRef
    candidate: ModelRef
    registry: Registry

    @property
    def lineage(self) -> str:
        return self.settings.model.registry_name

    def folder(self) -> Path:
        """Where the turn's snapshot lives in the project: one folder per lineage and turn (experiment arms are
        lineages of their own, so they share `paths.turns`, which git does not ignore)."""
        return self.settings.path("turns") / self.lineage / f"turn-{self.turn}"


def load_turn(settings: Settings, turn: int) -> FinishedTurn:
    """The turn's records and tables; a clear error if the turn has not finished with these params."""
    experiment_id = tracking.configure(settings.path("mlflow"), settings.experiment)
    registry = Registry(settings.model.registry_name, experiment_id, settings.path("models"))
    with Store.open(settings.path("store")) as store:
        version = store.turn_start_version(registry.name, turn)
        if version is None:
            raise FlywheelError(f"turn {turn} of {registry.name} has not started in {settings.path('store')}")
        start_model = registry.get(version)
        ids = batch_ids(settings, turn, start_model)
        records = {name: store.stage_run(batch_id) for name, batch_id in ids.items()}
        missing = [name for name in STAGES if records[name] is None]
        if missing:
            raise FlywheelError(f"turn {turn} is not finished with these params: {', '.join(missing)} not recorded")
        tables = {
            spec.name: store.read(spec.name, ids[name]) if store.has_table(spec.name) else pd.DataFrame()
            for name, stage in STAGES.items()
            for spec in stage.outputs
        }
    candidate = registry.get(records["retrain"].summary["candidate_version"])
    return FinishedTurn(settings, turn, ids, records, tables, start_model, candidate, registry)
