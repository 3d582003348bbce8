"""Each finished turn's data as a DVC version: the turn's stage tables, stage records, params and training dataset
(with its card) are written to `data/turns/<lineage>/turn-N/`, `dvc add`ed and pushed to the project's default remote.

The version's `.dvc` file text is recorded in the store, and the candidate model version the turn trained carries
the version in MLflow tags (`data.md5`, `data.turn`, `data.dvc_file`, and the md5 of each training set), so
`flywheel checkout --turn N` restores the folder byte for byte from the remote even after the workspace, its `.dvc`
files and the DVC cache are gone. The Prefect flow publishes after the turn's last stage; after `dvc repro`, run
`flywheel publish` (what `make repro` does). A turn already published with the same batches is not rewritten.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from stores import dvc
from stores.store import Store
from stores.tracking import RunHandle
from tasks.config import Settings
from tasks.errors import FlywheelError
from tasks.llm.cached import total_usage
from tasks.publish.dataset import CARD_FILE, write_dataset
from tasks.publish.turn import FinishedTurn, load_turn

DATASET_FOLDER = "dataset"


@dataclass(frozen=True)
class DataVersion:
    turn: int
    md5: str
    dvc_file: str  # relative to the project folder
    files: int
    size: int
    remote: str
    published: bool  # False: this turn's batches were already published (nothing rewritten)

    def line(self) -> str:
        state = "pushed" if self.published else "already published"
        return (
            f"{'publish':<10} turn {self.turn}: data version {self.md5[:12]} ({self.files} files, "
            f"{self.size / 1e6:.1f} MB) -> {self.dvc_file}, {state} to {self.remote}"
        )


def publish_turn(settings: Settings, turn: int) -> DataVersion:
    """Snapshot, `dvc add`, `dvc push` and tag the finished turn (idempotent: a published batch is only re-pushed)."""
    finished = load_turn(settings, turn)
    root, folder = settings.root, finished.folder()
    with Store.open(settings.path("store")) as store:
        recorded = store.data_version(finished.lineage, turn, finished.ids["promote"])
    if recorded is not None:  # published: make sure the workspace and the remote have it, rewrite nothing
        tracked = dvc.restore(root, root / recorded[1], recorded[2])
        dvc.dvc(root, "push", "-q", recorded[1])
        return _version(finished, tracked, root, published=False)
    _snapshot(finished, folder)
    tracked = dvc.add_and_push(root, folder)
    dvc_file = str(tracked.dvc_file.relative_to(root))
    with Store.open(settings.path("store")) as store:
        promote_batch = finished.ids["promote"]
        store.record_data_version(finished.lineage, turn, promote_batch, tracked.md5, dvc_file, tracked.dvc_text)
    _tag(finished, tracked, dvc_file)
    return _version(finished, tracked, root, published=True)


def checkout_turn(settings: Settings, turn: int) -> DataVersion:
    """Bring back the turn's latest published folder from the DVC cache or the remote, byte for byte."""
    lineage = settings.model.registry_name
    with Store.open(settings.path("store")) as store:
        recorded = store.data_version(lineage, turn)
    if recorded is None:
        hint = f"`flywheel publish --turn {turn}`"
        raise FlywheelError(f"turn {turn} of {lineage} has no published data version ({hint} makes one)")
    md5, dvc_file, text = recorded
    tracked = dvc.restore(settings.root, settings.root / dvc_file, text)
    if tracked.md5 != md5:
        raise FlywheelError(f"{dvc_file} restored as {tracked.md5}, but turn {turn} was recorded as {md5}")
    return DataVersion(turn, md5, dvc_file, len(tracked.files), tracked.size, dvc.remote_url(settings.root), False)


def version_note(settings: Settings, turn: int) -> str:
    """The summary's line about the turn's data version, from the store (runs no DVC command)."""
    with Store.open(settings.path("store")) as store:
        recorded = store.data_version(settings.model.registry_name, turn)
    if recorded is None:
        return f"Data version: not published (`flywheel publish --turn {turn}` after `dvc repro`)"
    md5, dvc_file, _ = recorded
    return f"Data version: {md5} ({dvc_file}); restore it with `flywheel checkout --turn {turn}`"


def _version(finished: FinishedTurn, tracked: dvc.Tracked, root: Path, published: bool) -> DataVersion:
    dvc_file = str(tracked.dvc_file.relative_to(root))
    remote = dvc.remote_url(root)
    return DataVersion(finished.turn, tracked.md5, dvc_file, len(tracked.files), tracked.size, remote, published)


def _snapshot(finished: FinishedTurn, folder: Path) -> None:
    """The turn's folder, built beside its place and swapped in whole: tables, records, params, dataset."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        (staging / "tables").mkdir()
        for name, frame in finished.tables.items():
            frame.to_parquet(staging / "tables" / f"{name}.parquet", index=False)
        records = {name: {**vars(record)} for name, record in finished.records.items()}
        (staging / "stages.json").write_text(json.dumps(records, indent=2, sort_keys=True, default=str) + "\n")
        params = finished.settings.model_dump(mode="json")
        (staging / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        write_dataset(finished, staging / DATASET_FOLDER)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tag(finished: FinishedTurn, tracked: dvc.Tracked, dvc_file: str) -> None:
    """The candidate model version and the turn's MLflow run carry the data version they came from; the turn's run
    also gets the turn's model work (tokens, calls, cache hits, model-seconds), summed over its stages."""
    files = tracked.files
    tags = {
        "data.md5": tracked.md5,
        "data.turn": str(finished.turn),
        "data.dvc_file": dvc_file,
    }
    for config in ("sft", "dpo"):  # the training sets' own DVC hashes
        tags[f"data.{config}_md5"] = next(md5 for name, md5 in files.items() if name.startswith(f"dataset/{config}-"))
    finished.registry.tag_version(finished.candidate.version, tags)
    turn_run = RunHandle.of(finished.records["promote"].run_id)
    turn_run.set_tags(tags)
    usage = total_usage(record.summary for record in finished.records.values())
    turn_run.log_metrics({f"turn_llm_{key}": value for key, value in usage.items()})
    turn_run.log_artifact(finished.folder() / DATASET_FOLDER / CARD_FILE, "dataset")
