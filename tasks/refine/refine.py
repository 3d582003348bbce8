"""Human refinement first: the turn's model is fine-tuned on the turn's window of human-split titles before it
annotates anything, and the refined model is what annotates, scores the annotations and starts retraining. This is
the order of the Video DataFlywheel pipeline (the model refined on human data produces the synthetic data), and it
is what keeps the flywheel from training on worse data than the human titles it already has: in turn 1 the packaged
model's best-of-8 captions scored ROUGE-L 0.140 against the train items' human titles, the same model refined on 32
human titles 0.250 (256 items, /tmp lab probe of this session; the turn's `quality_*` metrics measure it every turn).

With refinement off (`skip: [refine]` or `max_steps: 0`) the turn's starting model does all of it, as before.

Input: `items` (human split, this turn's window of `refine.items_per_turn`).
Output columns (`refinement_examples`): item_id, target (the human titles the refined model trained on).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stores.schema import Column, TableSpec
from tasks.config import Retrain, Settings, Sft
from tasks.prompts import prompt_messages
from tasks.retrain.retrain import train, train_and_register
from tasks.stage import StageContext, StageDef, StageOutput

REFINEMENT_EXAMPLES = TableSpec(
    "refinement_examples",
    (Column("item_id", "VARCHAR", min_length=1), Column("target", "VARCHAR", min_length=1)),
    key=("item_id",),
)


def refine_config(settings: Settings) -> Retrain:
    """The retrain section with refinement's SFT settings: one phase of human titles, no DPO."""
    refine = settings.refine
    sft = Sft(
        max_steps=refine.max_steps,
        batch_size=refine.batch_size,
        gradient_accumulation=refine.gradient_accumulation,
        learning_rate=refine.learning_rate,
        synthetic=False,
        human_items_per_turn=refine.items_per_turn,
    )
    no_dpo = settings.retrain.dpo.model_copy(update={"max_steps": 0})
    return settings.retrain.model_copy(update={"sft": sft, "dpo": no_dpo})


def run(ctx: StageContext) -> StageOutput:
    settings = ctx.settings
    human = ctx.turn_slice("human", settings.refine.items_per_turn)
    examples = pd.DataFrame({"item_id": human["item_id"], "target": human["reference"]})
    if human.empty or settings.refine.max_steps == 0:
        return StageOutput({"refinement_examples": examples}, rows_in=len(human), metrics={"examples": 0})
    phase = examples.assign(
        kind="sft-human",
        prompt=[prompt_messages(item, settings.task) for item in human.to_dict("records")],
    )

    def fit_into(staging: Path) -> dict[str, list[float]]:
        config = refine_config(settings)
        return train(ctx.start_model.path, [phase], pd.DataFrame(), config, settings.seed, staging)[0]

    refined = train_and_register(ctx, ctx.start_model, fit_into, "refined")
    metrics = {"examples": len(examples), "steps": settings.refine.max_steps}
    return StageOutput(
        {"refinement_examples": examples},
        rows_in=len(human),
        metrics=metrics,
        summary={"refined_version": refined.version, "refined_fingerprint": refined.fingerprint},
    )


STAGE = StageDef(
    name="refine",
    outputs=(REFINEMENT_EXAMPLES,),
    upstream=("ingest", "context"),
    sections=("data", "task", "refine", "retrain"),
    run=run,
    registers_models=True,
)
