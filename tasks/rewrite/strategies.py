"""DMQR-RAG's rewriting strategies (arXiv 2411.13154), each at its own information level, and the adaptive
selection prompt that picks a subset per query.

The pool is open: a strategy is a name, a prompt template with `{query}`, a description and a usage guideline (both
shown to the selector), and whether its output replaces the query or is appended to it (PAR appends the model's
pseudo-answer to the original, HyDE-like). Add one to `STRATEGIES` (and its name to `StrategyName` in
tasks/config.py, which validates params without importing stages) and it is offered to the selector, the CLI and the
benchmark.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks.llm.backend import Messages
from tasks.prompts import clip


@dataclass(frozen=True)
class Strategy:
    name: str
    template: str
    description: str
    guideline: str
    appends: bool = False  # the output is added to the original query instead of replacing it

    def messages(self, query: str, max_chars: int) -> Messages:
        return [{"role": "user", "content": self.template.format(query=clip(query, max_chars))}]

    def query(self, original: str, output: str) -> str:
        return f"{original} {output}".strip() if self.appends else output


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "gqr",
            "Rewrite the following text as a concise search query. Remove noise and keep all the relevant "
            "information (topics, methods, named entities). Answer with the query only.\n\nText: {query}",
            "general query rewriting: a clean, concise query with all relevant information",
            "use when the query is noisy, verbose or badly phrased",
        ),
        Strategy(
            "kwr",
            "List the key nouns, named entities and technical terms of the following text, separated by commas. "
            "Answer with the keywords only.\n\nText: {query}",
            "keyword rewriting: the key nouns and entities only",
            "use when the query names specific entities, methods or terms",
        ),
        Strategy(
            "par",
            "Answer briefly from what you know: what is the following text about, and what are the main "
            "facts? Two sentences.\n\nText: {query}",
            "pseudo-answer rewriting: the model's own answer is added to the query",
            "use when the query is short, a question, or needs background knowledge",
            appends=True,
        ),
        Strategy(
            "cce",
            "State the core content of the following text in one short sentence, without details. Answer "
            "with that sentence only.\n\nText: {query}",
            "core content extraction: only the core of a query that carries too much detail",
            "use when the query is long and detailed",
        ),
    )
}
ALIASES = {
    "general": "gqr",
    "keyword": "kwr",
    "keywords": "kwr",
    "pseudo_answer": "par",
    "pseudo-answer": "par",
    "core_content": "cce",
    "core": "cce",
}
DEFAULT_SELECTION = ("gqr",)
_EXAMPLES = (
    ("What is BERT?", ["par", "kwr"], "a short question about a named model needs background and its key term"),
    (
        "In this paper we present a new method for entity linking in biomedical texts that combines a "
        "transformer encoder with a knowledge graph of UMLS concepts, evaluated on three datasets ...",
        ["cce", "kwr"],
        "a long, detailed abstract: its core and its entities are what matter",
    ),
)


def selection_messages(query: str, strategies: dict[str, Strategy], max_chars: int) -> Messages:
    """The few-shot selection prompt: strategies with description and guideline, examples, then the query."""
    listing = "\n".join(f"- {s.name}: {s.description}; {s.guideline}" for s in strategies.values())
    examples = "\n\n".join(
        f"Query: {q}\n" + "\n".join(names) + f"\nReason: {reason}"
        for q, names, reason in _EXAMPLES
        if all(n in strategies for n in names)
    )
    return [
        {
            "role": "system",
            "content": "You choose query rewriting strategies for a search engine. Strategies:\n"
            f"{listing}\nAnswer with one strategy name per line, then one line starting with 'Reason:'.",
        },
        {"role": "user", "content": f"{examples}\n\nQuery: {clip(query, max_chars)}"},
    ]


def parse_selection(text: str, known) -> tuple[list[str], str]:
    """(chosen strategy names in order, reason). Bullets, numbering, case and aliases are tolerated; unknown names
    are ignored; nothing usable gives the default (GQR; the original query is always in the pool anyway)."""
    chosen, reason = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.lower().startswith("reason"):
            reason = stripped.split(":", 1)[-1].strip()
            break
        for token in re.split(r"[,;/]| and ", stripped):
            name = re.sub(r"^[\s\-*•\d.)]+|[\s.:*`\"']+$", "", token).strip().lower().replace(" ", "_")
            name = ALIASES.get(name, name)
            if name in known and name not in chosen:
                chosen.append(name)
    return (chosen or [n for n in DEFAULT_SELECTION if n in known]), reason
