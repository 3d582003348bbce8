"""A seeded corruptor with known answers, for measuring noise control: a chosen fraction of annotations is replaced
by a failure mode of an annotator, and each row says which (or '' when clean).

Easy (they stand out of the bulk):
  swap       the annotation of a random other item (fluent, but about something else)
  truncate   the first 30-60% of the words (a caption cut off mid-phrase)
  tag_soup   3-6 random tags from the whole tag vocabulary joined by commas (a keyword dump)
Hard (what annotators really get wrong: fluent, on topic, wrong):
  neighbour  the title of the most similar other item (`neighbours`, e.g. by MiniLM over the items' content; the
             bench takes it from items outside the scored set, as an annotator's mix-up comes from what it has seen)
  detail     the title with its key term (longest word, or one with a digit) replaced by another item's key term
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

EASY = ("swap", "truncate", "tag_soup")
HARD = ("neighbour", "detail")
CORRUPTIONS = EASY + HARD
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9-]{4,}|[A-Za-z]*\d[A-Za-z0-9.-]*")


def corrupt(
    items: pd.DataFrame,
    rate: float,
    seed: int,
    kinds: tuple[str, ...] = EASY,
    neighbours: list[str] | None = None,
) -> pd.DataFrame:
    """items: item_id, reference, tags. `kinds` are drawn uniformly; `neighbours[i]` is the title of item i's nearest
    other item (required for 'neighbour'). Returns item_id, annotation, corruption."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    unknown = set(kinds) - set(CORRUPTIONS)
    if unknown or not kinds:
        raise ValueError(f"corruption kinds must be among {', '.join(CORRUPTIONS)}, got {kinds}")
    if "neighbour" in kinds and (neighbours is None or len(neighbours) != len(items)):
        raise ValueError("the 'neighbour' corruption needs each item's nearest other item (neighbours)")
    rng = np.random.default_rng(seed)
    titles, tags = list(items["reference"]), sorted({t for row in items["tags"] for t in row})
    annotations, corruptions = list(titles), [""] * len(titles)
    for index in rng.choice(len(titles), size=round(rate * len(titles)), replace=False):
        kind = kinds[rng.integers(len(kinds))]
        if kind == "swap":
            others = [j for j in range(len(titles)) if titles[j] != titles[index]]
            annotations[index] = titles[others[rng.integers(len(others))]]
        elif kind == "truncate":
            annotations[index] = truncate(titles[index], rng)
        elif kind == "tag_soup":
            annotations[index] = ", ".join(rng.choice(tags, size=min(len(tags), rng.integers(3, 7)), replace=False))
        elif kind == "neighbour":
            annotations[index] = neighbours[index]
        else:
            annotations[index] = _replace_detail(titles, index, rng)
        corruptions[index] = kind
    return pd.DataFrame({"item_id": items["item_id"].values, "annotation": annotations, "corruption": corruptions})


def truncate(title: str, rng: np.random.Generator) -> str:
    words = title.split()
    if len(words) < 2:
        return title[: max(1, len(title) // 2)]
    keep = min(len(words) - 1, max(1, round(len(words) * rng.uniform(0.3, 0.6))))
    return " ".join(words[:keep])


def swap_word(title: str, donor: str, rng: np.random.Generator) -> str | None:
    """`title` with a random one of its terms (five letters or more, or with a digit) replaced by a term of `donor`
    that it lacks (a detail from a related item); None when either has no such term. The trusted fit's wrong-detail
    pairs, a different rule from the `detail` corruption's key term from a random item."""
    own = [t for t in _WORD.findall(title) if t.lower() not in donor.lower()]
    given = sorted({t for t in _WORD.findall(donor) if t.lower() not in title.lower()})
    if not own or not given:
        return None
    return title.replace(own[rng.integers(len(own))], given[rng.integers(len(given))], 1)


def _key_term(title: str) -> str | None:
    """The term a reader would check: one with a digit, else the longest word of five letters or more."""
    terms = _WORD.findall(title)
    with_digit = [t for t in terms if any(c.isdigit() for c in t)]
    return with_digit[0] if with_digit else max(terms, key=len, default=None)


def _replace_detail(titles: list[str], index: int, rng: np.random.Generator) -> str:
    """The title with its key term swapped for another title's key term (a hallucinated detail)."""
    term = _key_term(titles[index])
    others = [
        t for j, t in enumerate(titles) if j != index and (k := _key_term(t)) and k.lower() != (term or "").lower()
    ]
    replacement = _key_term(others[rng.integers(len(others))]) if others else None
    if term is None or replacement is None:
        return titles[index] + " " + (replacement or "2.0")
    return titles[index].replace(term, replacement, 1)
