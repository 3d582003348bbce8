"""The external scoring function (Iter-W2S-RLAIF): responses are judged by something that is not the policy.

Two parts, both swappable: MiniLM similarity between a response and its item's content (abstract or curator comment)
minus a fixed penalty per violated format rule, and optionally an LLM judge, a *separate* registered model version
asked whether the title fits the document; its P(Yes) (against P(No), from log-probs of the two answers) adds
`judge_weight · (P(Yes) − 0.5)`. A caption that restates the instruction or runs over several lines loses to a
plain, on-topic title. A verifiable task (`task.scorer: reference`, e.g. a choice task) is scored by correctness
instead: `ReferenceScorer` checks the response's answer against the item's reference.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from tasks.config import Task
from tasks.llm.embeddings import similarity
from tasks.metrics import exact_match
from tasks.prompts import clip, task_output

RULE_PENALTY = 0.25
_META = re.compile(r"\b(title is|one-line title|this document|here is|the title)\b", re.IGNORECASE)
JUDGE_SYSTEM = "You check titles of documents."
JUDGE_QUESTION = "Is this title accurate and specific for the document? Answer Yes or No."


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


@dataclass
class LLMJudge:
    """P(Yes) of a judge model asked whether a title fits its document; `llm` is a cached client of the judge."""

    llm: object
    max_content_chars: int

    def __call__(self, texts: list[str], contents: list[str]) -> np.ndarray:
        prompts = [
            [
                {"role": "system", "content": JUDGE_SYSTEM},
                {
                    "role": "user",
                    "content": f"Document: {clip(c, self.max_content_chars)}\nTitle: {t.strip()}\n\n{JUDGE_QUESTION}",
                },
            ]
            for t, c in zip(texts, contents)
        ]
        answers = [(p, answer) for p in prompts for answer in ("Yes", "No")]
        scored = self.llm.score([p for p, _ in answers], [a for _, a in answers], desc="judge")
        logps = [sum(s.token_logprobs) for s in scored]
        return np.array([1.0 / (1.0 + math.exp(no - yes)) for yes, no in zip(logps[::2], logps[1::2])])


@dataclass
class Scorer:
    min_chars: int
    max_chars: int
    judge: LLMJudge | None = None
    judge_weight: float = 0.0
    against = "content"  # what __call__'s second argument holds: each item's content

    def __call__(self, texts: list[str], contents: list[str]) -> dict[str, list]:
        """Columns similarity, judge (NaN without a judge), violations (comma-joined) and score (higher is better)."""
        violations = [rule_violations(t, self.min_chars, self.max_chars) for t in texts]
        sims = similarity([t.strip() or "(empty)" for t in texts], contents) if texts else np.zeros(0)
        scores = sims - RULE_PENALTY * np.array([len(v) for v in violations], dtype=float)
        judged = np.full(len(texts), np.nan)
        if self.judge is not None and texts:
            judged = self.judge(texts, contents)
            scores = scores + self.judge_weight * (judged - 0.5)
        return {
            "similarity": sims.tolist(),
            "judge": judged.tolist(),
            "violations": [",".join(v) for v in violations],
            "score": scores.tolist(),
        }


@dataclass
class ReferenceScorer:
    """Correctness: 1 when the response's answer (the task's output rule) is the item's reference, else 0; a response
    that gives no answer at all breaks the format rule `no_answer` and is filtered out."""

    task: Task
    against = "reference"  # what __call__'s second argument holds: each item's reference

    def __call__(self, texts: list[str], references: list[str]) -> dict[str, list]:
        """The same columns as `Scorer`'s; `similarity` holds the correctness."""
        answers = [task_output(text, self.task) for text in texts]
        correct = np.array([exact_match(a, r) for a, r in zip(answers, references)], dtype=float)
        violations = ["" if answer else "no_answer" for answer in answers]
        scores = correct - RULE_PENALTY * np.array([bool(v) for v in violations], dtype=float)
        return {
            "similarity": correct.tolist(),
            "judge": [math.nan] * len(texts),
            "violations": violations,
            "score": scores.tolist(),
        }
