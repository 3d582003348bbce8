"""Prompt templates, kept in one place: the caption task (annotate, preference, evaluate and the SFT/DPO data all
use the same prompt, so what the model is trained on is exactly what it is scored on).
"""

from __future__ import annotations

from tasks.llm.backend import Messages

CAPTION_SYSTEM = "You write short, precise titles for bookmarked documents."
CAPTION_INSTRUCTION = "Write a one-line title for this document. Answer with the title only."


def clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def caption_messages(item: dict, max_signal_chars: int) -> Messages:
    """The annotator reads every signal of an item: abstract, curator comment, tags."""
    signals = []
    if item.get("abstract"):
        signals.append(f"Abstract: {clip(item['abstract'], max_signal_chars)}")
    if item.get("comment"):
        signals.append(f"Curator comment: {clip(item['comment'], max_signal_chars)}")
    tags = list(item.get("tags") if item.get("tags") is not None else [])
    if tags:
        signals.append(f"Tags: {', '.join(tags)}")
    return [
        {"role": "system", "content": CAPTION_SYSTEM},
        {"role": "user", "content": "\n".join(signals) + f"\n\n{CAPTION_INSTRUCTION}"},
    ]


def first_line(text: str) -> str:
    """A caption is one line: the first non-empty line of the completion."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
