"""The second bundled task end to end: a tiny turn of QuaRTz (params-quartz.yaml: two-choice science questions
answered with a letter, scored by accuracy), run the way a user runs it (`flywheel run --params`), with the real
packaged model. The task's metric reaches the summary, the scoreboard, MLflow and the gate."""

from __future__ import annotations

import pytest

from tests.project import write_params


@pytest.fixture(scope="module")
def quartz_turn(module_folder):
    from flows.cli import main
    from tasks.config import load_settings

    tiny = {"annotate": {"candidates": 2}, "evaluate": {"items": 8}}
    params = write_params(module_folder, tiny, base="params-quartz.yaml")
    assert main(["--params", str(params), "run", "--turns", "1"]) == 0
    return load_settings(params)


def _table(settings, name):
    from stores.store import Store

    with Store.open(settings.path("store")) as store:
        return store.read(name)


def test_the_items_are_the_questions_with_their_options_and_the_right_letter(quartz_turn):
    items = _table(quartz_turn, "items")
    assert len(items) == 3828 and set(items["reference"]) == {"A", "B"} and set(items["source"]) == {"quartz"}
    assert items["fields"].str.contains('"options": \\["A: ').all()


def test_the_scoreboard_is_accuracy_and_the_gate_reads_it(quartz_turn):
    board = _table(quartz_turn, "scoreboard")
    assert len(board) == 16 and board["exact_match"].isin([0.0, 1.0]).all()
    assert board["rouge_l"].isna().all() and board["minilm_sim"].isna().all()  # not this task's metrics
    assert set(board["caption"]) <= {"A", "B", ""}
    [promotion] = _table(quartz_turn, "promotions").to_dict("records")
    assert promotion["metric"] == "exact_match"
    candidate = board[board["role"] == "candidate"]["exact_match"].mean()
    assert promotion["candidate_score"] == pytest.approx(candidate)
    assert "delta_exact_match_ci_low" in promotion["guards"] and "answer_entropy" in promotion["guards"]
    assert "distinct_2" not in promotion["guards"] and "length_ratio" not in promotion["guards"]


def test_annotations_are_letters_and_preference_pairs_put_the_right_answer_first(quartz_turn):
    annotations = _table(quartz_turn, "annotations")
    assert set(annotations["caption"]) <= {"A", "B"}  # an answer naming neither is quarantined (empty caption)
    responses = _table(quartz_turn, "preference_responses")
    assert responses["similarity"].isin([0.0, 1.0]).all()  # correctness against the reference
    pairs = _table(quartz_turn, "preference_pairs")
    items = _table(quartz_turn, "items").set_index("item_id")["reference"]
    from tasks.prompts import task_output

    for pair in pairs[pairs["kept"]].to_dict("records"):
        assert task_output(pair["chosen"], quartz_turn.task) == items[pair["item_id"]]
        assert task_output(pair["rejected"], quartz_turn.task) != items[pair["item_id"]]


def test_mlflow_and_the_summary_show_the_tasks_metric(quartz_turn, capsys):
    from flows.cli import main
    from mlflow import MlflowClient
    from stores import tracking

    experiment = tracking.configure(quartz_turn.path("mlflow"), quartz_turn.experiment)
    [parent] = MlflowClient().search_runs([experiment], "tags.`flywheel.turn_key` = 'turn-1'")
    assert "heldout_candidate_exact_match" in parent.data.metrics
    assert "heldout_candidate_rouge_l" not in parent.data.metrics
    versions = MlflowClient().search_model_versions("name = 'quartz-policy'")
    assert len(versions) == 3  # its own lineage: base, refined, candidate
    assert main(["--params", str(quartz_turn.root / "params.yaml"), "summary", "--turn", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Held-out scoreboard (8 items never trained on)" in printed and "exact_match" in printed
    assert "rouge_l" not in printed
