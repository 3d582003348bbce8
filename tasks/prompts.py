"""Prompt templates, kept in one place: the caption task (annotate, preference, evaluate and the SFT/DPO data all
use the same prompt, so what the model is trained on is exactly what it is scored on).
"""

from __future__ import annotations

import pandas as pd

from tasks.config import Sampling
from tasks.llm.backend import Generation, Messages
from tasks.stage import derive_seed

CAPTION_SYSTEM = "You write short, precise titles for bookmarked documents."
CAPTION_INSTRUCTION = "Write a one-line title for this document. Answer with the title only."


def clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def caption_messages(item: dict, max_signal_chars: int) -> Messages:
    """The annotator reads every signal of an item: abstract, curator comment, tags, and the titles of related
    documents when retrieved context is on (`context` column, tasks/context/context.py)."""
    signals = []
    if item.get("abstract"):
        signals.append(f"Abstract: {clip(item['abstract'], max_signal_chars)}")
    if item.get("comment"):
        signals.append(f"Curator comment: {clip(item['comment'], max_signal_chars)}")
    tags = list(item.get("tags") if item.get("tags") is not None else [])
    if tags:
        signals.append(f"Tags: {', '.join(tags)}")
    related = list(item.get("context") if item.get("context") is not None else [])
    if related:
        signals.append(f"Related bookmarks: {'; '.join(clip(title, 120) for title in related)}")
    return [
        {"role": "system", "content": CAPTION_SYSTEM},
        {"role": "user", "content": "\n".join(signals) + f"\n\n{CAPTION_INSTRUCTION}"},
    ]


def item_content(item: dict) -> str:
    """The document a caption is judged against: the abstract, else the curator comment."""
    return item.get("abstract") or item.get("comment") or ""


def first_line(text: str) -> str:
    """A caption is one line: the first non-empty line of the completion."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def sample_captions(
    items: pd.DataFrame, llm, per_item: int, sampling: Sampling, max_signal_chars: int, seed: int, purpose: str
) -> list[tuple[dict, int, Generation]]:
    """`per_item` caption completions per item, each seeded by (seed, purpose, item, index): (item, index, gen)."""
    jobs = [(item, index) for item in items.to_dict("records") for index in range(per_item)]
    generations = llm.generate(
        [caption_messages(item, max_signal_chars) for item, _ in jobs],
        sampling,
        [derive_seed(seed, purpose, item["item_id"], index) for item, index in jobs],
        desc=purpose,
    )
    return [(item, index, generation) for (item, index), generation in zip(jobs, generations)]
