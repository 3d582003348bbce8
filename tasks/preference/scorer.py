"""The external scorer: judges responses without asking the policy. It is MiniLM similarity between a response and
its item's content (abstract or curator comment) minus a fixed penalty per violated format rule. A caption that
restates the instruction ("The title is ...") or runs on over several lines loses to a plain, on-topic title.
"""

from __future__ import annotations

import re

import numpy as np

from tasks.llm.embeddings import similarity

RULE_PENALTY = 0.25
_META = re.compile(r"\b(title is|one-line title|this document|here is|the title)\b", re.IGNORECASE)


def rule_violations(text: str, min_chars: int, max_chars: int) -> list[str]:
    stripped = text.strip()
    found = []
    if len(stripped) < min_chars:
        found.append("too_short")
    if len(stripped) > max_chars:
        found.append("too_long")
    if "\n" in stripped:
        found.append("multi_line")
    if _META.search(stripped):
        found.append("restates_instruction")
    words = stripped.lower().split()
    if len(words) >= 6 and len(set(words)) / len(words) < 0.5:
        found.append("repetitive")
    return found


def score_responses(
    texts: list[str], contents: list[str], min_chars: int, max_chars: int
) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """(similarity, violations, score) per response; a higher score is better."""
    violations = [rule_violations(t, min_chars, max_chars) for t in texts]
    sims = similarity([t.strip() or "(empty)" for t in texts], contents)
    return sims, violations, sims - RULE_PENALTY * np.array([len(v) for v in violations], dtype=float)
