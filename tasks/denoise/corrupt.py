"""A seeded corruptor with known answers, for measuring noise control: a chosen fraction of annotations is replaced
by one of three realistic failure modes of an annotator, and each row says which (or '' when clean).

  swap       the annotation of another item (fluent, but about something else)
  truncate   the first 30-60% of the words (a caption cut off mid-phrase)
  tag_soup   3-6 random tags from the whole tag vocabulary joined by commas (a keyword dump)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CORRUPTIONS = ("swap", "truncate", "tag_soup")


def corrupt(items: pd.DataFrame, rate: float, seed: int) -> pd.DataFrame:
    """items: item_id, title, tags. Returns item_id, annotation, corruption."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    rng = np.random.default_rng(seed)
    titles, tags = list(items["title"]), sorted({t for row in items["tags"] for t in row})
    annotations, corruptions = list(titles), [""] * len(titles)
    for index in rng.choice(len(titles), size=round(rate * len(titles)), replace=False):
        kind = CORRUPTIONS[rng.integers(len(CORRUPTIONS))]
        if kind == "swap":
            others = [j for j in range(len(titles)) if titles[j] != titles[index]]
            annotations[index] = titles[others[rng.integers(len(others))]]
        elif kind == "truncate":
            annotations[index] = _truncate(titles[index], rng)
        else:
            annotations[index] = ", ".join(rng.choice(tags, size=min(len(tags), rng.integers(3, 7)), replace=False))
        corruptions[index] = kind
    return pd.DataFrame({"item_id": items["item_id"].values, "annotation": annotations, "corruption": corruptions})


def _truncate(title: str, rng: np.random.Generator) -> str:
    words = title.split()
    if len(words) < 2:
        return title[: max(1, len(title) // 2)]
    keep = min(len(words) - 1, max(1, round(len(words) * rng.uniform(0.3, 0.6))))
    return " ".join(words[:keep])
