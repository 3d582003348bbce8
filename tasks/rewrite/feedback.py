"""Retrieval feedback: the labels a turn gets for free. For the turn's window of the benchmark's train queries (the
Semanlink arXiv→tags queries the retrieval scoreboard does not hold out), the model samples several rewrites per
strategy, and each is scored by what its pool (the original query + that rewrite) retrieves, against the
benchmark's relevance judgments (nDCG@10), beside the original query alone. Two kinds of training data follow:

- `sft-rewrite`: for each query and strategy, the sampled rewrite that retrieved best, if it beat the original
  by more than `min_gain`: the target of that strategy's prompt (what retrieval rewarded, not what sounded good);
- `sft-select`: for each query, the strategies whose best rewrite beat the original (at most `max_selected`, best
  first): the target of the selection prompt, so the selector learns which strategies help which query.

The retrain stage trains on them beside the caption data. Held-out queries are never sampled here.
`feedback_pairs` gives a third kind, rewriting preference pairs (best sample over worst); `bench/rewrite_feedback.py`
trains on them by DPO, and the turn does not until a recipe beats the untaught model there (README).
"""

from __future__ import annotations

import pandas as pd

from stores.index import CorpusIndex
from stores.schema import Column, TableSpec
from tasks.config import Feedback
from tasks.llm.backend import Messages
from tasks.llm.embeddings import dense_index
from tasks.rewrite.beir import Benchmark, bundled_benchmark, split_queries
from tasks.rewrite.dmqr import clean_rewrite
from tasks.rewrite.metrics import query_metrics
from tasks.rewrite.strategies import STRATEGIES, selection_messages
from tasks.stage import derive_seed, turn_window

FEEDBACK_KINDS = ("sft-rewrite", "sft-select")
ORIGINAL = "original"  # the strategy name of the original query's own row
BENCHMARK_INDEX = "rag_semanlink"  # the benchmark's tag documents, shared with the scoreboard (tasks/rag_eval)
FEEDBACK = TableSpec(
    "rewrite_feedback",
    (
        Column("query_id", "VARCHAR", min_length=1),
        Column("strategy", "VARCHAR", min_length=1),  # a strategy, or "original" for the original query alone
        Column("sample", "INTEGER", min_value=0),
        Column("output", "VARCHAR"),  # what the model wrote (the training target)
        Column("ndcg_at_10", "DOUBLE", min_value=0.0, max_value=1.0),
        Column("p_at_5", "DOUBLE", min_value=0.0, max_value=1.0),
        Column("gain", "DOUBLE", min_value=-1.0, max_value=1.0),  # nDCG@10 over the original query's
    ),
    key=("query_id", "strategy", "sample"),
    item_level=False,  # rows describe benchmark queries, not items
)


def benchmark_index(con, dtype: str) -> tuple[Benchmark, CorpusIndex]:
    """The bundled Semanlink arXiv→tags benchmark and its BM25 + dense index in the store."""
    bench = bundled_benchmark()
    docs = pd.DataFrame({"doc_id": list(bench.corpus), "text": list(bench.corpus.values())})
    return bench, dense_index(con, docs, dtype, BENCHMARK_INDEX)


def train_window(bench: Benchmark, heldout_fraction: float, seed: int, turn: int, count: int) -> list[str]:
    """This turn's `count` train queries: consecutive windows over the seeded train order, wrapping around."""
    train, _ = split_queries(sorted(bench.queries), heldout_fraction, seed)
    return [train[position] for position in turn_window(len(train), turn, count)]


def collect_feedback(
    bench: Benchmark,
    query_ids: list[str],
    llm,
    index: CorpusIndex,
    names: list[str],
    cfg: Feedback,
    max_chars: int,
    retrieval: dict,
    seed: int,
) -> pd.DataFrame:
    """Every sampled rewrite of every query and strategy with its retrieval scores; the original alone as
    strategy "original" (sample 0, gain 0). `retrieval` holds the search arguments (rrf_k, fusion, depth)."""
    texts = [bench.queries[q] for q in query_ids]
    rows = [
        {"query_id": q, "strategy": ORIGINAL, "sample": 0, "output": "", "pool": [t]} for q, t in zip(query_ids, texts)
    ]
    for name in names:
        strategy = STRATEGIES[name]
        plan = [(q, t, k) for q, t in zip(query_ids, texts) for k in range(cfg.samples)]
        generations = llm.generate(
            [strategy.messages(t, max_chars) for _, t, _ in plan],
            cfg.sampling,
            [derive_seed(seed, "feedback", q, name, k) for q, _, k in plan],
            desc=f"feedback/{name}",
        )
        for (q, t, k), generation in zip(plan, generations):
            output = clean_rewrite(generation.text, 2 * max_chars)
            pool = [t, strategy.query(t, output)] if output else [t]
            rows.append({"query_id": q, "strategy": name, "sample": k, "output": output, "pool": pool})
    frame = pd.DataFrame(rows)
    retrieved = index.search([list(dict.fromkeys(p)) for p in frame["pool"]], 10, **retrieval)
    scores = [query_metrics(r, bench.qrels[q]) for r, q in zip(retrieved, frame["query_id"])]
    frame["ndcg_at_10"] = [s["ndcg@10"] for s in scores]
    frame["p_at_5"] = [s["p@5"] for s in scores]
    original = frame[frame["strategy"] == ORIGINAL].set_index("query_id")["ndcg_at_10"]
    frame["gain"] = frame["ndcg_at_10"] - frame["query_id"].map(original)
    return frame.drop(columns="pool")


def _ranked_rewrites(feedback: pd.DataFrame) -> pd.DataFrame:
    """The non-empty rewrites, best gain first; ties broken by sample and strategy name, so what follows does not
    depend on the order the rows were read in."""
    rewrites = feedback[(feedback["strategy"] != ORIGINAL) & (feedback["output"] != "")]
    return rewrites.sort_values(["gain", "sample", "strategy"], ascending=[False, True, True])


def feedback_targets(feedback: pd.DataFrame, cfg: Feedback) -> pd.DataFrame:
    """The training targets: (query_id, kind, strategy, target), `sft-rewrite` rows then `sft-select` rows."""
    best = _ranked_rewrites(feedback).drop_duplicates(["query_id", "strategy"])
    winners = best[best["gain"] > cfg.min_gain]
    rows = [
        {"query_id": r.query_id, "kind": "sft-rewrite", "strategy": r.strategy, "target": r.output}
        for r in winners.sort_values(["query_id", "strategy"]).itertuples()
    ]
    for query_id, group in winners.groupby("query_id", sort=True):
        chosen = list(group["strategy"])[: cfg.max_selected]  # best first (sorted by gain above)
        reason = f"Reason: {STRATEGIES[chosen[0]].guideline}"
        rows.append(
            {"query_id": query_id, "kind": "sft-select", "strategy": "", "target": "\n".join([*chosen, reason])}
        )
    return pd.DataFrame(rows, columns=["query_id", "kind", "strategy", "target"])


def feedback_pairs(feedback: pd.DataFrame, cfg: Feedback) -> pd.DataFrame:
    """Rewriting preference pairs (query_id, strategy, chosen, rejected, gap): per query and strategy, the sample
    that retrieved best against the one that retrieved worst, kept when the best beat the original by more than
    `min_gain` and the two differ by at least `min_gap` nDCG@10 (the caption pairs' near-tie rule). Unlike an SFT
    target, a pair says what retrieval rewarded *relative to* another sample of the same prompt."""
    ranked = _ranked_rewrites(feedback)
    keys = ["query_id", "strategy"]
    best = ranked.drop_duplicates(keys, keep="first").set_index(keys)
    worst = ranked.drop_duplicates(keys, keep="last").set_index(keys)
    joined = best.join(worst, rsuffix="_worst").reset_index()
    gap = joined["gain"] - joined["gain_worst"]
    kept = (joined["gain"] > cfg.min_gain) & (gap >= cfg.min_gap) & (joined["output"] != joined["output_worst"])
    pairs = joined[kept].assign(chosen=joined["output"], rejected=joined["output_worst"], gap=gap)
    return pairs.sort_values(keys)[[*keys, "chosen", "rejected", "gap"]].reset_index(drop=True)


def strategy_number(name: str) -> int:
    """A strategy's number in training rows' `candidate` column: 1, 2, ... in `STRATEGIES` order; 0 for selection."""
    return list(STRATEGIES).index(name) + 1 if name else 0


def target_prompts(query_ids, kinds, numbers, names: list[str], max_chars: int) -> list[Messages]:
    """The prompt each target answers: its strategy's rewriting prompt (`numbers`: strategy numbers), or the
    selection prompt over `names`; the same for training (retrain) and for the published dataset."""
    queries = bundled_benchmark().queries
    offered = {n: STRATEGIES[n] for n in names}
    strategies = list(STRATEGIES)
    return [
        STRATEGIES[strategies[number - 1]].messages(queries[q], max_chars)
        if kind == "sft-rewrite"
        else selection_messages(queries[q], offered, max_chars)
        for q, kind, number in zip(query_ids, kinds, numbers)
    ]
