"""Retraining: TRL SFT on the kept annotations (and any human titles replayed here), then DPO rounds on the preference
pairs (dual-clip reward, reference update and policy regeneration each round, optional weak-to-strong extrapolation:
tasks/retrain/dpo.py), starting from the turn's model as the `refine` stage left it (refined on the turn's human
titles, or the champion where refinement is off). The result is logged to MLflow and registered as the next
`flywheel-policy` version with the alias `candidate`; with nothing to train, the candidate is that starting model
itself. Promotion is a separate, explicit gate (`tasks/promote/promote.py`).

Human titles replayed here (`human_items_per_turn`, 0 by default since `refine` trains them) are ordered by
`human_order` (after / before / mixed); each SFT phase gets a share of `max_steps` proportional to its size.
Retrieval feedback (the rewrite stage's rewriting and selection targets, when it collects them) is a phase of its
own before the caption phases, one pass over its targets, so it adds steps instead of taking the captions'. A model
registered for this batch is reused, so a retried stage never trains or registers twice.

Input: `denoised` (kept rows), `items` (human split, this turn's window), `preference_pairs` (kept rows),
`rewrite_feedback`.
Output columns (`training_examples`): item_id (a benchmark query id for feedback rows), kind, candidate, phase (DPO
rounds follow the SFT phases), target.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
import torch

from stores.registry import CANDIDATE, WEIGHTS, ModelRef, sha256_file
from stores.schema import Column, TableSpec
from tasks.config import Retrain, Sft
from tasks.prompts import prompt_messages
from tasks.retrain.fit import fit
from tasks.retrain.regenerate import policy_refresher
from tasks.rewrite.feedback import FEEDBACK_KINDS, feedback_targets, strategy_number, target_prompts
from tasks.stage import StageContext, StageDef, StageOutput

DPO_PAIRS = "dpo_pairs.jsonl"  # saved with the model: what its DPO rounds trained on
TRAINING_EXAMPLES = TableSpec(
    "training_examples",
    (
        Column("item_id", "VARCHAR", min_length=1),
        Column("kind", "VARCHAR", min_length=1),  # sft-synthetic, sft-human, sft-rewrite, sft-select, dpo
        Column("candidate", "INTEGER", min_value=0),
        Column("phase", "INTEGER", min_value=0),
        Column("target", "VARCHAR", min_length=1),
    ),
    key=("kind", "item_id", "candidate"),
)


def sft_phases(
    synthetic: pd.DataFrame, human: pd.DataFrame, cfg: Sft, seed: int, feedback: pd.DataFrame | None = None
) -> list[pd.DataFrame]:
    """Training phases in order (empty ones left out): retrieval feedback first, then the caption phases. `mixed`
    with a `human_share` resamples the human rows (seeded) so that they make that share of the mixed set."""
    if cfg.human_order == "mixed":
        if cfg.human_share is not None and len(human) and len(synthetic):
            wanted = round(len(synthetic) * cfg.human_share / max(1e-9, 1.0 - cfg.human_share))
            human = human.sample(n=wanted, replace=wanted > len(human), random_state=seed)
        phases = [pd.concat([synthetic, human], ignore_index=True)]
    else:
        phases = [synthetic, human] if cfg.human_order == "after" else [human, synthetic]
    phases = [feedback if feedback is not None else synthetic.iloc[0:0], *phases]
    return [phase.reset_index(drop=True) for phase in phases if len(phase)]


def phase_steps(phases: list[pd.DataFrame], cfg: Sft) -> list[int]:
    """Steps per phase: a feedback phase one pass over its rows; the caption phases share `max_steps`, in
    proportion to size, or `human_share` of them for the human phase."""
    feedback = [bool(p["kind"].isin(FEEDBACK_KINDS).all()) for p in phases]
    captions = [p for p, is_feedback in zip(phases, feedback) if not is_feedback]
    if cfg.human_share is None or len(captions) < 2:
        total = sum(len(p) for p in captions)
        steps = iter([max(1, round(cfg.max_steps * len(p) / total)) for p in captions])
    else:
        human_steps = max(1, round(cfg.max_steps * cfg.human_share))
        other_steps = max(1, cfg.max_steps - human_steps)
        steps = iter([human_steps if (p["kind"] == "sft-human").all() else other_steps for p in captions])
    one_pass = cfg.batch_size * cfg.gradient_accumulation
    return [-(-len(p) // one_pass) if is_feedback else next(steps) for p, is_feedback in zip(phases, feedback)]


def _trainer_args(config_cls, out: Path, steps: int, phase, cfg: Retrain, seed: int, **extra):
    """TRL config for one phase (`phase` is the Sft or Dpo section)."""
    return config_cls(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=phase.batch_size,
        gradient_accumulation_steps=phase.gradient_accumulation,
        learning_rate=phase.learning_rate,
        seed=seed,
        data_seed=seed,
        max_length=cfg.max_length,
        bf16=cfg.bf16,
        activation_checkpointing=cfg.activation_checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        lr_scheduler_type="constant",
        **extra,
    )


def dpo_round_args(out: Path, cfg: Retrain, seed: int):
    """`make_args(round, steps, **extra)` for `train_dpo`: each DPO round's TRL config (`bench/dpo.py` trains with
    the same)."""
    from trl import DPOConfig

    def make_args(number: int, steps: int, **extra):
        return _trainer_args(DPOConfig, out / f"dpo-{number}", steps, cfg.dpo, cfg, seed, beta=cfg.dpo.beta, **extra)

    return make_args


def sft_trainer(model, tokenizer, phase: pd.DataFrame, steps: int, cfg: Retrain, seed: int, out: Path, tailr):
    """TRL's SFT trainer for one phase (prompt, target, kind rows); TaiLr-weighted where the phase holds synthetic
    annotations and γ > 0. `bench/training.py` times the same trainer."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list(
        [
            {"prompt": p, "completion": [{"role": "assistant", "content": t}]}
            for p, t in zip(phase["prompt"], phase["target"])
        ]
    )
    args = _trainer_args(SFTConfig, out, steps, cfg.sft, cfg, seed)
    gamma, min_weight = tailr
    if gamma > 0 and (phase["kind"] == "sft-synthetic").any():
        from tasks.retrain.tailr_trainer import TaiLrSFTTrainer

        return TaiLrSFTTrainer(
            model=model,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            gamma=gamma,
            min_weight=min_weight,
        )
    return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)


def train(
    start_path: Path,
    phases: list[pd.DataFrame],
    pairs: pd.DataFrame,
    cfg: Retrain,
    seed: int,
    out: Path,
    tailr: tuple[float, float] = (0.0, 0.0),
    refresh=None,
):
    """SFT phases then DPO rounds (tasks/retrain/dpo.py); saves the model to `out`. Returns (per-step losses
    {name: [loss, ...]}, the DPO pairs trained on with their round). `tailr` = (γ, min_weight) for phases with
    synthetic annotations; γ = 0 trains them with plain MLE. `refresh(round, model, tokenizer, pairs)` may replace
    a later round's pairs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.retrain.dpo import train_dpo

    tokenizer = AutoTokenizer.from_pretrained(start_path)
    model = AutoModelForCausalLM.from_pretrained(start_path)
    losses: dict[str, list[float]] = {}
    for number, (phase, steps) in enumerate(zip(phases, phase_steps(phases, cfg.sft))):
        trainer = sft_trainer(model, tokenizer, phase, steps, cfg, seed, out / f"sft-{number}", tailr)
        model = fit(trainer)
        losses[f"sft_loss_phase{number}"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    trained_pairs = pairs.iloc[0:0].assign(round=0)
    if len(pairs) and cfg.dpo.max_steps:
        round_refresh = (lambda number, policy, chunk: refresh(number, policy, tokenizer, chunk)) if refresh else None
        make_args = dpo_round_args(out, cfg, seed)
        model, dpo_losses, trained_pairs = train_dpo(model, tokenizer, pairs, cfg.dpo, make_args, round_refresh)
        losses.update(dpo_losses)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return losses, trained_pairs


def feedback_data(ctx: StageContext) -> pd.DataFrame:
    """The rewriting and selection targets of the rewrite stage's retrieval feedback, with their prompts."""
    cfg = ctx.settings.rewrite
    feedback = ctx.read("rewrite", "rewrite_feedback") if "rewrite" in ctx.upstream else pd.DataFrame()
    if feedback.empty:
        return pd.DataFrame(columns=["item_id", "candidate", "target", "kind", "prompt"])
    targets = feedback_targets(feedback, cfg.feedback)
    rows = pd.DataFrame(
        {
            "item_id": targets["query_id"],
            "candidate": [strategy_number(s) for s in targets["strategy"]],
            "target": targets["target"],
            "kind": targets["kind"],
        }
    )
    names, chars = list(cfg.strategies), cfg.max_query_chars
    return rows.assign(prompt=target_prompts(rows["item_id"], rows["kind"], rows["candidate"], names, chars))


def training_data(ctx: StageContext) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(synthetic SFT rows, human SFT rows, DPO pairs), each with its prompt."""
    settings = ctx.settings
    items = ctx.prompt_items().set_index("item_id")
    denoised = ctx.read("denoise", "denoised")
    kept = denoised["kept"] & settings.retrain.sft.synthetic
    synthetic = denoised[kept][["item_id", "candidate", "caption"]].rename(columns={"caption": "target"})
    synthetic = synthetic.assign(kind="sft-synthetic")
    human_items = ctx.turn_slice("human", settings.retrain.sft.human_items_per_turn)
    human = pd.DataFrame(
        {
            "item_id": human_items["item_id"],
            "candidate": 0,
            "target": human_items["reference"],
            "kind": "sft-human",
        }
    )
    pairs = ctx.read("preference", "preference_pairs")
    pairs = pairs[pairs["kept"]].reset_index(drop=True)
    for frame in (synthetic, human, pairs):
        frame["prompt"] = [prompt_messages(items.loc[i].to_dict(), settings.task) for i in frame["item_id"]]
    return synthetic.reset_index(drop=True), human, pairs


def train_and_register(ctx: StageContext, start: ModelRef, fit_into, role: str) -> ModelRef:
    """The model `fit_into(staging)` trains from `start` (it returns per-step losses {name: [loss, ...]} and saves
    the model to staging/model), logged to MLflow and registered with this batch's id; a version already
    registered for this batch is returned without training (a retried stage never trains twice)."""
    found = ctx.registry.find(batch_id=ctx.batch_id)
    if found is not None:
        return found
    staging = Path(tempfile.mkdtemp(prefix=".train-", dir=ctx.settings.path("models")))
    try:
        for name, values in fit_into(staging).items():
            for step, value in enumerate(values, start=1):
                ctx.mlrun.log_metrics({name: value}, step=step)
        source = ctx.mlrun.log_artifacts(staging / "model", "model")
        tags = {"batch_id": ctx.batch_id, "turn": str(ctx.turn), "parent_version": str(start.version), "role": role}
        return ctx.registry.register(source, ctx.mlrun.run_id, sha256_file(staging / "model" / WEIGHTS), tags)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run(ctx: StageContext) -> StageOutput:
    cfg = ctx.settings.retrain
    synthetic, human, pairs = training_data(ctx)
    feedback = feedback_data(ctx)
    phases = sft_phases(synthetic, human, cfg.sft, ctx.settings.seed, feedback) if cfg.sft.max_steps else []
    noise_control = ctx.upstream_summary("denoise")
    start = ctx.turn_model

    def fit_into(staging: Path) -> dict[str, list[float]]:
        tailr = (noise_control.get("gamma", 0.0), noise_control.get("min_weight", 0.0))  # none if skipped
        refresh = policy_refresher(ctx, staging) if cfg.dpo.regenerate else None
        losses, trained = train(start.path, phases, pairs, cfg, ctx.settings.seed, staging, tailr, refresh)
        trained.drop(columns="prompt").to_json(staging / "model" / DPO_PAIRS, orient="records", lines=True)
        return losses

    trains = bool(phases) or bool(len(pairs) and cfg.dpo.max_steps)
    candidate = train_and_register(ctx, start, fit_into, "candidate") if trains else start
    ctx.registry.set_alias(CANDIDATE, candidate.version)
    trained_pairs = (
        pd.read_json(candidate.path / DPO_PAIRS, orient="records", lines=True, dtype={"item_id": str})
        if trains
        else pairs.iloc[0:0].assign(round=0)
    )
    dpo_rows = pd.DataFrame(
        {
            "item_id": trained_pairs.get("item_id", pd.Series(dtype=str)),
            "kind": "dpo",
            "candidate": 0,
            "phase": len(phases) + trained_pairs.get("round", pd.Series(dtype=int)),
            "target": trained_pairs.get("chosen", pd.Series(dtype=str)),
        }
    )
    examples = pd.concat(
        [phase.assign(phase=number) for number, phase in enumerate(phases)] + [dpo_rows], ignore_index=True
    )
    metrics = {
        "sft_synthetic": len(synthetic),
        "sft_human": len(human),
        "sft_rewrite": int((feedback["kind"] == "sft-rewrite").sum()),
        "sft_select": int((feedback["kind"] == "sft-select").sum()),
        "dpo_pairs": len(pairs),
        "dpo_pairs_trained": len(trained_pairs),
        "dpo_pairs_corrected": int(trained_pairs["corrected"].sum()) if len(trained_pairs) else 0,
        "tailr_gamma": noise_control.get("gamma", 0.0),
    }
    summary = {"candidate_version": candidate.version, "candidate_fingerprint": candidate.fingerprint}
    return StageOutput(
        {"training_examples": examples[list(TRAINING_EXAMPLES.column_names)]},
        rows_in=len(synthetic) + len(human) + len(feedback) + len(pairs),
        metrics=metrics,
        summary=summary,
    )


STAGE = StageDef(
    name="retrain",
    outputs=(TRAINING_EXAMPLES,),
    upstream=("ingest", "context", "refine", "denoise", "preference", "rewrite"),
    sections=("data", "task", "retrain"),
    run=run,
    registers_models=True,
)
