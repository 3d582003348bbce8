"""Preference data and DPO variants on hand-made inputs: the dual-clip loss against hand-computed values,
extrapolation arithmetic on a tiny model, the filter rules, the correction logic, prompt dedupe and balancing."""

import math
from collections import Counter

import pandas as pd
import pytest
import torch

from stores.registry import ModelRef
from tasks.config import MatrixCell
from tasks.errors import InputError
from tasks.preference.collect_prompts import balance, category_of
from tasks.preference.filter_responses import filter_responses, select_pairs
from tasks.preference.generate_responses import HUMAN, resolve_matrix
from tasks.preference.label_pairs import (
    ai_labels,
    apply_human_labels,
    correct_with_references,
    labelling_queue,
    read_labels,
)
from tasks.preference.scorer import rule_violations
from tasks.retrain.dpo import dual_clip_loss, extrapolate, round_steps


def _nll_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


@pytest.mark.parametrize(
    "r_w, r_l, expected_margin",
    [
        (0.3, -0.2, 0.5),  # inside both clips: plain DPO, −log σ(0.5)
        (2.5, -0.2, 1.2),  # chosen past c_w = 1: counts as 1
        (0.3, -4.0, 1.8),  # rejected past −c_l = −1.5: counts as −1.5
        (3.0, -3.0, 2.5),  # both clipped
        (-0.4, 0.6, -1.0),  # wrong order, no clipping
    ],
)
def test_dual_clip_loss_by_hand(r_w, r_l, expected_margin):
    loss = dual_clip_loss(torch.tensor([r_w]), torch.tensor([r_l]), clip_chosen=1.0, clip_rejected=1.5)
    assert loss.item() == pytest.approx(_nll_sigmoid(expected_margin), rel=1e-6)


def test_dual_clip_stops_the_gradient_past_the_clips():
    r_w = torch.tensor([2.0, 0.5], requires_grad=True)
    r_l = torch.tensor([-0.5, -3.0], requires_grad=True)
    dual_clip_loss(r_w, r_l, clip_chosen=1.0, clip_rejected=1.0).sum().backward()
    assert r_w.grad[0] == 0 and r_w.grad[1] < 0  # the clipped chosen reward is pushed up no further
    assert r_l.grad[1] == 0 and r_l.grad[0] > 0  # the clipped rejected reward is pushed down no further


def test_extrapolation_moves_past_the_policy_by_alpha():
    torch.manual_seed(0)
    reference = torch.nn.Linear(3, 2)
    model = torch.nn.Linear(3, 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    extrapolate(model, reference, alpha=0.5)
    for name, param in model.named_parameters():
        ref = dict(reference.named_parameters())[name].detach()
        assert torch.allclose(param, before[name] + 0.5 * (before[name] - ref))
    extrapolate(reference, reference, alpha=0.3)  # θ = θ_ref: nothing moves


def test_round_steps_spread_the_budget():
    assert round_steps(5, 2) == [3, 2]
    assert round_steps(4, 4) == [1, 1, 1, 1]
    assert round_steps(1, 2) == [1, 0]


def _scored(rows):
    frame = pd.DataFrame(rows, columns=["item_id", "generator", "response_idx", "text", "score"])
    frame["violations"] = [",".join(rule_violations(t, 8, 160)) for t in frame["text"]]
    return frame


def test_filters_drop_degenerate_responses_near_ties_and_both_bad_pairs():
    responses = filter_responses(
        _scored(
            [
                ("a", "g1", 0, "Graph neural networks for molecules", 0.8),
                ("a", "g1", 1, "short", 0.9),  # degenerate: too short, however well scored
                ("a", "g2", 0, "graph neural networks  for molecules", 0.7),  # repeats response 0
                ("a", "g2", 1, "A survey of chemistry", 0.3),
                ("b", "g1", 0, "Knowledge graphs in practice", 0.50),
                ("b", "g2", 0, "Knowledge graph practice notes", 0.52),  # near tie with the other
                ("c", "g1", 0, "Unrelated words about lunch", 0.10),
                ("c", "g2", 0, "Other unrelated lunch words", -0.2),  # both bad: best 0.10 < 0.2
            ]
        )
    )
    assert list(responses["reason"]) == ["", "degenerate:too_short", "repeated", "", "", "", "", ""]
    pairs = select_pairs(responses, min_score_gap=0.05, min_chosen_score=0.2).set_index("item_id")
    assert pairs.loc["a", ["chosen", "rejected", "kept"]].tolist() == [
        "Graph neural networks for molecules",
        "A survey of chemistry",
        True,
    ]
    assert pairs.loc["b", "reason"] == "near_tie" and pairs.loc["c", "reason"] == "both_bad"


def test_no_pair_candidates_still_give_a_typed_frame_that_masks_to_no_rows():
    """A DPO round whose items have no two kept responses (regenerate.py) filters its pairs by `kept`."""
    responses = filter_responses(_scored([("a", "g1", 0, "Graph neural networks for molecules", 0.7)]))
    pairs = correct_with_references(ai_labels(select_pairs(responses, 0.05, 0.2)), responses)
    kept = pairs[pairs["kept"]]
    assert kept.empty and "item_id" in kept.columns and list(kept["item_id"]) == []


def test_human_reference_wins_over_the_response_the_ai_ranked_above_it():
    responses = filter_responses(
        _scored(
            [
                ("h", HUMAN, 0, "Attention Is All You Need", 0.40),
                ("h", "g1", 0, "Transformers use attention layers", 0.70),
                ("h", "g1", 1, "Some generic title text", 0.10),
                ("k", HUMAN, 0, "Word2vec explained simply", 0.90),
                ("k", "g1", 0, "Embeddings of words in vectors", 0.50),
            ]
        )
    )
    pairs = ai_labels(select_pairs(responses, 0.05, 0.2))
    corrected = correct_with_references(pairs, responses).set_index("item_id")
    assert corrected.loc["h", ["chosen", "rejected", "corrected"]].tolist() == [
        "Attention Is All You Need",
        "Transformers use attention layers",
        True,
    ]
    assert corrected.loc["k", "chosen"] == "Word2vec explained simply" and not corrected.loc["k", "corrected"]
    assert set(corrected["label_source"]) == {"human_reference"}


def test_queue_hides_the_ai_choice_and_a_disagreeing_label_flips_the_pair(tmp_path):
    texts = [(f"i{n}", f"Good title number {n}", f"Worse title number {n}") for n in range(40)]
    pairs = ai_labels(
        pd.DataFrame(
            {
                "item_id": [i for i, _, _ in texts],
                "chosen": [c for _, c, _ in texts],
                "rejected": [r for _, _, r in texts],
                "chosen_generator": "g1",
                "rejected_generator": "g2",
                "chosen_score": 0.8,
                "rejected_score": 0.3,
                "kept": True,
                "reason": "",
            }
        )
    )
    queue = labelling_queue(pairs, share=0.5, seed=13)
    assert 10 <= len(queue) <= 30 and set(queue["ai_preferred"]) == {"a", "b"}
    assert queue.equals(labelling_queue(pairs, share=0.5, seed=13))
    first, second = queue.iloc[0], queue.iloc[1]
    disagree = "b" if first["ai_preferred"] == "a" else "a"
    labels_file = tmp_path / "labels.jsonl"
    labels_file.write_text(
        f'{{"pair_id": "{first["pair_id"]}", "preferred": "{disagree}"}}\n'
        f'{{"pair_id": "{second["pair_id"]}", "preferred": "{second["ai_preferred"]}"}}\n'
    )
    merged, queue = apply_human_labels(pairs, queue, read_labels(labels_file))
    flipped = merged.set_index("pair_id").loc[first["pair_id"]]
    assert flipped["chosen"].startswith("Worse") and flipped["corrected"] and flipped["label_source"] == "human_label"
    kept = merged.set_index("pair_id").loc[second["pair_id"]]
    assert kept["chosen"].startswith("Good") and not kept["corrected"]
    assert (queue["status"] == "labelled").sum() == 2


def test_a_bad_label_line_names_file_and_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"pair_id": "x", "preferred": "a"}\n{"pair_id": "y", "preferred": "maybe"}\n')
    with pytest.raises(InputError, match=r"labels.jsonl:2: preferred"):
        read_labels(path)
    assert read_labels(tmp_path / "missing.jsonl") == {}


def test_categories_and_round_robin_balance():
    counts = Counter({"nlp": 10, "graphs": 5, "rare": 1})
    assert category_of(["rare", "graphs"], counts) == "graphs"
    assert category_of([], counts) == "untagged"
    categories = ["nlp", "nlp", "nlp", "graphs", "nlp", "graphs", "rare"]
    taken = balance(categories, [True] * 7, quota=4)
    assert [c for c, t in zip(categories, taken) if t] == ["nlp", "nlp", "graphs", "rare"]


def test_matrix_cells_merge_and_missing_roles_are_reported():
    v1 = ModelRef("m", 1, "f1", None)
    cells = (
        MatrixCell(model="champion", temperature=1.0, responses=2),
        MatrixCell(model="base", temperature=1.0, responses=3),  # same model and sampling as the champion at turn 1
        MatrixCell(model="champion", temperature=0.7),
        MatrixCell(model="previous"),
    )
    generators, skipped = resolve_matrix(cells, {"champion": v1, "base": v1, "previous": None}, None, 32)
    assert [(g.label, g.responses) for g in generators] == [("m/v1 T0.7 p0.95", 2), ("m/v1 T1 p0.95", 3)]
    assert skipped == ["previous T1: no such model yet"]
