"""DMQR-RAG query pools: for each query, the strategies to apply (all of them, a fixed list, or the model's adaptive
choice), their rewrites by the current model, and the pool {original, rewrites} that retrieval searches.

Every model call goes through the cached client, greedy, so a pool is a pure function of (model, query, params).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tasks.config import Sampling
from tasks.rewrite.strategies import STRATEGIES, parse_selection, selection_messages

SELECTION_SAMPLING = Sampling(temperature=0.0, max_new_tokens=40)
_PREAMBLE = re.compile(
    r"^\s*(?:(?:here is|here are|the|this|a)\b[^:\n]{0,60}?\b(?:text|query|keywords?|core|content|answer|title|"
    r"summary|sentence)\b[^:\n]{0,20}?(?:is|are)?\s*:|(?:text|query|keywords?|answer)\s*:)\s*",
    re.IGNORECASE,
)


def clean_rewrite(text: str, max_chars: int) -> str:
    """The rewrite without what small models wrap around it: label preambles ("The core content of the text is:",
    "Text:"), surrounding quotes, sentences repeated in a loop; whitespace collapsed, length capped."""
    text = " ".join(text.split())
    while (stripped := _PREAMBLE.sub("", text, count=1).strip("\"'` ")) != text:
        text = stripped
    sentences = list(dict.fromkeys(re.split(r"(?<=[.!?])\s+", text)))
    return " ".join(sentences)[:max_chars].strip()


@dataclass
class QueryPool:
    original: str
    strategies: list[str]  # applied, in order
    reason: str = ""  # the selector's stated reason ("" when not adaptive)
    rewrites: dict[str, str] = field(default_factory=dict)  # strategy -> query text it produced

    @property
    def queries(self) -> list[str]:
        """The original first (fusion by reranking reads it there), then the non-empty rewrites."""
        rewrites = [self.rewrites[s] for s in self.strategies if self.rewrites.get(s)]
        return list(dict.fromkeys([self.original, *rewrites]))


def select_strategies(queries: list[str], llm, names: list[str], max_chars: int) -> list[tuple[list[str], str]]:
    """The model's choice of strategies per query: (names, reason), parsed robustly."""
    offered = {n: STRATEGIES[n] for n in names}
    generations = llm.generate(
        [selection_messages(q, offered, max_chars) for q in queries],
        SELECTION_SAMPLING,
        [0] * len(queries),
        desc="rewrite/select",
    )
    return [parse_selection(g.text, offered) for g in generations]


def rewrite(queries: list[str], plans: list[list[str]], llm, sampling: Sampling, max_chars: int) -> list[dict]:
    """{strategy: rewritten query} per query, running each query's planned strategies (one batch per strategy)."""
    results: list[dict[str, str]] = [{} for _ in queries]
    for name in dict.fromkeys(n for plan in plans for n in plan):
        strategy = STRATEGIES[name]
        positions = [i for i, plan in enumerate(plans) if name in plan]
        generations = llm.generate(
            [strategy.messages(queries[i], max_chars) for i in positions],
            sampling,
            [0] * len(positions),
            desc=f"rewrite/{name}",
        )
        for i, generation in zip(positions, generations):
            output = clean_rewrite(generation.text, 2 * max_chars)
            results[i][name] = strategy.query(queries[i], output) if output else ""
    return results


def build_pools(
    queries: list[str], llm, names: list[str], adaptive: bool, sampling: Sampling, max_chars: int
) -> list[QueryPool]:
    """One pool per query: the adaptive selection among `names`, or all of `names`."""
    selections = select_strategies(queries, llm, names, max_chars) if adaptive else [(list(names), "")] * len(queries)
    rewrites = rewrite(queries, [chosen for chosen, _ in selections], llm, sampling, max_chars)
    return [QueryPool(q, chosen, reason, r) for q, (chosen, reason), r in zip(queries, selections, rewrites)]
