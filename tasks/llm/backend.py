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
    finished: bool  # stopped at end-of-turn rather than at max_new_tokens


@dataclass(frozen=True)
class Scored:
    token_logprobs: list[float]  # log-prob of each completion token (end-of-turn included) given the prompt


class GenerationBackend(Protocol):
    rows_per_call: int  # requests the LLM-call cache sends at once (and stores as one write)

    def generate(self, prompts: list[Messages], sampling: Sampling, seeds: list[int]) -> list[Generation]:
        """One completion per prompt; the same (prompt, sampling, seed) gives the same completion in any batch."""
        ...

    def score(self, prompts: list[Messages], completions: list[str]) -> list[Scored]: ...

    def completion_token_ids(self, completion: str) -> list[int]:
        """The token ids `score` would assign to this completion (end-of-turn included)."""
        ...
