"""In-process generation and scoring with transformers (the CPU default and the training-side fallback).

Sampling is seeded per row: the decoding loop draws each row's next token with that row's own generator (or takes
the argmax when greedy). A completion therefore depends on (prompt, sampling, seed) only, not on which other prompts
share its batch, which is what the LLM-call cache key promises, exactly in float32. In bfloat16 a batch's shape
moves logits by rounding steps, and over a caption's tokens that is enough to change a draw: 0 of 16 bundled caption
prompts (T 0.7, 32 tokens) sampled the same batched as alone, before the chunked prefill below and after it. A run
from scratch on the same inputs makes the same batches and draws the same; a resumed run batches what is left
differently, and its bf16 draws are other samples from the same distribution, not the same tokens.
The sampler also records each drawn token's untempered log-prob.
"""

from __future__ import annotations

import os
from functools import cached_property

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StaticCache

from tasks.config import Sampling
from tasks.llm.backend import Generation, LineEnds, Messages, Scored
from tasks.llm.cpu_attention import CPU_ATTENTION

# A generation batch decodes up to this many times `batch_size` rows together, prefilled in chunks of at most
# `batch_size` distinct prompts; rows that repeat a prompt (best-of-n) share its prefill. 64 rows of 8 prompts x 8 took
# 9.0 s at 64 rows a batch, 16.2 s at 16 (one process, bf16). 128 or 256 rows a batch were no faster than 64 for 32
# prompts x 8 (22.7-26.5 s each way, alternating in one process): decoding steps run at the 64-row matmul rate or
# better.
ROWS_PER_PROMPT_BATCH = 4
# Dropping finished rows copies each remaining row's cache; it pays once the finished rows' remaining steps exceed
# this many row-steps per remaining row.
DROP_COST_ROW_STEPS = 1.0
# A prefill chunk's own cost in padded tokens: a forward pass's fixed work, and matmuls slow below ~512 rows.
PREFILL_CHUNK_OVERHEAD = 128


class SeededSampler:
    def __init__(self, seeds: list[int], sampling: Sampling):
        self.sampling = sampling
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.logprobs: list[list[float]] = [[] for _ in seeds]

    def draw(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """The next token of each of `rows` (one logits row each), the argmax when greedy; records its log-prob."""
        scores = logits.float()
        chosen = scores.argmax(dim=-1) if self.sampling.temperature == 0 else self._draw(scores, rows)
        logprobs = scores.gather(-1, chosen[:, None])[:, 0] - scores.logsumexp(dim=-1)
        for row, logprob in zip(rows, logprobs.tolist()):
            self.logprobs[row].append(logprob)
        return chosen

    def _draw(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """One token per row, drawn with the row's own generator among its nucleus (the whole vocabulary at
        top_p 1). Drawing among the nucleus alone, not among the whole vocabulary with the rest zeroed, spends one
        random number per candidate token instead of one per vocabulary entry (49k): that was a sixth of
        best-of-n generation time at 64 rows (torch profiler)."""
        probs = torch.softmax(logits / self.sampling.temperature, dim=-1)
        if self.sampling.top_p < 1.0:
            candidates = nucleus(probs, self.sampling.top_p)
        else:
            candidates = [(row, torch.arange(len(row))) for row in probs]
        generators = [self.generators[row] for row in rows]
        return torch.stack(
            [ids[torch.multinomial(kept, 1, generator=g)[0]] for (kept, ids), g in zip(candidates, generators)]
        )


def nucleus(probs: torch.Tensor, top_p: float, first_k: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each row's nucleus (the smallest set of most likely tokens whose mass reaches `top_p`) as its probabilities
    and token ids, most likely first. Sorting the whole vocabulary for every drawn token was a sixth of generation
    time (torch profiler); when a row's `first_k` most likely tokens already hold more than `top_p` (96% of draws on
    caption prompts), its nucleus lies among them and sorting those gives the same set (up to which of several
    equally likely tokens at its edge is kept: 61 of 64 seeded captions came out as with the full sort, 27% faster)."""
    top, order = probs.topk(min(first_k, probs.shape[-1]), dim=-1)
    sizes = (top.cumsum(-1) - top <= top_p).sum(-1).tolist()
    short = (top.sum(-1) <= top_p).tolist() if top.shape[-1] < probs.shape[-1] else [False] * len(top)
    rows = []
    for row, (size, needs_sort) in enumerate(zip(sizes, short)):
        kept, ids = probs[row].sort(descending=True) if needs_sort else (top[row], order[row])
        if needs_sort:
            size = int((kept.cumsum(-1) - kept <= top_p).sum())
        rows.append((kept[:size], ids[:size]))
    return rows


def prefill_chunks(lengths: list[int], most: int, overhead: int = PREFILL_CHUNK_OVERHEAD) -> list[tuple[int, int]]:
    """Cut `lengths` (sorted) into chunks of at most `most` that cost the fewest padded tokens, counting `overhead`
    tokens for each chunk. Fixed chunks of 16 padded the prefill of 64 caption prompts (95-298 tokens) by 14%."""
    best = [0.0] + [float("inf")] * len(lengths)  # best[end]: the cheapest cut of lengths[:end]
    cut_at = [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for start in range(max(0, end - most), end):
            cost = best[start] + lengths[end - 1] * (end - start) + overhead
            if cost < best[end]:
                best[end], cut_at[end] = cost, start
    chunks, end = [], len(lengths)
    while end:
        chunks.append((cut_at[end], end))
        end = cut_at[end]
    return chunks[::-1]


class TransformersBackend:
    def __init__(self, path, batch_size: int = 8, threads: int | None = None, dtype: str = "float32"):
        """`dtype` bfloat16 runs on the CPU's bf16 units (avx512_bf16): ~2.5x faster scoring and ~1.5x faster
        generation here than float32, log-probs within ~0.03 nats (bench/generation.py measures both)."""
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.batch_size = batch_size  # distinct prompts per generation batch, rows per scoring batch
        self.rows_per_call = batch_size * ROWS_PER_PROMPT_BATCH
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), attn_implementation=CPU_ATTENTION
        ).eval()
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id

    @cached_property
    def line_ends(self) -> LineEnds:
        return LineEnds(self.tokenizer)

    def prompt_ids(self, messages: Messages) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)

    def completion_token_ids(self, completion: str) -> list[int]:
        return self.tokenizer.encode(completion, add_special_tokens=False) + [self.eos_id]

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(row) for row in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return ids, mask

    def _right_pad(self, rows: list[list[int]], width: int) -> tuple[list[list[int]], list[list[int]]]:
        """Rows padded on the right to `width`, and their attention masks."""
        padded = [r + [self.pad_id] * (width - len(r)) for r in rows]
        return padded, [[1] * len(r) + [0] * (width - len(r)) for r in rows]

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Row indices in batches of similar length. Left padding to a batch's longest prompt wasted 38% of the
        prefill tokens of the 210 held-out caption prompts in their stored order (batch 16), 5% sorted by length."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def _generation_batches(self, rows: list[list[int]]) -> list[list[int]]:
        """Row indices sorted by length with a prompt's rows together, `rows_per_call` rows a batch: a batch decodes
        together, and its prefill runs in chunks of at most `batch_size` distinct prompts (`_prefill`)."""
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), rows[i]))
        return [order[start : start + self.rows_per_call] for start in range(0, len(order), self.rows_per_call)]

    @torch.inference_mode()
    def generate(
        self, prompts: list[Messages], sampling: Sampling, seeds: list[int], one_line: bool = False
    ) -> list[Generation]:
        rows = [self.prompt_ids(m) for m in prompts]
        results: list[Generation | None] = [None] * len(rows)
        line_ends = self.line_ends if one_line else None
        for batch in self._generation_batches(rows):
            generations = self._generate_batch([rows[i] for i in batch], sampling, [seeds[i] for i in batch], line_ends)
            for index, generation in zip(batch, generations):
                results[index] = generation
        return results

    def _prefill(self, prefixes: list[list[int]], cache: StaticCache) -> None:
        """Fill `cache` with each row's `prefix` (its prompt but the last token), right-padded to the longest. Each
        distinct prefix runs once, in chunks of at most `batch_size` distinct prefixes of similar length, right-padded
        within the chunk, so causal attention needs no padding mask; its keys and values are copied to every row that
        sends it. Best-of-n annotation and the preference matrix send one prompt n times, and a caption prompt's prefill
        is most of its cost (~300 prompt tokens for ~15 generated). A whole 64-row decode batch prefilled at once would
        pad every prompt to its longest; chunks of similar length pad little (`prefill_chunks`). (SDPA's CPU kernel, a
        fifth of the prefill, runs as fast with the padding mask as without: 17.2 ms either way for 16 prompts x 9 heads
        x 200 tokens; bf16 chunks attend with `cpu_attention.causal_attention` instead.)"""
        groups = self._rows_by_prefix(prefixes)
        for start, end in prefill_chunks([len(prefix) for prefix, _ in groups], self.batch_size):
            chunk = groups[start:end]
            width = len(chunk[-1][0])
            if width == 0:
                continue
            computed = self.model(
                input_ids=torch.tensor(self._right_pad([prefix for prefix, _ in chunk], width)[0]),
                use_cache=True,
                logits_to_keep=1,
            ).past_key_values
            rows = torch.tensor([row for _, rows in chunk for row in rows])
            sources = torch.tensor([i for i, (_, rows) in enumerate(chunk) for _ in rows])
            for layer, chunk_layer in zip(cache.layers, computed.layers):
                if not layer.is_initialized:
                    shape = (len(prefixes), *chunk_layer.keys.shape[1:2], 0, chunk_layer.keys.shape[-1])
                    layer.lazy_initialization(chunk_layer.keys.new_empty(shape), chunk_layer.values.new_empty(shape))
                layer.keys[rows, :, :width] = chunk_layer.keys[sources]
                layer.values[rows, :, :width] = chunk_layer.values[sources]
        for layer in cache.layers:
            if layer.is_initialized:
                layer.cumulative_length.fill_(len(groups[-1][0]))

    @staticmethod
    def _rows_by_prefix(prefixes: list[list[int]]) -> list[tuple[list[int], list[int]]]:
        """Each distinct prefix and the rows that send it, shortest first."""
        rows_of: dict[tuple[int, ...], list[int]] = {}
        for row, prefix in enumerate(prefixes):
            rows_of.setdefault(tuple(prefix), []).append(row)
        return [(list(prefix), rows_of[prefix]) for prefix in sorted(rows_of, key=lambda p: (len(p), p))]

    def _generate_batch(
        self, rows: list[list[int]], sampling: Sampling, seeds: list[int], line_ends: LineEnds | None
    ) -> list[Generation]:
        # each row: its prompt but the last token, right-padded (the prefilled cache), then the last token; the
        # attention mask skips the gap and positions count real tokens only
        width = max(len(r) for r in rows) - 1
        prefixes = [r[:-1] for r in rows]
        # a preallocated cache: the default one grows by concatenation, which copied every layer's keys and values
        # at every step (a third of generation time at 64 rows)
        cache = StaticCache(config=self.model.config, max_cache_len=width + sampling.max_new_tokens)
        self._prefill(prefixes, cache)
        sampler = SeededSampler(seeds, sampling)
        prefix_mask = torch.tensor(self._right_pad(prefixes, width)[1], dtype=torch.long).reshape(len(rows), width)
        new_tokens, end_logprobs = self._decode(rows, prefix_mask, cache, sampler, sampling.max_new_tokens, line_ends)
        generations = []
        for row, tokens in enumerate(new_tokens):
            end_logprob = end_logprobs.get(row)
            finished = (bool(tokens) and tokens[-1] == self.eos_id) or end_logprob is not None
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            generations.append(Generation(text, tokens, sampler.logprobs[row][: len(tokens)], finished, end_logprob))
        return generations

    def _decode(
        self,
        rows: list[list[int]],
        prefix_mask: torch.Tensor,
        cache: StaticCache,
        sampler: SeededSampler,
        steps: int,
        line_ends: LineEnds | None,
    ) -> tuple[list[list[int]], dict[int, float]]:
        """Each row's new tokens, up to its end-of-sequence token, the end of its first line (with `line_ends`) or
        `steps`; and for each row stopped at a line end, the log-prob end-of-turn had there. A finished row stays in
        the batch (fed padding) until dropping it pays: dropping copies every remaining row's cache. HF's `generate`
        decoded finished rows to the end, a quarter of the row-steps of 64 caption prompts (T 0.7, 32 tokens)."""
        batch_rows = list(range(len(rows)))  # the row at each batch position
        tokens = torch.tensor([[r[-1]] for r in rows])
        positions = torch.tensor([[len(r) - 1] for r in rows])
        attention_mask = torch.cat([prefix_mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        new_tokens: list[list[int]] = [[] for _ in rows]
        started = [False] * len(rows)  # the row's line has content
        end_logprobs: dict[int, float] = {}
        running = torch.ones(len(rows), dtype=torch.bool)
        for step in range(steps):
            logits = self.model(
                input_ids=tokens,
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
            at = running.nonzero()[:, 0]
            chosen = sampler.draw(logits[at], [batch_rows[i] for i in at.tolist()])
            stopped = []
            for i, token in zip(at.tolist(), chosen.tolist()):
                row = batch_rows[i]
                new_tokens[row].append(token)
                line_end = False
                if line_ends is not None:
                    line_end = line_ends.ends(token, started[row])
                    started[row] = started[row] or token in line_ends.content
                if line_end:
                    scores = logits[i].float()
                    end_logprobs[row] = float(scores[self.eos_id] - scores.logsumexp(dim=-1))
                stopped.append(line_end or token == self.eos_id)
            tokens = torch.full_like(tokens, self.pad_id).index_copy_(0, at, chosen[:, None])
            running[at] = ~torch.tensor(stopped)
            if not running.any():
                break
            positions = positions + 1
            attention_mask = torch.cat([attention_mask, running[:, None].long()], dim=1)
            left = steps - step - 1
            if (~running).sum() * left > running.sum() * DROP_COST_ROW_STEPS:
                kept = running.nonzero()[:, 0]
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys[kept], layer.values[kept]
                batch_rows = [batch_rows[i] for i in kept.tolist()]
                tokens, positions, attention_mask, running = (
                    t[kept] for t in (tokens, positions, attention_mask, running)
                )
        return new_tokens, end_logprobs

    @torch.inference_mode()
    def score(self, prompts: list[Messages], completions: list[str]) -> list[Scored]:
        encoded = [(self.prompt_ids(m), self.completion_token_ids(c)) for m, c in zip(prompts, completions)]
        results: list[Scored | None] = [None] * len(encoded)
        for batch in self._batches([len(p) + len(c) for p, c in encoded]):
            pairs = [encoded[i] for i in batch]
            distinct = {tuple(p) for p, _ in pairs}
            scored = self._score_after_prefix(pairs) if len(distinct) < len(pairs) else self._score_whole(pairs)
            for index, logprobs in zip(batch, scored):
                results[index] = Scored(logprobs)
        return results

    def _score_whole(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        input_ids, attention_mask = self._left_pad([p + c for p, c in pairs])
        positions_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        # Completions are right-aligned (left padding): only the last `kept` positions predict them, so only those
        # go through the LM head (full-vocabulary logits for every prompt position cost more than the forward pass
        # and made batching slower than one at a time).
        kept = max(len(c) for _, c in pairs) + 1
        logits = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions_ids, logits_to_keep=kept
        ).logits.float()
        return [
            _picked(logits[row, kept - len(completion) - 1 : kept - 1], completion)
            for row, (_, completion) in enumerate(pairs)
        ]

    def _score_after_prefix(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Rows that share a prompt (n candidates of one item): each distinct prompt but its last token runs once
        (`_prefill`), then every row feeds its prompt's last token and its completion, right-padded."""
        prefix_width = max(len(p) for p, _ in pairs) - 1
        _, prefix_mask = self._right_pad([p[:-1] for p, _ in pairs], prefix_width)
        width = max(len(c) for _, c in pairs)
        fed, fed_mask = self._right_pad([[p[-1], *c[:-1]] for p, c in pairs], width)
        cache = StaticCache(config=self.model.config, max_cache_len=prefix_width + width)
        self._prefill([p[:-1] for p, _ in pairs], cache)
        start = torch.tensor([[len(p) - 1] for p, _ in pairs])  # the last prompt token's position
        logits = self.model(
            input_ids=torch.tensor(fed),
            attention_mask=torch.tensor([m + f for m, f in zip(prefix_mask, fed_mask)]),
            position_ids=start + torch.arange(width),
            past_key_values=cache,
        ).logits.float()
        return [_picked(logits[row, : len(c)], c) for row, (_, c) in enumerate(pairs)]


def _picked(predicting: torch.Tensor, completion: list[int]) -> list[float]:
    """Log-probs of `completion`'s tokens under the logits that predict them."""
    picked = predicting.gather(-1, torch.tensor(completion)[:, None])[:, 0]
    return (picked - predicting.logsumexp(-1)).tolist()
