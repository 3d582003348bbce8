"""Step 1 of the four-step collection (arXiv 2406.16486): prompt generation.

Candidate prompts come from items through the caption template (tasks/prompts.py). Duplicates are removed twice:
exactly (the same rendered prompt) and by meaning (MiniLM cosine of the documents at or above `near_duplicate`,
against every prompt already kept). The survivors are balanced across categories: an item's category is its most
common tag in the whole item set, and categories are taken round-robin, so no topic fills the quota alone.

Output columns: item_id, split, category, kept, reason ("" when kept; exact_duplicate, near_duplicate or
category_quota otherwise).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from tasks.config import Task
from tasks.llm.embeddings import embed
from tasks.prompts import item_content, prompt_messages

UNTAGGED = "untagged"


def tag_counts(items: pd.DataFrame) -> Counter:
    return Counter(tag.lower() for tags in items["tags"] if tags is not None for tag in tags)


def category_of(tags, counts: Counter) -> str:
    """The item's most common tag (ties broken by name), so categories are broad and stable across turns."""
    tags = [t.lower() for t in (tags if tags is not None else [])]
    return min(tags, key=lambda t: (-counts[t], t)) if tags else UNTAGGED


def mark_duplicates(candidates: pd.DataFrame, near_duplicate: float, task: Task) -> list[str]:
    """Per candidate (in order): "" if new, else exact_duplicate or near_duplicate of an earlier kept one."""
    records = candidates.to_dict("records")
    prompts = [prompt_messages(item, task)[-1]["content"] for item in records]
    vectors = embed([item_content(item, task) or prompt for item, prompt in zip(records, prompts)])
    seen, kept_vectors, reasons = set(), [], []
    for prompt, vector in zip(prompts, vectors):
        if prompt in seen:
            reasons.append("exact_duplicate")
        elif kept_vectors and float(np.max(np.stack(kept_vectors) @ vector)) >= near_duplicate:
            reasons.append("near_duplicate")
        else:
            reasons.append("")
            seen.add(prompt)
            kept_vectors.append(vector)
    return reasons


def balance(categories: list[str], eligible: list[bool], quota: int) -> list[bool]:
    """Round-robin over categories (in order of first appearance) until `quota` positions are taken."""
    queues: dict[str, list[int]] = {}
    for position, (category, ok) in enumerate(zip(categories, eligible)):
        if ok:
            queues.setdefault(category, []).append(position)
    taken: set[int] = set()
    while len(taken) < quota and any(queues.values()):
        for queue in queues.values():
            if queue and len(taken) < quota:
                taken.add(queue.pop(0))
    return [position in taken for position in range(len(categories))]


def collect_prompts(
    candidates: pd.DataFrame, quotas: dict[str, int], counts: Counter, near_duplicate: float, task: Task
) -> pd.DataFrame:
    """Deduplicate `candidates` (items, in priority order) and keep up to quotas[split] per split, balanced."""
    candidates = candidates.reset_index(drop=True)
    reasons = mark_duplicates(candidates, near_duplicate, task)
    categories = [category_of(tags, counts) for tags in candidates["tags"]]
    kept = [False] * len(candidates)
    for split, quota in quotas.items():
        eligible = [not r and s == split for r, s in zip(reasons, candidates["split"])]
        kept = [k or b for k, b in zip(kept, balance(categories, eligible, quota))]
    return pd.DataFrame(
        {
            "item_id": candidates["item_id"],
            "split": candidates["split"],
            "category": categories,
            "kept": kept,
            "reason": [r or ("" if k else "category_quota") for r, k in zip(reasons, kept)],
        }
    )
