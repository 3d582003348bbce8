"""The generation backend and the LLM-call cache, on the real packaged model (a few tokens each)."""

from stores.llm_cache import LLMCallCache
from stores.registry import ModelRef
from stores.store import Store
from tasks.config import Sampling
from tasks.llm.backend import LineEnds
from tasks.llm.cached import CachedLLM
from tasks.prompts import first_line

SHORT = [{"role": "user", "content": "Write a title for: a tutorial on graph neural networks."}]
LONG = [
    {
        "role": "user",
        "content": "Write a one-line title for a long survey of retrieval-augmented generation, "
        "knowledge graphs, and language models as knowledge bases. " * 3,
    }
]
SAMPLED = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=12)
GREEDY = Sampling(temperature=0.0, max_new_tokens=12)
# several lines, greedily: the first ends well within 24 tokens
LISTING = [{"role": "user", "content": "Give three titles for a tutorial on graph neural networks, one per line."}]
TO_LINE_END = Sampling(temperature=0.0, max_new_tokens=24)


def test_a_completion_depends_on_prompt_and_seed_not_on_the_batch(backend):
    alone = backend.generate([SHORT], SAMPLED, [7])[0]
    batched = backend.generate([LONG, SHORT, LONG], SAMPLED, [1, 7, 3])[1]
    assert alone.token_ids == batched.token_ids
    other_seed = backend.generate([SHORT, SHORT], SAMPLED, [8, 9])
    assert {tuple(g.token_ids) for g in other_seed} != {tuple(alone.token_ids)}


def test_a_prompt_sent_n_times_is_prefilled_once_and_samples_as_if_alone(backend, monkeypatch):
    prefilled = []  # rows of each forward pass that starts without a cache: the prefill chunks

    def record(module, args, kwargs):
        if kwargs.get("past_key_values") is None:
            prefilled.append(kwargs["input_ids"].shape[0])

    hook = backend.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        together = backend.generate([LONG, LONG, SHORT, LONG], SAMPLED, [1, 2, 7, 3])
        assert prefilled == [2]  # one chunk: the two distinct prompts, each once
        monkeypatch.setattr(backend, "batch_size", 1)
        prefilled.clear()
        one_per_chunk = backend.generate([LONG, LONG, SHORT, LONG], SAMPLED, [1, 2, 7, 3])
        assert prefilled == [1, 1]  # chunks of `batch_size` distinct prompts, decoded as one batch
    finally:
        hook.remove()
    alone = [backend.generate([p], SAMPLED, [s])[0] for p, s in ((LONG, 1), (LONG, 2), (SHORT, 7), (LONG, 3))]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone] == [g.token_ids for g in one_per_chunk]
    assert all(abs(a - b) < 1e-3 for x, y in zip(together, alone) for a, b in zip(x.token_logprobs, y.token_logprobs))
    assert len({tuple(g.token_ids) for g in together[:2] + together[3:]}) > 1  # the seeds still differ


def test_finished_rows_leave_the_decoding_batch_and_the_others_decode_as_if_alone(backend):
    decoded = []  # rows of each decoding step

    def record(module, args, kwargs):
        if kwargs.get("past_key_values") is not None and kwargs["input_ids"].shape[1] == 1:
            decoded.append(kwargs["input_ids"].shape[0])

    medium = [{"role": "user", "content": LONG[0]["content"][:150]}]
    prompts, greedy = [SHORT, LONG, medium], Sampling(temperature=0.0, max_new_tokens=40)
    hook = backend.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        together = backend.generate(prompts, greedy, [0, 0, 0])
    finally:
        hook.remove()
    lengths = sorted(len(g.token_ids) for g in together)
    assert all(g.finished for g in together) and lengths[0] < lengths[1] < lengths[2]  # they end apart
    assert decoded[0] == 3 and decoded[-1] == 1 and len(decoded) == lengths[2]  # shrinks, stops with the last
    alone = [backend.generate([p], greedy, [0])[0] for p in prompts]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert all(abs(a - b) < 1e-3 for x, y in zip(together, alone) for a, b in zip(x.token_logprobs, y.token_logprobs))


def test_prefill_chunks_pad_less_than_fixed_chunks_and_keep_every_prompt_once():
    from tasks.llm.transformers_backend import prefill_chunks

    lengths = [95, 100, 103, 119, 133, 140, 146, 150, 161, 165, 178, 190, 222, 245, 271, 298]
    chunks = prefill_chunks(lengths, most=4, overhead=16)
    assert [i for start, end in chunks for i in range(start, end)] == list(range(len(lengths)))
    assert all(0 < end - start <= 4 for start, end in chunks)

    def padded(cut):
        return sum(lengths[end - 1] * (end - start) for start, end in cut)

    fixed = [(start, start + 4) for start in range(0, len(lengths), 4)]
    assert padded(chunks) < padded(fixed) and len(chunks) > len(fixed)
    assert prefill_chunks(lengths, most=4, overhead=10**6) == fixed  # a dear chunk: as few as fit


def test_blocked_causal_attention_equals_sdpa():
    import torch

    from tasks.llm.cpu_attention import causal_attention

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, heads, 150, 64, generator=generator) for heads in (9, 3, 3))
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, enable_gqa=True)
    assert torch.allclose(causal_attention(query, key, value, 64**-0.5, block=64), expected, atol=1e-5)


def test_scoring_candidates_of_one_prompt_after_its_shared_prefix_equals_scoring_each_alone(backend):
    prompts = [LONG, LONG, SHORT, LONG]
    completions = ["A survey of retrieval", "Knowledge graphs and language models, a very long title", "GNNs", "RAG"]
    together = backend.score(prompts, completions)
    alone = [backend.score([p], [c])[0] for p, c in zip(prompts, completions)]
    assert [len(s.token_logprobs) for s in together] == [len(s.token_logprobs) for s in alone]
    assert all(abs(a - b) < 1e-3 for x, y in zip(together, alone) for a, b in zip(x.token_logprobs, y.token_logprobs))


def test_rows_batched_by_length_come_back_in_the_callers_order(backend, monkeypatch):
    monkeypatch.setattr(backend, "batch_size", 2)  # LONG and MEDIUM share a batch, SHORT goes first on its own
    medium = [{"role": "user", "content": LONG[0]["content"][:150]}]
    prompts = [LONG, SHORT, medium]
    alone = [backend.generate([p], GREEDY, [0])[0] for p in prompts]
    together = backend.generate(prompts, GREEDY, [0, 0, 0])
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    texts = [g.text for g in alone]
    scored_alone = [backend.score([p], [t])[0].token_logprobs for p, t in zip(prompts, texts)]
    scored_together = [s.token_logprobs for s in backend.score(prompts, texts)]
    assert [len(s) for s in scored_together] == [len(s) for s in scored_alone]
    assert all(abs(a - b) < 1e-3 for x, y in zip(scored_together, scored_alone) for a, b in zip(x, y))


def test_scoring_agrees_with_the_generation_log_probs(backend):
    generation = backend.generate([SHORT], Sampling(temperature=0.0, max_new_tokens=40), [0])[0]
    assert generation.finished and generation.token_ids[-1] == backend.eos_id
    scored = backend.score([SHORT, LONG], [generation.text, generation.text])[0]
    assert len(scored.token_logprobs) == len(generation.token_logprobs)
    assert max(abs(a - b) for a, b in zip(scored.token_logprobs, generation.token_logprobs)) < 1e-3


class CountingBackend:
    """Wraps the real backend and counts the prompts that reach it."""

    def __init__(self, real):
        self.real, self.rows_per_call, self.prompts = real, 2, 0

    def generate(self, prompts, sampling, seeds, one_line=False):
        self.prompts += len(prompts)
        return self.real.generate(prompts, sampling, seeds, one_line)

    def score(self, prompts, completions):
        self.prompts += len(prompts)
        return self.real.score(prompts, completions)

    def completion_token_ids(self, completion):
        return self.real.completion_token_ids(completion)

    def prompt_ids(self, messages):
        return self.real.prompt_ids(messages)


def test_cached_calls_never_reach_the_model_twice(backend, tmp_path):
    counting = CountingBackend(backend)
    model = ModelRef("flywheel-policy", 1, "fingerprint-for-test", tmp_path)
    with Store.open(tmp_path / "s.duckdb") as store:
        llm = CachedLLM(lambda ref: counting, LLMCallCache(store.con), model, progress=False)
        first = llm.generate([SHORT, LONG, SHORT], SAMPLED, [1, 2, 1], desc="test")
        assert counting.prompts == 2  # the duplicate request is sent once
        again = CachedLLM(lambda ref: counting, LLMCallCache(store.con), model, progress=False)
        assert again.generate([SHORT, LONG, SHORT], SAMPLED, [1, 2, 1], desc="test") == first
        assert again.calls == 0 and counting.prompts == 2
        assert (again.usage.requests, again.usage.cache_hits, again.usage.prompt_tokens) == (3, 3, 0)
        usage = llm.usage  # what a cost estimate reads: the two prompts that reached the model, and their outputs
        assert (usage.requests, usage.cache_hits, usage.calls) == (3, 1, 2) and usage.model_seconds > 0
        assert usage.prompt_tokens == len(backend.prompt_ids(SHORT)) + len(backend.prompt_ids(LONG))
        assert usage.completion_tokens == len(first[0].token_ids) + len(first[1].token_ids)
        greedy = llm.generate([SHORT], GREEDY, [1], desc="test")
        assert llm.generate([SHORT], GREEDY, [99], desc="test") == greedy  # seeds do not matter when greedy
        assert counting.prompts == 3


def test_a_finished_generation_answers_its_own_scoring_request(backend, tmp_path):
    counting = CountingBackend(backend)
    model = ModelRef("flywheel-policy", 1, "fingerprint-for-test", tmp_path)
    with Store.open(tmp_path / "s.duckdb") as store:
        llm = CachedLLM(lambda ref: counting, LLMCallCache(store.con), model, progress=False)
        generation = llm.generate([SHORT], Sampling(temperature=0.0, max_new_tokens=40), [0], desc="test")[0]
        assert generation.finished
        scored = llm.score([SHORT], [generation.text], desc="test")[0]
        assert counting.prompts == 1 and scored.token_logprobs == generation.token_logprobs
        llm.score([SHORT], [generation.text + " (edited)"], desc="test")
        assert counting.prompts == 2


def test_one_line_generations_stop_at_their_first_line_end_and_keep_that_line(backend):
    whole = backend.generate([LISTING, SHORT], TO_LINE_END, [0, 0])
    lines = backend.generate([LISTING, SHORT], TO_LINE_END, [0, 0], one_line=True)
    assert "\n" in whole[0].text.strip() and len(lines[0].token_ids) < len(whole[0].token_ids)  # cut short
    for full, line in zip(whole, lines):
        assert first_line(line.text) == first_line(full.text)
        assert line.token_ids == full.token_ids[: len(line.token_ids)]
    cut = lines[0]
    assert cut.finished and cut.end_logprob is not None and lines[1].end_logprob is None  # SHORT ends by itself
    scored = backend.score([LISTING], [first_line(cut.text)])[0].token_logprobs  # the line, ended there
    assert abs(scored[-1] - cut.end_logprob) < 1e-3


def test_a_line_starts_at_its_first_content_and_ends_at_the_next_break(backend):
    line_ends = LineEnds(backend.tokenizer)
    for text, kept in [
        ("\n\nA title here\nmore words", "\n\nA title here\n"),
        ("  A title\n\nAnother", "  A title\n"),
        ("A title without a break", None),
    ]:
        ids = backend.tokenizer.encode(text, add_special_tokens=False)
        count = line_ends.cut(ids)
        assert (None if count is None else backend.tokenizer.decode(ids[:count])) == kept


def test_a_line_stopped_generation_answers_the_scoring_of_its_line(backend, tmp_path):
    counting = CountingBackend(backend)
    model = ModelRef("flywheel-policy", 1, "fingerprint-for-test", tmp_path)
    with Store.open(tmp_path / "s.duckdb") as store:
        llm = CachedLLM(lambda ref: counting, LLMCallCache(store.con), model, progress=False)
        generation = llm.generate([LISTING], TO_LINE_END, [0], desc="test", one_line=True)[0]
        assert generation.end_logprob is not None and counting.prompts == 1
        assert llm.generate([LISTING], TO_LINE_END, [0], desc="test")[0].token_ids != generation.token_ids  # own key
        assert counting.prompts == 2
        scored = llm.score([LISTING], [first_line(generation.text)], desc="test")[0]
        assert counting.prompts == 2 and scored.token_logprobs[-1] == generation.end_logprob


def test_the_nucleus_from_the_most_likely_tokens_equals_the_one_from_a_full_sort():
    import torch

    from tasks.llm.transformers_backend import nucleus

    def full_sort(probs, top_p):
        ranked, order = probs.sort(descending=True)
        size = int((ranked.cumsum(-1) - ranked <= top_p).sum())
        return ranked[:size], order[:size]

    generator = torch.Generator().manual_seed(0)
    fallbacks = 0
    for case in range(100):  # peaked to nearly flat: some nuclei need far more than the first 256 tokens
        logits = torch.randn(3, 4096, generator=generator) * (0.2 + 6 * torch.rand(3, 1, generator=generator))
        probs = torch.softmax(logits, dim=-1)
        top_p = [0.5, 0.9, 0.95, 0.999][case % 4]
        fallbacks += int((probs.topk(256)[0].sum(-1) <= top_p).sum())
        for (kept, ids), row in zip(nucleus(probs, top_p), probs):
            expected_kept, expected_ids = full_sort(row, top_p)
            assert torch.equal(kept, expected_kept) and torch.equal(ids, expected_ids)
    assert 0 < fallbacks < 300  # both paths were taken


def test_a_generation_batch_holds_rows_per_call_rows_with_a_prompts_repeats_together():
    from tasks.llm.transformers_backend import TransformersBackend

    backend = TransformersBackend.__new__(TransformersBackend)  # batching only: no model needed
    backend.batch_size, backend.rows_per_call = 2, 8
    rows = [[1, 2]] * 3 + [[7, 8, 9]] * 9 + [[3, 4]] * 3 + [[5, 6]]
    batches = backend._generation_batches(rows)
    assert sorted(i for batch in batches for i in batch) == list(range(len(rows)))
    assert [[rows[i] for i in batch] for batch in batches] == [
        [[1, 2]] * 3 + [[3, 4]] * 3 + [[5, 6]] + [[7, 8, 9]],  # shortest first, cut at rows_per_call
        [[7, 8, 9]] * 8,
    ]
