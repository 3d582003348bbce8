"""The only way stages reach a model: every call goes through the LLM-call cache first.

The key also names the engine (transformers or vllm): the two sample differently from the same seed, so switching
engines recomputes rather than mixing their answers. Identical requests are sent once, misses go to the backend in
length-sorted chunks, and each chunk's results are committed before the next starts (a killed stage loses at most
one chunk). `calls` counts prompts that reached the model, which is how tests prove a rerun makes none; `usage` adds
what a cost estimate needs (requests, cache hits, prompt and completion tokens of the calls, model-seconds). A finished
generation also answers the matching scoring request (same model, same prompt, same tokens), so scoring one's own
outputs costs nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from stores.llm_cache import LLMCallCache, call_key
from stores.registry import ModelRef
from tasks.config import Sampling
from tasks.llm.backend import Generation, GenerationBackend, Messages, Scored


@dataclass
class Usage:
    """Model work of a client: completion tokens are the generated ones, or the scored ones for a scoring call."""

    requests: int = 0
    cache_hits: int = 0  # answered from the cache (or a duplicate in the same batch): no model call
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_seconds: float = 0.0  # in the backend, loading included

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{name: value + getattr(other, name) for name, value in asdict(self).items()})


USAGE_COLUMNS = tuple(Usage.__dataclass_fields__)


def total_usage(stage_summaries) -> dict[str, float]:
    """The model work of several stages, from their recorded summaries (a stage recorded without usage adds 0)."""
    usages = [summary.get("usage", {}) for summary in stage_summaries]
    return {column: sum(usage.get(column, 0) for usage in usages) for column in USAGE_COLUMNS}


class CachedLLM:
    def __init__(
        self, backend_factory, cache: LLMCallCache, model: ModelRef, progress: bool = True, engine: str = "transformers"
    ):
        self._backend_factory = backend_factory  # loaded on the first miss: a fully cached stage never loads weights
        self._backend: GenerationBackend | None = None
        self.cache, self.model, self.progress, self.engine = cache, model, progress, engine
        self.usage = Usage()

    @property
    def calls(self) -> int:
        return self.usage.calls

    @property
    def backend(self) -> GenerationBackend:
        if self._backend is None:
            self._backend = self._backend_factory(self.model)
        return self._backend

    def generate(
        self, prompts: list[Messages], sampling: Sampling, seeds: list[int], desc: str, one_line: bool = False
    ) -> list[Generation]:
        """`one_line`: each completion stops at the end of its first non-empty line (`LineEnds`)."""
        greedy = sampling.temperature == 0
        stop = {"one_line": True} if one_line else {}  # in the key only where asked: other calls keep their keys
        requests = [
            {"prompt": p, "sampling": sampling.model_dump(), "seed": None if greedy else s, "engine": self.engine}
            | stop
            for p, s in zip(prompts, seeds)
        ]
        responses = self._through_cache("generate", requests, self._generate_chunk, desc)
        return [Generation(**r) for r in responses]

    def score(self, prompts: list[Messages], completions: list[str], desc: str) -> list[Scored]:
        requests = [{"prompt": p, "completion": c, "engine": self.engine} for p, c in zip(prompts, completions)]
        responses = self._through_cache("score", requests, self._score_chunk, desc)
        return [Scored(**r) for r in responses]

    def _through_cache(self, kind: str, requests: list[dict], compute, desc: str) -> list[dict]:
        keys = [call_key(kind, self.model.fingerprint, r) for r in requests]
        found = self.cache.get_many(list(set(keys)))
        missing = {k: r for k, r in zip(keys, requests) if k not in found}
        self.usage.requests += len(requests)
        self.usage.cache_hits += len(requests) - len(missing)
        if missing:
            order = sorted(missing, key=lambda k: len(str(missing[k]["prompt"])))
            size = self.backend.rows_per_call
            # progress None: a bar on a terminal only (redirected to a file, its redraws would be most of the output)
            disable = None if self.progress is None else not self.progress
            with tqdm(total=len(order), desc=f"{desc} ({self.model.label})", disable=disable) as bar:
                for start in range(0, len(order), size):
                    chunk = order[start : start + size]
                    started = time.perf_counter()
                    results = compute([missing[k] for k in chunk])
                    self._count(kind, [missing[k] for k in chunk], results, time.perf_counter() - started)
                    entries = [(k, missing[k], result) for k, result in zip(chunk, results)]
                    self.cache.put_many(kind, self.model.fingerprint, self.model.label, entries)
                    found.update({k: result for k, _, result in entries})
                    bar.update(len(chunk))
        return [found[k] for k in keys]

    def _count(self, kind: str, requests: list[dict], results: list[dict], seconds: float) -> None:
        usage = self.usage
        usage.calls += len(requests)
        usage.model_seconds += seconds
        usage.prompt_tokens += sum(len(self.backend.prompt_ids(r["prompt"])) for r in requests)
        field = "token_ids" if kind == "generate" else "token_logprobs"
        usage.completion_tokens += sum(len(result[field]) for result in results)

    def _generate_chunk(self, requests: list[dict]) -> list[dict]:
        sampling = Sampling(**requests[0]["sampling"])
        seeds = [r["seed"] or 0 for r in requests]
        one_line = requests[0].get("one_line", False)
        generations = self.backend.generate([r["prompt"] for r in requests], sampling, seeds, one_line=one_line)
        self._answer_scoring(requests, generations)
        return [asdict(g) for g in generations]

    def _score_chunk(self, requests: list[dict]) -> list[dict]:
        scored = self.backend.score([r["prompt"] for r in requests], [r["completion"] for r in requests])
        return [asdict(s) for s in scored]

    def _answer_scoring(self, requests: list[dict], generations: list[Generation]) -> None:
        """A generation ended by end-of-turn scores its text; one stopped at a line end scores the line, ended
        there (the end-of-turn log-prob it recorded stands in for the line break's)."""
        entries = []
        for request, generation in zip(requests, generations):
            completion, ids, logprobs = generation.text, generation.token_ids, generation.token_logprobs
            if generation.end_logprob is not None:
                completion, logprobs = completion.strip(), logprobs[:-1] + [generation.end_logprob]
                ids = ids[:-1] + self.backend.completion_token_ids("")  # the line, then end-of-turn
            if generation.finished and self.backend.completion_token_ids(completion) == ids:
                score_request = {"prompt": request["prompt"], "completion": completion, "engine": self.engine}
                key = call_key("score", self.model.fingerprint, score_request)
                entries.append((key, score_request, asdict(Scored(logprobs))))
        self.cache.put_many("score", self.model.fingerprint, self.model.label, entries)
