"""TSO's iterative reference update, data side: before a DPO round after the first, the policy's cells of the model
matrix (the cells that resolved to the turn's starting model) are answered again by the policy as it is now, and
the round's pairs are relabelled with the same steps 3–4 as the preference stage (`collect_pairs`).

The round's policy is saved and addressed by the sha256 of its weights, so its generations go through the LLM-call
cache like any model's: a retried retrain stage regenerates nothing it already generated.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stores.registry import WEIGHTS, ModelRef, sha256_file
from tasks.preference.generate_responses import Generator, generate_responses, resolve_matrix
from tasks.preference.label_pairs import read_labels
from tasks.preference.preference import collect_pairs, make_scorer, model_roles
from tasks.prompts import prompt_messages
from tasks.stage import StageContext

STORED_RESPONSE_COLUMNS = ["item_id", "generator", "generator_version", "response_idx", "text"]


def policy_refresher(ctx: StageContext, staging: Path):
    """refresh(round, model, tokenizer, pairs) -> the round's pairs relabelled with fresh policy responses."""
    settings, cfg = ctx.settings, ctx.settings.preference
    start = ctx.start_model
    items = ctx.prompt_items().set_index("item_id", drop=False)
    stored = ctx.read("preference", "preference_responses")[STORED_RESPONSE_COLUMNS]
    generators, _ = resolve_matrix(cfg.matrix, model_roles(ctx), ctx.registry.get, cfg.max_new_tokens)
    policy_cells = [g for g in generators if g.model.version == start.version]
    scorer = make_scorer(settings, ctx.registry.get, ctx.llm_factory)
    labels = read_labels(settings.path("labels"))

    def refresh(number: int, model, tokenizer, chunk: pd.DataFrame) -> pd.DataFrame:
        folder = staging / f"round-{number}"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        policy = ModelRef(f"{start.name}@round{number}", start.version, sha256_file(folder / WEIGHTS), folder)
        round_items = items.loc[list(chunk["item_id"])].reset_index(drop=True)
        others = stored[stored["item_id"].isin(chunk["item_id"]) & (stored["generator_version"] != start.version)]
        fresh = generate_responses(
            round_items,
            [Generator(policy, g.sampling, g.responses) for g in policy_cells],
            ctx.llm_factory,
            settings.task,
            settings.seed,
        )
        _, pairs, _ = collect_pairs(
            pd.concat([others, fresh], ignore_index=True),
            round_items,
            settings.task,
            cfg,
            scorer,
            labels,
            settings.seed,
        )
        pairs = pairs[pairs["kept"]].reset_index(drop=True)
        prompts = [prompt_messages(items.loc[i].to_dict(), settings.task) for i in pairs["item_id"]]
        return pairs.assign(prompt=prompts)

    return refresh
