"""Step 2 of the four-step collection: response generation from a pool of generators.

The pool is TSO's model matrix (several model versions × several sampling settings) and, equally, Iter-W2S-RLAIF's
response distribution set (responses from different models rather than one model at several temperatures). Matrix
cells name a model by role (champion = the turn's starting model, previous = the champion of the previous turn, base
= the packaged model) or by registered version; cells that resolve to the same model and sampling merge, and a role
that does not exist yet (no previous turn) is skipped and reported. TSO mixes human responses into the pool: items of
the human-refinement split bring their human title as one more response, generator "human".

Output columns: item_id, generator, generator_version (0 for human), response_idx, text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from stores.registry import ModelRef
from tasks.config import MatrixCell, Sampling, Task
from tasks.prompts import sample_captions

HUMAN = "human"


@dataclass(frozen=True)
class Generator:
    model: ModelRef
    sampling: Sampling
    responses: int

    @property
    def label(self) -> str:
        return f"{self.model.label} T{self.sampling.temperature:g} p{self.sampling.top_p:g}"


def resolve_matrix(
    cells: tuple[MatrixCell, ...],
    roles: dict[str, ModelRef | None],
    get_version: Callable[[int], ModelRef],
    max_new_tokens: int,
) -> tuple[list[Generator], list[str]]:
    """(generators, skipped cell descriptions). Cells resolving to one (model, sampling) merge, keeping the most
    responses."""
    merged: dict[tuple, Generator] = {}
    skipped = []
    for cell in cells:
        model = roles.get(cell.model) if not cell.model.isdigit() else get_version(int(cell.model))
        if model is None:
            skipped.append(f"{cell.model} T{cell.temperature:g}: no such model yet")
            continue
        sampling = Sampling(temperature=cell.temperature, top_p=cell.top_p, max_new_tokens=max_new_tokens)
        key = (model.version, cell.temperature, cell.top_p)
        if key not in merged or merged[key].responses < cell.responses:
            merged[key] = Generator(model, sampling, cell.responses)
    return sorted(merged.values(), key=lambda g: g.label), skipped


def generate_responses(
    items: pd.DataFrame,
    generators: list[Generator],
    client_for: Callable[[ModelRef], object],
    task: Task,
    seed: int,
) -> pd.DataFrame:
    """`responses` completions per item from every generator; seeds depend on (item, sampling, index), not the model,
    so two models answer with the same random stream and differ by what they learned."""
    frames = []
    for generator in generators:
        sampling = generator.sampling
        purpose = f"preference T{sampling.temperature:g} p{sampling.top_p:g}"  # the seed's part: not the model
        samples = sample_captions(
            items, client_for(generator.model), generator.responses, sampling, task, seed, purpose, whole=True
        )
        frames.append(
            pd.DataFrame(
                {
                    "item_id": [item["item_id"] for item, _, _ in samples],
                    "generator": generator.label,
                    "generator_version": generator.model.version,
                    "response_idx": [index for _, index, _ in samples],
                    "text": [g.text.strip() for _, _, g in samples],
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else empty_responses()


def human_responses(items: pd.DataFrame, task: Task) -> pd.DataFrame:
    """The human reference of every human-split item, as one more response in its pool."""
    human = items[items["split"] == "human"]
    return pd.DataFrame(
        {
            "item_id": human["item_id"],
            "generator": HUMAN,
            "generator_version": 0,
            "response_idx": 0,
            "text": human["reference"].str.strip(),
        }
    )


def empty_responses() -> pd.DataFrame:
    return pd.DataFrame(columns=["item_id", "generator", "generator_version", "response_idx", "text"])
