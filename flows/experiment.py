"""`flywheel experiment FILE`: every arm of an experiment file runs the same turns of the same `flywheel` flow, from
the same base model, seed, items and held-out set, and the report compares them turn by turn.

An arm is data: params overrides merged onto the params file (`experiments/ablation.yaml`). Each arm is a model
lineage of its own (registered model `<registry_name>-<experiment>-<arm>`, MLflow experiment, exports), so arms
never see each other's models. All arms share the project's store: a stage whose inputs are equal across arms (the
items, the retrieved context, turn 1's annotation and preference data) is computed once, and every model call is
answered from the shared LLM-call cache, so an arm costs only what differs. Turns run turn-major (every arm's turn
1, then every arm's turn 2, ...), and a killed experiment resumes where it stopped: each arm continues from its
next unfinished turn.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.config import ConfigError, Settings, load_settings, merge_params

NAME = r"^[a-z0-9][a-z0-9_-]{0,39}$"


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME)
    turns: int = Field(3, ge=1, le=50)
    baseline: str = Field("human_only", pattern=NAME)  # the arm every other arm is compared with at each turn
    params: dict = {}  # overrides for every arm, under the arm's own
    arms: dict[str, dict] = Field(min_length=1)

    @model_validator(mode="after")
    def _arms_named_well(self) -> ExperimentSpec:
        bad = [arm for arm in self.arms if not re.fullmatch(NAME, arm)]
        if bad:
            raise ValueError(f"arm names must match {NAME}: {bad}")
        if self.baseline not in self.arms:
            raise ValueError(f"baseline {self.baseline!r} is not one of the arms {sorted(self.arms)}")
        return self


def load_spec(path: Path) -> ExperimentSpec:
    try:
        raw = yaml.safe_load(Path(path).read_text())
        return ExperimentSpec(**(raw or {}))
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: experiment file not found") from error
    except (yaml.YAMLError, TypeError) as error:
        raise ConfigError(f"{path}: not an experiment mapping: {error}") from error
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{path}: {problems}") from error


def arm_overrides(spec: ExperimentSpec, arm: str, base: Settings) -> dict:
    """The arm's params overrides, plus what makes it a lineage of its own."""
    folder = f"data/experiments/{spec.name}/{arm}"
    own = {
        "experiment": f"{base.experiment}-{spec.name}-{arm}",
        "model": {"registry_name": f"{base.model.registry_name}-{spec.name}-{arm}"},
        "paths": {"exports": f"{folder}/exports", "metrics": f"{folder}/metrics"},
    }
    return merge_params(merge_params(spec.params, spec.arms[arm]), own)


def arm_settings(params: Path, spec: ExperimentSpec) -> dict[str, tuple[dict, Settings]]:
    """Every arm's overrides and validated settings: a bad arm fails before any turn runs."""
    base = load_settings(params)
    arms = {}
    for arm in spec.arms:
        overrides = arm_overrides(spec, arm, base)
        try:
            arms[arm] = (overrides, load_settings(params, overrides))
        except ConfigError as error:
            raise ConfigError(f"arm {arm}: {error}") from error
    return arms


def run_experiment(params: Path, file: Path, run: bool = True, only: list[str] | None = None):
    """Run (or, with run=False, only report) the experiment, or only the arms named in `only`; returns the report,
    which covers every arm's finished turns."""
    from flows.experiment_report import write_report
    from flows.turn import flywheel
    from tasks.runner import left_turns, next_turn

    spec, params = load_spec(file), Path(params).resolve()
    unknown = sorted(set(only or []) - set(spec.arms))
    if unknown:
        raise ConfigError(f"{file}: no arm named {', '.join(unknown)}; arms: {', '.join(spec.arms)}")
    arms = arm_settings(params, spec)
    if run:
        for arm, (_, settings) in arms.items():
            changed = left_turns(settings) if not only or arm in only else []
            if changed:
                raise ConfigError(
                    f"{file}: arm {arm}: turn {changed[0]} of {settings.model.registry_name} finished with other "
                    f"params; going on would mix two recipes in one model lineage. Give the changed arm (or the "
                    f"experiment) a new name: a new lineage starts from the base model."
                )
        for turn in range(1, spec.turns + 1):
            for arm, (overrides, settings) in arms.items():
                if only and arm not in only:
                    continue
                missing = turn - (next_turn(settings) - 1)
                if missing > 0:
                    print(f"experiment {spec.name}: arm {arm}, turn {turn}", flush=True)
                    flywheel(turns=missing, params=str(params), overrides=overrides)
    return write_report(spec, {arm: settings for arm, (_, settings) in arms.items()})


def arm_turns(settings: Settings) -> list[dict]:
    """Each finished turn of an arm (none yet: empty): its stage results and its held-out scoreboard rows."""
    from stores.store import Store
    from tasks.runner import next_turn, recorded_turn

    finished = next_turn(settings) - 1
    turns = []
    recorded = [(t, {r["stage"]: r for r in recorded_turn(settings, t)}) for t in range(1, finished + 1)]
    with Store.open(settings.path("store")) as store:
        for turn, stages in recorded:
            board = store.read("scoreboard", stages["evaluate"]["batch_id"])
            turns.append({"turn": turn, "stages": stages, "scoreboard": board})
    return turns
