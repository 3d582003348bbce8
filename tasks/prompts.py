"""The task's prompt, rendered in one place (annotate, noise scoring, preference, evaluate and the SFT/DPO data all
use it, so what the model is trained on is exactly what it is scored on); the templates live in `task` (params.yaml,
`Task` in tasks/config.py).
"""

from __future__ import annotations

import re

import pandas as pd

from tasks.config import Sampling, Task
from tasks.llm.backend import Generation, Messages
from tasks.stage import derive_seed


def clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def field_text(item: dict, field: str, limit: int, entry_limit: int | None = None, join: str = ", ") -> str:
    """An item field as prompt text: a string clipped to `limit` characters, a list's entries joined (each clipped to
    `entry_limit` when one is given); missing or empty: ""."""
    value = item.get(field)
    if value is None or isinstance(value, float):  # a missing field, or pandas' NaN for one
        return ""
    if isinstance(value, str):
        return clip(value, limit) if value else ""
    return join.join(str(entry) if entry_limit is None else clip(entry, entry_limit) for entry in value)


class _FieldTexts(dict):
    """A template's placeholder values: each item field's prompt text, rendered when the template names it."""

    def __init__(self, item: dict, limit: int):
        super().__init__()
        self.item, self.limit = item, limit

    def __missing__(self, name: str) -> str:
        return field_text(self.item, name, self.limit)


def prompt_messages(item: dict, task: Task) -> Messages:
    """The model reads every signal the task names, in order, each only when the item has it (retrieved context is
    the `context` column, tasks/context/context.py); the templates' `{field}` placeholders take the same text."""
    signals = []
    for signal in task.signals:
        text = field_text(item, signal.field, signal.clip or task.max_field_chars, signal.clip, signal.join)
        if text:
            signals.append(f"{signal.label}: {text}")
    fields = _FieldTexts(item, task.max_field_chars)
    return [
        {"role": "system", "content": task.system.format_map(fields)},
        {"role": "user", "content": "\n".join(signals) + f"\n\n{task.instruction.format_map(fields)}"},
    ]


def item_content(item: dict, task: Task) -> str:
    """The document an output is judged against: the first non-empty of the task's content fields."""
    for field in task.content:
        value = item.get(field)
        text = value if isinstance(value, str) else field_text(item, field, 10**9)
        if text:
            return text
    return ""


def first_line(text: str) -> str:
    """A caption is one line: the first non-empty line of the completion."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def task_output(text: str, task: Task) -> str:
    """The answer a completion gives under the task's output rule: its first line, or the first of the task's choices
    it names as a word of its own ("B", "(B)", "Answer: B."; case as written), "" when it names none."""
    if task.output == "line":
        return first_line(text)
    names = "|".join(re.escape(choice) for choice in sorted(task.choices, key=len, reverse=True))
    found = re.search(rf"(?<!\w)({names})(?!\w)", text)
    return found.group(1) if found else ""


def sample_captions(
    items: pd.DataFrame,
    llm,
    per_item: int,
    sampling: Sampling,
    task: Task,
    seed: int,
    purpose: str,
    whole: bool = False,
) -> list[tuple[dict, int, Generation]]:
    """`per_item` caption completions per item, each seeded by (seed, purpose, item, index): (item, index, gen).
    Under a one-line task each stops at its first line's end, which is all `task_output` reads; `whole` lets it
    run on (preference responses: their filter judges all of it)."""
    jobs = [(item, index) for item in items.to_dict("records") for index in range(per_item)]
    generations = llm.generate(
        [prompt_messages(item, task) for item, _ in jobs],
        sampling,
        [derive_seed(seed, purpose, item["item_id"], index) for item, index in jobs],
        desc=purpose,
        one_line=task.output == "line" and not whole,
    )
    return [(item, index, generation) for (item, index), generation in zip(jobs, generations)]
