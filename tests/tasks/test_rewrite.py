"""DMQR-RAG without a model: strategy templates, the selection parser on malformed output, fusion, retrieval metrics
against hand-computed values, the BEIR loader's errors, and the config pools."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from stores.index import CorpusIndex
from stores.store import Store
from tasks.errors import InputError
from tasks.rag_eval.scoreboard import summarize
from tasks.rewrite.beir import bundled_benchmark, bundled_to_beir, load_beir, split_queries
from tasks.rewrite.dmqr import QueryPool
from tasks.rewrite.metrics import hit_at, mrr_at, ndcg_at, precision_at, query_metrics, recall_at
from tasks.rewrite.rag_eval import rag_configs
from tasks.rewrite.strategies import STRATEGIES, parse_selection, selection_messages
from tests.stores.test_index import DOCS, CountingEmbed


def test_every_strategy_template_renders_the_query():
    query = "Graph neural networks for molecule property prediction"
    for name, strategy in STRATEGIES.items():
        [message] = strategy.messages(query, max_chars=600)
        assert query in message["content"] and "{" not in message["content"], name
    assert STRATEGIES["par"].query("q", "the answer") == "q the answer"  # PAR appends its pseudo-answer
    assert STRATEGIES["kwr"].query("q", "graphs, molecules") == "graphs, molecules"
    system, user = selection_messages(query, STRATEGIES, 600)
    assert all(name in system["content"] for name in STRATEGIES) and user["content"].endswith(query)


@pytest.mark.parametrize(
    "output, chosen, reason",
    [
        ("kwr\ncce\nReason: long abstract", ["kwr", "cce"], "long abstract"),
        ("1. Keyword\n- core content\nREASON: details", ["kwr", "cce"], "details"),
        ("par, gqr and kwr", ["par", "gqr", "kwr"], ""),
        ("`PAR`.\npar\nReason:", ["par"], ""),
        ("banana\nsomething else", ["gqr"], ""),  # nothing usable: the default
        ("", ["gqr"], ""),
        ("Reason: kwr is best\nkwr", ["gqr"], "kwr is best"),  # names after the reason line are not choices
    ],
)
def test_selection_parser_is_robust(output, chosen, reason):
    assert parse_selection(output, STRATEGIES) == (chosen, reason)


def test_selection_parser_only_offers_known_strategies():
    assert parse_selection("kwr\npar", {"par": STRATEGIES["par"]}) == (["par"], "")


def test_query_pool_keeps_the_original_first_and_skips_empty_rewrites():
    pool = QueryPool("original q", ["kwr", "par", "cce"], rewrites={"kwr": "k", "par": "", "cce": "original q"})
    assert pool.queries == ["original q", "k"]


def test_retrieval_metrics_by_hand():
    retrieved = ["a", "x", "b", "y", "z", "c"]
    relevant = {"a": 1, "b": 2, "c": 1, "d": 1}
    assert precision_at(retrieved, relevant, 5) == pytest.approx(2 / 5)
    assert hit_at(retrieved, relevant, 5) == 1.0 and hit_at(["x"], relevant, 5) == 0.0
    assert recall_at(retrieved, relevant, 10) == pytest.approx(3 / 4)
    assert mrr_at(["x", "y", "b"], relevant, 10) == pytest.approx(1 / 3)
    dcg = 1 / math.log2(2) + 2 / math.log2(4) + 1 / math.log2(7)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)
    assert ndcg_at(retrieved, relevant, 10) == pytest.approx(dcg / idcg)
    assert query_metrics([], relevant)["ndcg@10"] == 0.0


def test_rerank_fusion_orders_the_union_by_similarity_to_the_original(tmp_path):
    embed = CountingEmbed()
    with Store.open(tmp_path / "s.duckdb") as store:
        index = CorpusIndex(store.con, DOCS, embed, table="rag_test")
        [fused] = index.search([["pasta at home", "graph networks"]], k=4, fusion="rerank", depth=2)
        by_hand = embed(["pasta at home"])[0] @ index.vectors.T
    union_order = [index.doc_ids[i] for i in np.argsort(-by_hand, kind="stable") if index.doc_ids[i] in fused]
    assert fused == union_order and fused[0] == "pasta"


def test_configs_cover_original_each_strategy_all_and_adaptive():
    configs = rag_configs(["gqr", "kwr"], [["kwr"], ["gqr", "kwr"]])
    assert list(configs) == ["original", "gqr", "kwr", "all", "adaptive"]
    assert configs["original"] == [[], []] and configs["all"] == [["gqr", "kwr"], ["gqr", "kwr"]]


def _beir(folder, corpus=None, queries=None, qrels=None):
    files = {
        "corpus.jsonl": corpus or '{"_id": "d1", "title": "T", "text": "graphs"}\n{"_id": "d2", "text": "pasta"}\n',
        "queries.jsonl": queries or '{"_id": "q1", "text": "graph networks"}\n',
        "qrels.tsv": qrels or "query-id\tcorpus-id\tscore\nq1\td1\t1\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return load_beir(folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels.tsv")


def test_beir_loader_reads_a_valid_benchmark(tmp_path):
    bench = _beir(tmp_path)
    assert bench.corpus == {"d1": "T. graphs", "d2": "pasta"} and bench.qrels == {"q1": {"d1": 1}}


@pytest.mark.parametrize(
    "kind, text, message",
    [
        ("corpus", '{"_id": "d1", "text": "a"}\nnot json\n', r"corpus.jsonl:2: not valid JSON"),
        ("corpus", '{"_id": "d1"}\n', r"corpus.jsonl:1: field 'text'"),
        ("corpus", '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n', r"corpus.jsonl:2: duplicate _id"),
        ("queries", "[1, 2]\n", r"queries.jsonl:1: expected a JSON object"),
        ("qrels", "query-id\tcorpus-id\tscore\nq1 d1 1\n", r"qrels.tsv:2: expected 3 tab-separated"),
        ("qrels", "q1\td1\thigh\n", r"qrels.tsv:1: score 'high' is not an integer"),
        ("qrels", "q1\td9\t1\n", r"qrels.tsv:1: corpus-id 'd9' is not in corpus.jsonl"),
        ("qrels", "query-id\tcorpus-id\tscore\n", r"qrels.tsv: no judgments"),
    ],
)
def test_beir_loader_rejects_malformed_files_clearly(tmp_path, kind, text, message):
    with pytest.raises(InputError, match=message):
        _beir(tmp_path, **{kind: text})


def test_the_bundled_semanlink_benchmark_converts_to_beir(tmp_path):
    counts = bundled_to_beir("semanlink", tmp_path)
    assert counts == {"queries": 314, "documents": 433, "judgments": 1315}
    bench = load_beir(tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl", tmp_path / "qrels.tsv")
    assert len(bench.queries) == 314 and sum(map(len, bench.qrels.values())) == 1315
    first = json.loads((tmp_path / "queries.jsonl").read_text().splitlines()[0])
    assert len(first["text"]) > 100  # title + abstract
    assert pd.Series([len(v) for v in bench.qrels.values()]).min() >= 1
    assert bundled_benchmark() == bench  # the scoreboard's in-memory copy reads the same benchmark


def test_the_bundled_perovskite_benchmark_is_title_to_own_abstract_over_one_topic(tmp_path):
    counts = bundled_to_beir("perovskite", tmp_path)
    assert counts == {"queries": 254, "documents": 253, "judgments": 254}  # one abstract carries two titles
    bench = load_beir(tmp_path / "corpus.jsonl", tmp_path / "queries.jsonl", tmp_path / "qrels.tsv")
    assert all(len(relevant) == 1 for relevant in bench.qrels.values())
    about = sum("perovskite" in text.lower() for text in bench.corpus.values())
    assert about > 0.9 * len(bench.corpus)  # one narrow topic: every document a near neighbour of the right one
    assert max(map(len, bench.queries.values())) < 300 < sorted(map(len, bench.corpus.values()))[5]  # short queries
    assert bundled_benchmark("perovskite") == bench


def test_query_split_is_seeded_disjoint_and_stable():
    ids = [f"q{i}" for i in range(400)]
    train, heldout = split_queries(ids, 0.25, 13)
    assert sorted(train + heldout) == sorted(ids) and not set(train) & set(heldout)
    assert 70 <= len(heldout) <= 130
    assert split_queries(ids[::-1], 0.25, 13) == (train, heldout)  # the input order does not matter
    assert split_queries(ids[:200], 0.25, 13)[1] == [q for q in heldout if q in ids[:200]]  # nor the other queries
    assert split_queries(ids, 0.25, 14)[1] != heldout


def test_retrieval_scoreboard_summary_by_hand():
    rows = []
    for query, (start, candidate) in {"a": (0.2, 0.6), "b": (0.4, 0.4), "c": (0.0, 0.2)}.items():
        for role, adaptive, picks in (("start", start, ["kwr"]), ("candidate", candidate, ["gqr", "kwr"])):
            rows.append({"query_id": query, "role": role, "config": "original", "strategies": [], "p_at_5": 0.2})
            rows.append(
                {"query_id": query, "role": role, "config": "adaptive", "strategies": picks, "p_at_5": adaptive}
            )
    scores = pd.DataFrame(rows).assign(ndcg_at_10=0.5, rewrites=lambda f: f["strategies"].map(len))
    summary = summarize(scores, seed=1)
    assert summary["queries"] == 3 and summary["candidate_adaptive_p_at_5"] == pytest.approx(0.4)
    assert summary["candidate_adaptive_rewrites_per_query"] == 2 and summary["start_original_rewrites_per_query"] == 0
    assert summary["candidate_adaptive_gain_p_at_5"] == pytest.approx(0.2)
    assert summary["candidate_adaptive_gain_p_at_5_relative"] == pytest.approx(1.0)  # 0.4 vs 0.2
    assert summary["start_adaptive_gain_p_at_5"] == pytest.approx(0.0)
    assert summary["delta_adaptive_p_at_5"] == pytest.approx(0.2)
    assert summary["delta_adaptive_p_at_5_ci_low"] <= 0.2 <= summary["delta_adaptive_p_at_5_ci_high"]
    assert summary["candidate_selected_gqr"] == 3 and summary["candidate_top_strategy_share"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "raw, clean",
    [
        (
            'The core content of the text is: "Text: Symmetric matrices and the Mertens function."',
            "Symmetric matrices and the Mertens function.",
        ),
        ("Keywords: graphs, molecules", "graphs, molecules"),
        ("Graph neural networks: a review", "Graph neural networks: a review"),  # a colon inside the query stays
        ("Loop here. Loop here. Loop here. Then more.", "Loop here. Then more."),
    ],
)
def test_rewrites_are_cleaned_of_small_model_wrapping(raw, clean):
    from tasks.rewrite.dmqr import clean_rewrite

    assert clean_rewrite(raw, 300) == clean


def test_feedback_targets_keep_the_best_rewrite_that_beat_the_original_and_select_by_gain():
    from tasks.config import Feedback
    from tasks.rewrite.feedback import feedback_targets

    rows = [("a", "original", 0, "", 0.0)]
    rows += [("a", "kwr", 0, "kw worse", -0.1), ("a", "kwr", 1, "kw best", 0.3), ("a", "kwr", 2, "kw good", 0.2)]
    rows += [("a", "gqr", 0, "gq", 0.1), ("a", "cce", 0, "cc", 0.0), ("a", "par", 0, "pa", 0.05)]
    rows += [("b", "original", 0, "", 0.0), ("b", "kwr", 0, "", 0.4), ("b", "gqr", 0, "no better", 0.0)]
    feedback = pd.DataFrame(rows, columns=["query_id", "strategy", "sample", "output", "gain"])
    targets = feedback_targets(feedback, Feedback(max_selected=2))
    rewrites = targets[targets["kind"] == "sft-rewrite"]
    assert list(zip(rewrites["strategy"], rewrites["target"])) == [("gqr", "gq"), ("kwr", "kw best"), ("par", "pa")]
    assert set(rewrites["query_id"]) == {"a"}  # b: an empty rewrite is no target, a tie with the original neither
    [select] = targets.loc[targets["kind"] == "sft-select", "target"]
    chosen, reason = parse_selection(select, STRATEGIES)
    assert chosen == ["kwr", "gqr"] and reason  # best first, at most max_selected
    assert len(feedback_targets(feedback, Feedback(min_gain=0.2))) == 2  # kwr 0.3 alone, and its selection


def test_feedback_pairs_set_the_best_retrieving_sample_over_the_worst_when_they_clearly_differ():
    from tasks.config import Feedback
    from tasks.rewrite.feedback import feedback_pairs

    rows = [("a", "original", 0, "", 0.0)]
    rows += [("a", "kwr", 0, "kw worse", -0.1), ("a", "kwr", 1, "kw best", 0.3), ("a", "kwr", 2, "kw good", 0.2)]
    rows += [("a", "gqr", 0, "gq near", 0.12), ("a", "gqr", 1, "gq best", 0.15)]  # a near tie
    rows += [("a", "cce", 0, "cc", 0.2), ("a", "cce", 1, "cc", 0.0)]  # the same text twice is no pair
    rows += [("a", "par", 0, "pa", 0.0), ("a", "par", 1, "pa worse", -0.3)]  # the best did not beat the original
    rows += [("b", "original", 0, "", 0.0), ("b", "kwr", 0, "", 0.4), ("b", "kwr", 1, "kw b", -0.2)]
    feedback = pd.DataFrame(rows, columns=["query_id", "strategy", "sample", "output", "gain"])
    pairs = feedback_pairs(feedback, Feedback(min_gap=0.05))
    assert list(zip(pairs["query_id"], pairs["strategy"], pairs["chosen"], pairs["rejected"])) == [
        ("a", "kwr", "kw best", "kw worse")
    ]  # b: an empty rewrite is neither side, and one sample makes no pair
    assert pairs["gap"].iloc[0] == pytest.approx(0.4)
    assert len(feedback_pairs(feedback, Feedback(min_gap=0.02))) == 2  # the gqr pair clears a smaller gap
    assert feedback_pairs(feedback.iloc[::-1].reset_index(drop=True), Feedback()).equals(pairs)


def test_feedback_targets_do_not_depend_on_the_order_the_rows_come_in():
    """The retrain stage and a later reader get the store's rows in whatever order it returns them."""
    from tasks.config import Feedback
    from tasks.rewrite.feedback import feedback_targets

    rows = [("a", "original", 0, "", 0.0), ("a", "kwr", 0, "kw", 0.2), ("a", "cce", 0, "cc", 0.2)]
    feedback = pd.DataFrame(rows, columns=["query_id", "strategy", "sample", "output", "gain"])
    forward = feedback_targets(feedback, Feedback(max_selected=2))
    backward = feedback_targets(feedback.iloc[::-1].reset_index(drop=True), Feedback(max_selected=2))
    assert forward.equals(backward)
    assert forward.loc[forward["kind"] == "sft-select", "target"].iloc[0].startswith("cce\nkwr\n")  # a tie: by name
