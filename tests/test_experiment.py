"""Three real (tiny) turns of two experiment arms through `flywheel experiment`: what only later turns exercise.

`full` runs the default recipe with a gate that promotes on the point estimate; `human_only` trains on human titles
only, with its gate forced to refuse (min_delta 1.0), so its champion must stay the base model turn after turn.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.project import git_checkout, write_params

pytestmark = pytest.mark.integration

SPEC = {
    "name": "tiny",
    "turns": 3,
    "baseline": "human_only",
    "params": {
        "skip": ["rewrite"],  # as in experiments/ablation.yaml: no stage reads the rewrites
        # smaller than TINY (the turn test covers those sizes): what is checked here needs only a few of each
        "preference": {"prompts_per_turn": 2, "human_prompts_per_turn": 1},
        "rag_eval": {"queries": 1},
    },
    "arms": {
        "full": {"promote": {"evidence": "point", "max_diversity_drop": 1.0, "secondary_must_hold": False}},
        "human_only": {
            "retrain": {"sft": {"max_steps": 4, "synthetic": False}, "dpo": {"max_steps": 0}},
            "skip": ["annotate", "denoise", "preference", "rewrite", "rag_eval"],
            "promote": {"min_delta": 1.0},
        },
    },
}


@pytest.fixture(scope="module")
def experiment(module_folder):
    from flows.experiment import arm_settings, load_spec, run_experiment

    params = write_params(module_folder, {"context": {"docs": 0}, "data": {"probe_items": 4}})
    git_checkout(module_folder)  # a user's clone: every arm's published turns must be committable there
    spec_file = module_folder / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    report = run_experiment(params, spec_file)
    arms = {arm: settings for arm, (_, settings) in arm_settings(params, load_spec(spec_file)).items()}
    return params, spec_file, report, arms


def _table(settings, name):
    from stores.store import Store

    with Store.open(settings.path("store")) as store:
        return store.read(name)


def test_turn_windows_advance_and_the_probe_stays_out_of_them(experiment):
    from tasks.runner import next_turn
    from tasks.stage import seeded_order

    _, _, _, arms = experiment
    full = arms["full"]
    assert next_turn(full) == 4 and next_turn(arms["human_only"]) == 4
    annotations = _table(full, "annotations")
    runs = _table(full, "stage_runs").set_index("batch_id")
    windows = [set(annotations[annotations["batch_id"].map(runs["turn"]) == t]["item_id"]) for t in (1, 2, 3)]
    assert all(len(w) == 8 for w in windows)  # TINY: 8 items per turn
    assert not (windows[0] & windows[1]) and not (windows[1] & windows[2]) and not (windows[0] & windows[2])
    items = _table(full, "items")
    probe = set(seeded_order(items[items["split"] == "train"], full.seed)["item_id"].iloc[-full.data.probe_items :])
    assert len(probe) == 4 and not probe & set.union(*windows)


def test_every_arms_turns_are_published_where_git_keeps_their_dvc_files(experiment):
    import subprocess

    params, _, _, arms = experiment
    for arm, settings in arms.items():
        for turn in (1, 2, 3):
            dvc_file = settings.path("turns") / settings.model.registry_name / f"turn-{turn}.dvc"
            assert dvc_file.exists(), f"{arm} turn {turn} was not published"
            ignored = subprocess.run(["git", "check-ignore", "-q", str(dvc_file)], cwd=params.parent)
            assert ignored.returncode == 1, f"{dvc_file} is git-ignored"


def test_a_changed_recipe_is_refused_before_it_mixes_into_the_arms_lineage(experiment, tmp_path):
    from flows.experiment import run_experiment
    from tasks.config import ConfigError

    params, _, _, _ = experiment
    changed = {**SPEC, "arms": {**SPEC["arms"], "full": {"retrain": {"sft": {"learning_rate": 1.0e-4}}}}}
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(changed))
    with pytest.raises(ConfigError, match="arm full: turn 1 of flywheel-policy-tiny-full finished with other params"):
        run_experiment(params, spec_file)


def test_a_refused_candidate_leaves_the_champion_and_the_next_turn_starts_from_it(experiment):
    from stores.store import Store

    _, _, report, arms = experiment
    settings = arms["human_only"]
    with Store.open(settings.path("store")) as store:
        starts = [store.turn_start_version(settings.model.registry_name, t) for t in (1, 2, 3)]
    promotions = _table(settings, "promotions")
    mine = promotions[promotions["start_version"].isin(starts)]
    assert starts == [1, 1, 1]
    human = report.rows[report.rows["arm"] == "human_only"]
    assert list(human["promoted"].dropna()) == [False, False, False]
    guards = [json.loads(g) for g in mine["guards"]]
    assert all(not g["delta_rouge_l_ci_low"]["passed"] for g in guards if "delta_rouge_l_ci_low" in g)


def test_later_turns_start_from_the_champion_and_use_the_previous_role(experiment):
    from stores.registry import Registry
    from stores.store import Store
    from stores.tracking import configure

    _, _, report, arms = experiment
    settings = arms["full"]
    registry = Registry(settings.model.registry_name, configure(settings.path("mlflow"), settings.experiment), None)
    with Store.open(settings.path("store")) as store:
        starts = [store.turn_start_version(settings.model.registry_name, t) for t in (1, 2, 3)]
    full = report.rows[report.rows["arm"] == "full"].set_index("turn")
    for turn in (1, 2):  # the next turn starts from the champion the gate left
        candidate = registry.find(turn=str(turn), role="candidate").version
        assert starts[turn] == (candidate if full.loc[turn, "promoted"] else starts[turn - 1])
    assert registry.champion().version == (
        registry.find(turn="3", role="candidate").version if full.loc[3, "promoted"] else starts[2]
    )
    responses = _table(settings, "preference_responses")
    runs = _table(settings, "stage_runs").set_index("batch_id")
    turn2 = responses[responses["batch_id"].map(runs["turn"]) == 2]
    previous = f"{settings.model.registry_name}/v{starts[0]} T1 p0.95"
    assert previous in set(turn2["generator"])  # the `previous` matrix cell: turn 1's starting model


def test_report_table_plot_and_mlflow_curves(experiment):
    from flows.experiment_report import MLFLOW_EXPERIMENT
    from mlflow import MlflowClient

    _, _, report, arms = experiment
    rows = report.rows
    assert sorted(zip(rows["arm"], rows["turn"])) == [(a, t) for a in ("full", "human_only") for t in range(4)]
    assert (rows[rows["turn"] == 0]["vs_base_d_rouge_l"] == 0).all()  # the base model against itself
    full = rows[rows["arm"] == "full"]
    assert full["vs_baseline_d_rouge_l"].notna().all() and full["probe_rouge_l"].iloc[1:].notna().all()
    assert full["rag_adaptive_p_at_5"].iloc[1:].between(0, 1).all()  # the retrieval scoreboard, per turn
    assert rows.loc[rows["arm"] == "human_only", "rag_adaptive_p_at_5"].isna().all()  # switched off there
    assert report.plot_path.stat().st_size > 10_000
    text = report.markdown_path.read_text()
    assert text.count("\n| ") == 1 + len(rows)  # header + a row per arm and turn
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(MLFLOW_EXPERIMENT).experiment_id
    [parent] = client.search_runs([experiment_id], "tags.`flywheel.experiment` = 'tiny'")
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["full", "human_only"]
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "rouge_l")]
        assert steps == [0, 1, 2, 3]
    curve = client.search_runs([client.get_experiment_by_name(arms["full"].experiment).experiment_id])
    history = next(r for r in curve if r.info.run_name == "flywheel-curve")
    assert [m.step for m in client.get_metric_history(history.info.run_id, "heldout_candidate_rouge_l")] == [1, 2, 3]


def test_rerunning_the_experiment_runs_nothing_and_logs_each_turn_once(experiment, monkeypatch):
    import flows.turn
    from flows.experiment import run_experiment
    from mlflow import MlflowClient

    params, spec_file, _, _ = experiment
    monkeypatch.setattr(flows.turn, "flywheel", lambda **kw: pytest.fail(f"a finished turn ran again: {kw}"))
    report = run_experiment(params, spec_file)
    assert len(report.rows) == 8
    client = MlflowClient()
    [parent] = client.search_runs(
        [client.get_experiment_by_name("flywheel-experiments").experiment_id], "tags.`flywheel.experiment` = 'tiny'"
    )
    for child in client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"):
        assert len(client.get_metric_history(child.info.run_id, "rouge_l")) == 4
