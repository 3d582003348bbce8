"""Runs one stage of one turn: the single function the Prefect task, the CLI and `dvc repro` all call.

A stage's batch id hashes its name, the config sections it reads, the turn and the turn's starting model, and its
upstream batch ids; so it changes exactly when its inputs, params or model change. A stage that registers models
also hashes the model lineage (the registered model name), so two lineages (experiment arms) never share a
candidate, while the stages before it are shared wherever their inputs are equal. A stage in `skip` records empty
tables. A batch already recorded in `stage_runs` is not recomputed (a rerun costs no model call and inserts
nothing). Otherwise the stage runs, its tables are validated (failures quarantined with reasons), stamped with
lineage and committed with the stage-run record in one transaction, logged as a child MLflow run of the turn, and
exported to Parquet for DVC.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import pandas as pd

from stores import tracking
from stores.errors import disk_failure
from stores.llm_cache import LLMCallCache
from stores.registry import BaseModel, ModelRef, Registry, base_model
from stores.store import Lineage, StageRunRecord, Store
from tasks.annotate import STAGE as ANNOTATE
from tasks.config import Settings
from tasks.context import STAGE as CONTEXT
from tasks.denoise import STAGE as DENOISE
from tasks.errors import FlywheelError, StoreError
from tasks.evaluate import STAGE as EVALUATE
from tasks.ingest import STAGE as INGEST
from tasks.llm.backend import SAMPLER_REVISION
from tasks.llm.cached import CachedLLM, Usage
from tasks.preference import STAGE as PREFERENCE
from tasks.promote import STAGE as PROMOTE
from tasks.rag_eval import STAGE as RAG_EVAL
from tasks.refine import STAGE as REFINE
from tasks.retrain import STAGE as RETRAIN
from tasks.rewrite import STAGE as REWRITE
from tasks.stage import StageContext, StageDef, StageOutput
from tasks.validate import validate

STAGES: dict[str, StageDef] = {
    s.name: s
    for s in (INGEST, CONTEXT, REFINE, ANNOTATE, DENOISE, PREFERENCE, REWRITE, RETRAIN, EVALUATE, RAG_EVAL, PROMOTE)
}


def stages_before(name: str) -> list[str]:
    """The stages a turn runs before `name`, in order: what running one stage by hand needs first."""
    order = list(STAGES)
    return order[: order.index(name)]


class StageOrderError(FlywheelError):
    """A stage was asked for before the upstream stage it reads."""


@dataclass
class StageResult:
    stage: str
    turn: int
    batch_id: str
    rows_in: int
    rows_out: int
    quarantined: int
    seconds: float
    cached: bool
    llm_calls: int = 0
    metrics: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    def line(self) -> str:
        """What a person reads when the stage finishes: the flywheel's one line per stage."""
        if self.summary.get("skipped"):
            state = "skipped"
        elif self.cached:
            state = "cached"
        else:
            state = f"{self.seconds:.1f} s, {self.llm_calls} LLM calls"
        quarantined = f", {self.quarantined} quarantined" if self.quarantined else ""
        return f"{self.stage:<10} turn {self.turn}: {self.rows_in} in, {self.rows_out} out{quarantined} [{state}]"


@lru_cache(maxsize=2)
def _transformers_backend(path: str, batch_size: int, threads: int | None, dtype: str):
    from tasks.llm.transformers_backend import TransformersBackend

    return TransformersBackend(path, batch_size=batch_size, threads=threads, dtype=dtype)


def _backend(settings: Settings, ref: ModelRef):
    if settings.model.backend == "vllm":
        from tasks.llm.vllm_server import vllm_backend

        return vllm_backend(ref, settings)
    model = settings.model
    return _transformers_backend(str(ref.path), model.batch_size, model.threads, model.dtype)


def engine_name(settings: Settings) -> str:
    """What answers model calls, as the LLM-call cache keys it: engines (and precisions) sample differently."""
    model = settings.model
    return model.backend if model.backend == "vllm" else f"{model.backend}-{model.dtype}-s{SAMPLER_REVISION}"


def cached_llm(settings: Settings, store: Store, model: ModelRef) -> CachedLLM:
    """A cached client for `model`; its weights load (or its server starts) only if a call misses the cache."""
    return CachedLLM(
        lambda ref: _backend(settings, ref),
        LLMCallCache(store.con),
        model,
        progress={"1": True, "0": False}.get(os.environ.get("FLYWHEEL_PROGRESS", "")),  # unset: on a terminal
        engine=engine_name(settings),
    )


def batch_ids(settings: Settings, turn: int, start_model: ModelRef | None) -> dict[str, str]:
    """The batch id of every stage of a turn."""
    ids: dict[str, str] = {}

    def visit(name: str) -> str:
        if name not in ids:
            spec = STAGES[name]
            payload = {
                "stage": name,
                "params": settings.section_hash(*spec.sections),
                "upstream": {up: visit(up) for up in spec.upstream},
                "turn": turn if spec.per_turn_in(settings) else None,
                "model": start_model.fingerprint if spec.per_turn_in(settings) and start_model else None,
                "input": spec.input_fingerprint(settings) if spec.input_fingerprint else None,
            }
            if spec.registers_models:
                payload["lineage"] = settings.model.registry_name
            if name in settings.skip:
                payload["skipped"] = True
            ids[name] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
        return ids[name]

    for name in STAGES:
        visit(name)
    return ids


def turn_start_model(store: Store, registry: Registry, settings: Settings, turn: int) -> ModelRef:
    """The champion when the turn first started (recorded, so the turn stays reproducible after a promotion)."""
    version = store.turn_start_version(registry.name, turn)
    if version is not None:
        return registry.get(version)
    champion = registry.ensure_base(base_of(settings))
    store.record_turn_start(registry.name, turn, champion.version)
    return champion


def left_turns(settings: Settings) -> list[int]:
    """Turns of this lineage that finished with other params: before the next turn, any turn not finished with
    these params; and the next turn itself when it started but the lineage's champion has left its start model
    (another run of it promoted). Going on would mix two recipes in one lineage."""
    upcoming = next_turn(settings)
    experiment_id = tracking.configure(settings.path("mlflow"), settings.experiment)
    registry = Registry(settings.model.registry_name, experiment_id, settings.path("models"))
    left = []
    with Store.open(settings.path("store")) as store:
        for turn in range(1, upcoming + 1):
            version = store.turn_start_version(registry.name, turn)
            if version is None:
                continue
            ids = batch_ids(settings, turn, registry.get(version))
            if turn < upcoming and store.stage_run(ids["promote"]) is None:
                left.append(turn)
            elif turn == upcoming and (champion := registry.champion().version) != version:
                retrained = store.stage_run(ids["retrain"])  # promoted, then interrupted: our candidate
                if retrained is None or retrained.summary.get("candidate_version") != champion:
                    left.append(turn)
    return left


def next_turn(settings: Settings) -> int:
    """The turn to run next in this lineage: the last started one while it is unfinished with these params (its
    promote batch is not recorded), else the one after it."""
    experiment_id = tracking.configure(settings.path("mlflow"), settings.experiment)
    with Store.open(settings.path("store")) as store:
        last = store.last_turn(settings.model.registry_name)
        if last is None:
            return 1
        registry = Registry(settings.model.registry_name, experiment_id, settings.path("models"))
        start = registry.get(store.turn_start_version(registry.name, last))
        finished = store.stage_run(batch_ids(settings, last, start)["promote"]) is not None
    return last + 1 if finished else last


def run_stage(name: str, settings: Settings, turn: int, tags: dict[str, str] | None = None) -> StageResult:
    """Run one stage of one turn (or find it finished). A full or read-only disk is one clear error that names what
    could not be written; the stage's batch was not recorded, so the rerun after fixing the disk redoes it."""
    try:
        return _run_stage(name, settings, turn, tags)
    except FlywheelError:
        raise
    except Exception as error:
        failure = disk_failure(error)
        if failure is None:
            raise
        raise StoreError(
            f"stage {name}: cannot write under {settings.root} (disk full or read-only?): {failure}"
        ) from error


def _run_stage(name: str, settings: Settings, turn: int, tags: dict[str, str] | None) -> StageResult:
    if name not in STAGES:
        raise FlywheelError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    stage = STAGES[name]
    experiment_id = tracking.configure(settings.path("mlflow"), settings.experiment)
    with Store.open(settings.path("store")) as store:
        registry = Registry(settings.model.registry_name, experiment_id, settings.path("models"))
        start_model = turn_start_model(store, registry, settings, turn) if stage.per_turn_in(settings) else None
        ids = batch_ids(settings, turn, start_model)
        record, calls = store.stage_run(ids[name]), None
        if record is None:
            missing = [up for up in stage.upstream if store.stage_run(ids[up]) is None]
            if missing:
                raise StageOrderError(
                    f"stage {name} of turn {turn} needs {', '.join(missing)} first "
                    f"(run `flywheel stage {missing[0]} --turn {turn}`, or the whole turn with `flywheel run`)"
                )
            run = _Run(stage, settings, store, registry, turn, ids, start_model, experiment_id, tags or {})
            record, calls = run.execute()
        _export(store, stage, record, settings)
    return _result(record, turn, calls)


def _result(record: StageRunRecord, turn: int, calls: int | None) -> StageResult:
    """calls is None when the batch was already in the store (nothing ran)."""
    return StageResult(
        record.stage,
        turn,
        record.batch_id,
        record.rows_in,
        record.rows_out,
        record.quarantined,
        record.seconds,
        cached=calls is None,
        llm_calls=calls or 0,
        metrics=record.summary.get("metrics", {}),
        summary=record.summary,
    )


def base_of(settings: Settings) -> BaseModel:
    """The lineage's base model (`model.base`, else the packaged GGUF) as an HF folder in the models cache."""
    model = settings.model
    return base_model(settings.base_model_path(), model.gguf_package, model.gguf_file, settings.path("models"))


def register_base_model(settings: Settings) -> ModelRef:
    experiment_id = tracking.configure(settings.path("mlflow"), settings.experiment)
    registry = Registry(settings.model.registry_name, experiment_id, settings.path("models"))
    return registry.ensure_base(base_of(settings))


def recorded_turn(settings: Settings, turn: int) -> list[dict]:
    """The stage results of a finished turn, read from the store (runs nothing)."""
    experiment_id = tracking.configure(settings.path("mlflow"), settings.experiment)
    with Store.open(settings.path("store")) as store:
        version = store.turn_start_version(settings.model.registry_name, turn)
        if version is None:
            raise FlywheelError(f"turn {turn} has not started in {settings.path('store')}")
        start_model = Registry(settings.model.registry_name, experiment_id, settings.path("models")).get(version)
        ids = batch_ids(settings, turn, start_model)
        records = {name: store.stage_run(batch_id) for name, batch_id in ids.items()}
    missing = [name for name in STAGES if records.get(name) is None]
    if missing:
        raise FlywheelError(f"turn {turn} is not finished with these params: {', '.join(missing)} not recorded")
    return [asdict(_result(records[name], turn, None)) for name in STAGES]


@dataclass
class _Run:
    """One execution of a stage batch that is not in the store yet."""

    stage: StageDef
    settings: Settings
    store: Store
    registry: Registry
    turn: int
    ids: dict[str, str]
    start_model: ModelRef | None
    experiment_id: str
    tags: dict[str, str]
    clients: list[CachedLLM] = field(default_factory=list)

    def llm(self, model: ModelRef) -> CachedLLM:
        client = cached_llm(self.settings, self.store, model)
        self.clients.append(client)
        return client

    def execute(self) -> tuple[StageRunRecord, int]:
        name, batch_id = self.stage.name, self.ids[self.stage.name]
        parent = tracking.turn_run(
            self.experiment_id, f"turn-{self.turn}", self.turn, {"flywheel.turn": str(self.turn)}
        )
        params_hash = self.settings.section_hash(*self.stage.sections)
        run_tags = {"flywheel.batch_id": batch_id, "flywheel.turn": str(self.turn), **self.tags}
        with tracking.stage_run(self.experiment_id, parent, name, run_tags) as mlrun:
            ctx = StageContext(
                settings=self.settings,
                store=self.store,
                turn=self.turn,
                batch_id=batch_id,
                upstream={up: self.ids[up] for up in self.stage.upstream},
                start_model=self.start_model,
                registry=self.registry,
                mlrun=mlrun,
                turn_run=tracking.RunHandle.of(parent),
                llm_factory=self.llm,
                upstream_summary=lambda up: self.store.stage_run(self.ids[up]).summary,
            )
            started = time.perf_counter()
            skipped = name in self.settings.skip
            output: StageOutput = skipped_output(self.stage) if skipped else self.stage.run(ctx)
            seconds = time.perf_counter() - started
            model_label = self.start_model.label if self.start_model else "none"
            lineage = Lineage(name, model_label, parent, params_hash, batch_id)
            usage = sum((client.usage for client in self.clients), Usage())
            calls = usage.calls
            rows_out = quarantined = 0
            with self.store.transaction():
                for spec in self.stage.outputs:
                    accepted, rejects = validate(spec, output.tables[spec.name])
                    rejects = output.rejects.get(spec.name, []) + rejects
                    rows_out += self.store.insert(spec, accepted, lineage)
                    quarantined += self.store.quarantine(name, spec.name, batch_id, parent, rejects)
                record = StageRunRecord(
                    batch_id,
                    name,
                    self.turn if self.stage.per_turn_in(self.settings) else None,
                    model_label,
                    params_hash,
                    parent,
                    output.rows_in,
                    rows_out,
                    quarantined,
                    seconds,
                    {"metrics": output.metrics, "llm_calls": calls, "usage": asdict(usage), **output.summary},
                )
                self.store.record_stage_run(record)
            sections = self.settings.section_values(*self.stage.sections)
            mlrun.log_params({key: v for name, section in sections.items() for key, v in _flat(name, section).items()})
            counts = {"rows_in": output.rows_in, "rows_out": rows_out, "quarantined": quarantined}
            model_work = {f"llm_{name}": value for name, value in asdict(usage).items()}
            mlrun.log_metrics({**counts, "seconds": seconds, **model_work, **output.metrics})
        return record, calls


def skipped_output(stage: StageDef) -> StageOutput:
    """A switched-off stage: its tables exist and are empty, so what reads them proceeds without its data."""
    empty = {spec.name: pd.DataFrame({c.name: [] for c in spec.columns}) for spec in stage.outputs}
    return StageOutput(empty, rows_in=0, summary={"skipped": True})


def _flat(name: str, section) -> dict:
    """MLflow params of a config section (or of one field of it), as dotted names."""
    if not hasattr(section, "model_dump"):
        return {name: section}
    flat = {}
    for key, value in section.model_dump(mode="json").items():
        if isinstance(value, dict):
            flat |= {f"{name}.{key}.{k}": v for k, v in value.items()}
        else:
            flat[f"{name}.{key}"] = value
    return flat


def _export(store: Store, stage: StageDef, record: StageRunRecord, settings: Settings) -> None:
    """Parquet of each output table's batch, and the stage's metrics JSON: what DVC versions and compares."""
    for spec in stage.outputs:
        store.export_parquet(spec.name, record.batch_id, settings.path("exports") / f"{spec.name}.parquet")
    metrics_path = settings.path("metrics") / f"{stage.name}.json"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "turn": record.turn,
        "batch_id": record.batch_id,
        "rows_in": record.rows_in,
        "rows_out": record.rows_out,
        "quarantined": record.quarantined,
        **record.summary.get("metrics", {}),
    }
    tmp = metrics_path.with_name(f".{metrics_path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, metrics_path)
