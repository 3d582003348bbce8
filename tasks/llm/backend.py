"""The generation backend interface every stage talks to (transformers in-process now; an OpenAI-compatible vLLM
server later). A backend turns chat prompts into completions and scores given completions; it knows nothing of
caching, stores or stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tasks.config import Sampling

# Bumped whenever the transformers backend draws differently from the same seed (the LLM-call cache keys on it, so
# a store never mixes two samplers' answers). 2: each row draws among its nucleus, not the whole vocabulary.
SAMPLER_REVISION = 2

Messages = list[dict[str, str]]  # chat messages: [{"role": ..., "content": ...}, ...]


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    token_logprobs: list[float]  # the model's own (untempered) log-prob of each generated token
    finished: bool  # stopped on its own (end-of-turn, or the end of the line asked for) rather than at max_new_tokens
    # stopped at the end of its first line (`one_line`): the log-prob end-of-turn had in the line break's place, so
    # the line alone, ended there, is scored without another pass (None otherwise, or where the backend cannot say)
    end_logprob: float | None = None


@dataclass(frozen=True)
class Scored:
    token_logprobs: list[float]  # log-prob of each completion token (end-of-turn included) given the prompt


class GenerationBackend(Protocol):
    rows_per_call: int  # requests the LLM-call cache sends at once (and stores as one write)

    def generate(
        self, prompts: list[Messages], sampling: Sampling, seeds: list[int], one_line: bool = False
    ) -> list[Generation]:
        """One completion per prompt; the same (prompt, sampling, seed) gives the same completion in any batch.
        `one_line`: stop at the end of the first non-empty line (`LineEnds`)."""
        ...

    def score(self, prompts: list[Messages], completions: list[str]) -> list[Scored]: ...

    def completion_token_ids(self, completion: str) -> list[int]:
        """The token ids `score` would assign to this completion (end-of-turn included)."""
        ...


LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines breaks a line


class LineEnds:
    """Where a completion's first non-empty line ends, token by token: the token holding a line break once the line
    has content (`tasks.prompts.first_line` keeps that line and nothing after it). A caption needs no more tokens,
    and a quarter of the packaged model's sampled caption tokens came after it (bench/generation.py). Each token is
    judged by its own text; a line break split across tokens (a multi-byte U+2028) is not seen, and the line goes
    on."""

    def __init__(self, tokenizer):
        texts = tokenizer.batch_decode([[token] for token in range(len(tokenizer))], skip_special_tokens=True)
        self.breaking = {token for token, text in enumerate(texts) if any(c in LINE_BREAKS for c in text)}
        self.content = {token for token, text in enumerate(texts) if not text.isspace() and text}
        # content, then a line break, within the token itself ("a.\n")
        self.closing = {token for token, text in enumerate(texts) if _breaks_after_content(text)}

    def ends(self, token: int, started: bool) -> bool:
        """Whether `token` ends the first line, the line having had content before it (`started`) or not."""
        return token in self.breaking and (started or token in self.closing)

    def cut(self, token_ids: list[int]) -> int | None:
        """How many of `token_ids` a generation stopped at the first line's end keeps (None: the line goes on)."""
        started = False
        for count, token in enumerate(token_ids, start=1):
            if self.ends(token, started):
                return count
            started = started or token in self.content
        return None


def _breaks_after_content(text: str) -> bool:
    stripped = text.lstrip()
    return bool(stripped) and any(c in LINE_BREAKS for c in stripped)
