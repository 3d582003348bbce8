"""Pure stage logic on hand-made tables (no model): noise tail, rules, fusion, metrics, gates."""

import pandas as pd
import pytest

from stores.index import reciprocal_rank_fusion
from tasks.config import Promote, Sft, Task
from tasks.evaluate.evaluate import summarize
from tasks.metrics import rouge_l
from tasks.preference.scorer import rule_violations
from tasks.promote import decide
from tasks.retrain.retrain import phase_steps, sft_phases
from tasks.rewrite.rewrite import tag_precision


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Graph Neural Networks: A Practical Guide", []),
        ('The title is "A Guide"', ["restates_instruction"]),
        ("short", ["too_short"]),
        ("A title\nand a second line", ["multi_line"]),
        ("deep deep deep deep deep learning learning", ["repetitive"]),
        ("x" * 200, ["too_long"]),
    ],
)
def test_format_rules(text, expected):
    assert rule_violations(text, min_chars=8, max_chars=160) == expected


def test_reciprocal_rank_fusion_by_hand():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]], k=1)
    # a: 1/2; b: 1/3 + 1/2; c: 1/4 + 1/3; d: 1/4
    assert fused == ["b", "c", "a", "d"]


def test_tag_precision():
    tags = {"d1": {"nlp"}, "d2": {"vision"}, "d3": {"nlp", "kg"}}
    assert tag_precision(["d1", "d2", "d3"], {"nlp"}, tags) == pytest.approx(2 / 3)
    assert tag_precision([], {"nlp"}, tags) == 0.0


def test_rouge_l_by_hand():
    # LCS("graph neural networks guide", "a guide to graph networks") = "graph networks" (2 tokens):
    # precision 2/4, recall 2/5, F1 = 2PR/(P+R) = 4/9
    assert rouge_l("graph neural networks guide", "a guide to graph networks") == pytest.approx(4 / 9)
    assert rouge_l("", "anything") == 0.0


def test_scoreboard_summary_pairs_items():
    board = pd.DataFrame(
        {
            "item_id": ["a", "b", "a", "b"],
            "role": ["start", "start", "candidate", "candidate"],
            "caption": ["a b c", "a b c", "one two three", "four five"],
            "rouge_l": [0.1, 0.3, 0.4, 0.4],
            "minilm_sim": [0.5, 0.5, 0.5, 0.7],
        }
    )
    summary = summarize(board, Task(), seed=0, resamples=200)
    assert summary["start_rouge_l"] == pytest.approx(0.2) and summary["candidate_rouge_l"] == pytest.approx(0.4)
    assert summary["delta_rouge_l"] == pytest.approx(0.2)
    assert 0.1 - 1e-9 <= summary["delta_rouge_l_ci_low"] <= summary["delta_rouge_l_ci_high"] <= 0.3 + 1e-9
    # "a b c" twice: bigrams (a b), (b c) repeated -> 2 distinct of 4; the candidate repeats none
    assert summary["start_distinct_2"] == 0.5 and summary["candidate_distinct_2"] == 1.0
    assert summary["start_mean_words"] == 3.0 and summary["candidate_mean_words"] == 2.5


def _evaluation(delta=0.02, low=0.005, high=0.04, distinct=(0.8, 0.8), words=(8.0, 8.0), secondary_high=0.01):
    return {
        "delta_rouge_l": delta,
        "delta_rouge_l_ci_low": low,
        "delta_rouge_l_ci_high": high,
        "delta_minilm_sim_ci_high": secondary_high,
        "start_distinct_2": distinct[0],
        "candidate_distinct_2": distinct[1],
        "start_mean_words": words[0],
        "candidate_mean_words": words[1],
        "reference_mean_words": 8.0,
    }


def test_promotion_gate_needs_evidence_and_every_guard():
    gate = Promote()
    assert decide(_evaluation(), gate)[0]
    assert not decide(_evaluation(low=-0.01), gate)[0]  # a positive mean inside the noise is not evidence
    assert decide(_evaluation(low=-0.01), Promote(evidence="point"))[0]
    assert not decide(_evaluation(low=0.005), Promote(min_delta=0.01))[0]
    promoted, reason, checks = decide(_evaluation(distinct=(0.8, 0.7)), gate)  # diversity fell by 12.5% > 10%
    assert not promoted and not checks["distinct_2"]["passed"] and "distinct_2" in reason
    assert not decide(_evaluation(words=(8.0, 14.0)), gate)[0]  # 1.75x the references' length: exploitation
    assert not decide(_evaluation(words=(8.0, 4.0)), gate)[0]
    assert decide(_evaluation(words=(20.0, 14.0)), gate)[0]  # still long, but moving towards human length
    assert not decide(_evaluation(secondary_high=-0.001), gate)[0]  # MiniLM similarity surely worse
    assert decide(_evaluation(secondary_high=-0.001), Promote(secondary_must_hold=False))[0]


def test_human_refinement_comes_last_by_default_and_its_share_is_a_param():
    synthetic = pd.DataFrame({"target": ["s1", "s2", "s3"], "kind": "sft-synthetic"})
    human = pd.DataFrame({"target": ["h1"], "kind": "sft-human"})
    after = Sft(max_steps=8)
    phases = sft_phases(synthetic, human, after, seed=0)
    assert [list(p["target"]) for p in phases] == [["s1", "s2", "s3"], ["h1"]]
    assert phase_steps(phases, after) == [6, 2]  # proportional to size by default
    assert phase_steps(phases, Sft(max_steps=8, human_share=0.5)) == [4, 4]
    before = Sft(human_order="before")
    assert [list(p["target"]) for p in sft_phases(synthetic, human, before, seed=0)] == [["h1"], ["s1", "s2", "s3"]]
    assert len(sft_phases(synthetic, human.iloc[0:0], after, seed=0)) == 1
    [mixed] = sft_phases(synthetic, human, Sft(human_order="mixed", human_share=0.5), seed=0)
    assert (mixed["kind"] == "sft-human").sum() == 3  # resampled to half of the mixed set


def test_retrieval_feedback_is_a_first_phase_of_one_pass_that_leaves_the_caption_steps_alone():
    synthetic = pd.DataFrame({"target": ["s1", "s2", "s3"], "kind": "sft-synthetic"})
    human = pd.DataFrame({"target": ["h1"], "kind": "sft-human"})
    feedback = pd.DataFrame({"target": [f"f{i}" for i in range(9)], "kind": ["sft-rewrite"] * 7 + ["sft-select"] * 2})
    cfg = Sft(max_steps=8, batch_size=2, gradient_accumulation=2)
    phases = sft_phases(synthetic, human, cfg, seed=0, feedback=feedback)
    assert [len(p) for p in phases] == [9, 3, 1]
    assert phase_steps(phases, cfg) == [3, 6, 2]  # ceil(9 / (2 x 2)), then the captions' 8 as without feedback
    assert phase_steps(phases[1:], cfg) == [6, 2]
    assert len(sft_phases(synthetic, human, cfg, seed=0, feedback=feedback.iloc[0:0])) == 2
