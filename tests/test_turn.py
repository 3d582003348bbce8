"""One whole turn on a small slice (8 train items, 4 held-out) with the real model, through the Prefect flow; then
what must hold afterwards: lineage, no held-out leakage, MLflow runs and registry, a free rerun, and DVC."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.project import git_checkout, write_params

pytestmark = pytest.mark.integration

MODEL_STAGES = ("annotate", "preference", "rewrite", "evaluate", "rag_eval")


@pytest.fixture(scope="module")
def turn(module_folder):
    from flows.turn import flywheel
    from tasks.config import load_settings

    feedback = {"feedback": {"queries_per_turn": 2, "samples": 1}}  # retrieval feedback on 2 benchmark queries
    params = write_params(module_folder, {"annotate": {"candidates": 2}, "rewrite": feedback})  # best-of-2
    git_checkout(module_folder)  # where users run it: a git clone with the project's DVC config
    results = flywheel(turns=1, params=str(params))[0]
    return load_settings(params), results


def _tables(settings):
    from stores.store import Store
    from tasks.runner import STAGES

    with Store.open(settings.path("store")) as store:
        return {spec.name: store.read(spec.name) for stage in STAGES.values() for spec in stage.outputs}


def test_every_stage_ran_through_prefect_and_produced_rows(turn):
    from tasks.runner import STAGES

    _, results = turn
    assert [r["stage"] for r in results] == list(STAGES)
    assert not any(r["cached"] for r in results)
    assert all(r["rows_out"] > 0 for r in results), [(r["stage"], r["rows_out"]) for r in results]
    assert all(r["llm_calls"] > 0 for r in results if r["stage"] in MODEL_STAGES)
    evaluation = next(r for r in results if r["stage"] == "evaluate")["metrics"]
    assert evaluation["items"] == 4 and 0 <= evaluation["start_rouge_l"] <= 1


def test_preference_data_went_through_the_four_steps_into_dpo_rounds(turn):
    settings, results = turn
    tables = _tables(settings)
    prompts, responses = tables["preference_prompts"], tables["preference_responses"]
    kept = prompts[prompts["kept"]]
    assert (kept["split"] == "train").sum() == 4 and (kept["split"] == "human").sum() == 2  # TINY quotas
    assert set(responses["item_id"]) == set(kept["item_id"])
    assert set(responses.loc[responses["generator"] == "human", "item_id"]) == set(
        kept.loc[kept["split"] == "human", "item_id"]
    )
    # turn 1: champion = base = v1, so the matrix is v1 at T0.7 and T1.0 (two responses each) plus the human titles
    assert sorted(set(responses["generator"]) - {"human"}) == [
        "flywheel-policy/v1 T0.7 p0.95",
        "flywheel-policy/v1 T1 p0.95",
    ]
    metrics = {r["stage"]: r["metrics"] for r in results}
    assert metrics["preference"]["responses"] == len(responses) == 4 * 6 + 2
    pairs = tables["preference_pairs"]
    assert metrics["preference"]["pairs"] == pairs["kept"].sum() and set(pairs["item_id"]) <= set(kept["item_id"])
    dpo = tables["training_examples"].query("kind == 'dpo'")
    assert len(dpo) == metrics["retrain"]["dpo_pairs_trained"]
    # two DPO rounds (the second on regenerated pairs), each trained on pairs, numbered after the SFT phases
    sft_phases = tables["training_examples"].query("kind != 'dpo'")["phase"].nunique()
    assert len(dpo) >= 2 and sorted(dpo["phase"].unique()) == [sft_phases, sft_phases + 1]


def test_rows_carry_lineage_and_the_heldout_split_is_never_trained_on(turn):
    settings, _ = turn
    tables = _tables(settings)
    for name, frame in tables.items():
        for column in ("stage", "model_version", "run_id", "params_hash", "batch_id", "created_at"):
            assert frame[column].notna().all(), f"{name}.{column} has nulls"
    assert len(set().union(*(set(frame["run_id"]) for frame in tables.values()))) == 1  # the turn's MLflow run
    items = tables["items"]
    heldout = set(items.loc[items["split"] == "heldout", "item_id"])
    trained_or_labelled = ("annotations", "denoised", "preference_prompts", "preference_responses", "preference_pairs")
    for name in (*trained_or_labelled, "label_queue", "rewrites", "retrievals", "training_examples"):
        assert not heldout & set(tables[name]["item_id"]), f"held-out item in {name}"
    assert set(tables["scoreboard"]["item_id"]) <= heldout
    denoised = tables["denoised"]
    assert ((denoised["reason"] != "") == ~denoised["kept"]).all()  # every drop is recorded with its reason
    assert set(denoised["method"]) == {"adatailr"}
    assert (denoised.groupby("item_id").size() == 2).all()  # best of 2: one candidate per item goes on
    outranked = denoised["reason"].str.startswith("best of n")
    assert (denoised[~outranked].groupby("item_id").size() == 1).all()
    human = set(items.loc[items["split"] == "human", "item_id"])
    trained = tables["training_examples"]
    assert set(trained.loc[trained["kind"] == "sft-human", "item_id"]) <= human
    synthetic = trained[trained["kind"] == "sft-synthetic"]
    assert not set(zip(synthetic["item_id"], synthetic["candidate"])) & set(
        zip(denoised.loc[outranked, "item_id"], denoised.loc[outranked, "candidate"])
    )  # no outranked candidate is trained on
    related = {doc for docs in tables["contexts"]["related"] for doc in docs}
    assert related and not heldout & related, "a held-out item's title leaked into retrieved context"


def test_the_retrieval_scoreboard_scores_heldout_queries_for_both_models(turn):
    from tasks.rewrite.beir import bundled_benchmark, split_queries

    settings, results = turn
    scores = _tables(settings)["rag_scores"]
    train, heldout = split_queries(sorted(bundled_benchmark().queries), settings.rag_eval.heldout_fraction, 13)
    assert set(scores["query_id"]) == set(heldout[:2]) and not set(train) & set(heldout)
    configs = {"original", "gqr", "kwr", "par", "cce", "all", "adaptive"}
    assert set(scores["config"]) == configs and len(scores) == 2 * 2 * len(configs)  # queries × models × pools
    assert set(scores["model"]) == {"flywheel-policy/v1", "flywheel-policy/v3"}
    assert (scores.loc[scores["config"] == "original", "rewrites"] == 0).all()
    assert (scores.loc[scores["config"] == "all", "strategies"].map(len) == 4).all()
    metrics = next(r for r in results if r["stage"] == "rag_eval")["metrics"]
    adaptive = scores[(scores["role"] == "candidate") & (scores["config"] == "adaptive")]
    assert metrics["candidate_adaptive_p_at_5"] == pytest.approx(adaptive["p_at_5"].mean())
    assert metrics["candidate_adaptive_rewrites_per_query"] == pytest.approx(adaptive["rewrites"].mean())


def test_retrieval_feedback_on_train_queries_becomes_rewriting_and_selection_targets(turn):
    from tasks.rewrite.beir import bundled_benchmark, split_queries
    from tasks.rewrite.feedback import feedback_targets

    settings, results = turn
    tables = _tables(settings)
    feedback = tables["rewrite_feedback"]
    train, _ = split_queries(sorted(bundled_benchmark().queries), settings.rag_eval.heldout_fraction, 13)
    assert set(feedback["query_id"]) == set(train[:2])  # turn 1's window of train queries, never held-out ones
    assert len(feedback) == 2 * (1 + 4)  # the original alone and one sample per strategy
    assert (feedback.loc[feedback["strategy"] == "original", "gain"] == 0).all()
    targets = feedback_targets(feedback, settings.rewrite.feedback)
    examples = tables["training_examples"]
    trained = examples[examples["kind"].isin(["sft-rewrite", "sft-select"])]
    assert sorted(trained["target"]) == sorted(targets["target"]) and set(trained["item_id"]) <= set(train[:2])
    metrics = next(r for r in results if r["stage"] == "retrain")["metrics"]
    assert metrics["sft_rewrite"] + metrics["sft_select"] == len(targets)
    if len(trained):  # the feedback phase comes first; the caption phases follow it
        assert trained["phase"].max() == 0 and (examples.loc[examples["kind"] == "sft-synthetic", "phase"] > 0).all()


def test_mlflow_shows_the_turn_its_stages_and_the_registered_versions(turn):
    from mlflow import MlflowClient
    from stores import tracking

    settings, results = turn
    experiment = tracking.configure(settings.path("mlflow"), settings.experiment)
    client = MlflowClient()
    [parent] = client.search_runs([experiment], "tags.`flywheel.turn_key` = 'turn-1'")
    assert set(_tables(settings)["annotations"]["run_id"]) == {parent.info.run_id}
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["flywheel.stage"] for r in children) == sorted(r["stage"] for r in results)
    assert "heldout_start_rouge_l" in parent.data.metrics and "heldout_candidate_rouge_l" in parent.data.metrics
    by_stage = {r.data.tags["flywheel.stage"]: r.info.run_id for r in children}
    assert "noise_scores.png" in [a.path for a in client.list_artifacts(by_stage["denoise"])]
    assert "scoreboard.png" in [a.path for a in client.list_artifacts(by_stage["evaluate"])]
    assert "rag_scoreboard.png" in [a.path for a in client.list_artifacts(by_stage["rag_eval"])]
    assert "rag_candidate_adaptive_p_at_5" in parent.data.metrics
    versions = {int(v.version): v.tags for v in client.search_model_versions("name = 'flywheel-policy'")}
    assert sorted(versions) == [1, 2, 3]  # base, refined on the human titles, candidate trained from the refined one
    assert versions[2]["role"] == "refined" and versions[3]["role"] == "candidate"
    assert versions[2]["parent_version"] == "1" and versions[3]["parent_version"] == "2"
    promoted = next(r for r in results if r["stage"] == "promote")["summary"]["promoted"]
    champion = client.get_model_version_by_alias("flywheel-policy", "champion")
    assert int(champion.version) == (3 if promoted else 1)
    assert int(client.get_model_version_by_alias("flywheel-policy", "candidate").version) == 3


def test_rerunning_the_finished_turn_makes_no_model_call(turn, monkeypatch):
    import tasks.runner as runner
    from stores.llm_cache import LLMCallCache
    from stores.store import Store

    settings, _ = turn
    before = {name: len(frame) for name, frame in _tables(settings).items()}
    with Store.open(settings.path("store")) as store:
        calls_before = LLMCallCache(store.con).count()

    def no_model(*args):
        raise AssertionError("a rerun must not load the model")

    monkeypatch.setattr(runner, "_backend", no_model)
    results = [runner.run_stage(name, settings, 1) for name in runner.STAGES]
    assert all(r.cached and r.llm_calls == 0 for r in results)
    assert {name: len(frame) for name, frame in _tables(settings).items()} == before
    with Store.open(settings.path("store")) as store:
        assert LLMCallCache(store.con).count() == calls_before


def test_flywheel_run_continues_from_the_next_unfinished_turn(turn, monkeypatch):
    import flows.turn
    from flows.cli import main
    from tasks.runner import next_turn

    settings, _ = turn
    assert next_turn(settings) == 2
    started = []
    monkeypatch.setattr(flows.turn, "flywheel_turn", lambda turn, **kw: started.append(turn) or [{"turn": turn}])
    monkeypatch.setattr("flows.summary.print_turn", lambda *args: None)
    assert main(["--params", str(settings.root / "params.yaml"), "run", "--turns", "2"]) == 0
    assert started == [2, 3]  # not 1 again: turn 1 is finished


def test_exports_and_metrics_are_written_for_dvc(turn):
    import pandas as pd

    settings, results = turn
    tables = _tables(settings)
    for name, frame in tables.items():
        exported = pd.read_parquet(settings.path("exports") / f"{name}.parquet")
        assert len(exported) == len(frame)
    for result in results:
        metrics = json.loads((settings.path("metrics") / f"{result['stage']}.json").read_text())
        assert metrics["rows_out"] == result["rows_out"]


def test_the_cli_summary_of_the_finished_turn(turn, capsys):
    from flows.cli import main

    settings, results = turn
    assert main(["--params", str(settings.root / "params.yaml"), "summary", "--turn", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Held-out scoreboard (4 items never trained on)" in printed and "rouge_l" in printed
    assert "mlflow ui --backend-store-uri" in printed
    assert "Data version: " in printed and "flywheel checkout --turn 1" in printed
    work = {r["stage"]: r["summary"]["usage"] for r in results}
    assert all(work[s]["calls"] > 0 and work[s]["prompt_tokens"] > work[s]["calls"] for s in MODEL_STAGES)
    total_tokens = sum(u["prompt_tokens"] for u in work.values())
    assert "Model work" in printed and re.search(rf"turn\s.*\b{total_tokens}\b", printed)


def test_export_writes_the_published_dataset_and_uploads_it_behind_a_flag(turn, tmp_path, monkeypatch):
    """`flywheel export` rebuilds the turn's dataset folder (the same rows as the published one); the Hub upload is
    a real HfApi call, here answered by a recorder since this machine has no network."""
    import huggingface_hub
    import pandas as pd

    from flows.cli import main

    settings, _ = turn
    uploads = []

    class Recorder:
        def create_repo(self, repo_id, **kwargs):
            uploads.append(("create", repo_id, kwargs["repo_type"]))

        def upload_folder(self, **kwargs):
            uploads.append(("upload", kwargs["repo_id"], sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    out = tmp_path / "export"
    args = ["--params", str(settings.root / "params.yaml"), "export", "--turn", "1", "--out", str(out)]
    assert main([*args, "--push-to-hub", "someone/flywheel-turn-1"]) == 0
    published = settings.root / "data" / "turns" / "flywheel-policy" / "turn-1" / "dataset"
    files = sorted(path.name for path in published.iterdir())
    assert uploads == [("create", "someone/flywheel-turn-1", "dataset"), ("upload", "someone/flywheel-turn-1", files)]
    assert sorted(path.name for path in out.iterdir()) == files  # the same rows: the same content-named files
    for name in files[1:]:
        pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(published / name))


def test_dvc_repro_reuses_the_turn_and_a_param_change_reruns_only_its_dependents(turn):
    """In the fixture's git checkout, as a user's clone is; after the param changes, `flywheel publish` versions the
    turn that `dvc repro` rebuilt (the flow publishes by itself; dvc repro cannot, it holds DVC's lock)."""
    from flows.cli import main
    from tasks.runner import STAGES

    settings, _ = turn
    folder = settings.root
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    dvc = [str(Path(sys.executable).parent / "dvc")]

    def run(*args):
        done = subprocess.run(dvc + list(args), cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    output = run("repro")
    assert output.count("[cached]") == len(STAGES)  # every stage found its batch in the store: nothing recomputed
    assert "up to date" in run("status")

    def rerun_after(section, key, value):
        """Change one param, `dvc repro`, and return the stages DVC ran."""
        params = yaml.safe_load((folder / "params.yaml").read_text())
        params[section][key] = value
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return set(re.findall(r"Running stage '(\w+)'", run("repro")))

    assert rerun_after("promote", "min_delta", 0.5) == {"promote"}
    assert rerun_after("denoise", "drop_quantile", 0.4) == {"denoise", "retrain", "evaluate", "rag_eval", "promote"}
    first = _published(settings, 1)
    assert main(["--params", str(folder / "params.yaml"), "publish"]) == 0
    assert _published(settings, 1) != first  # a new version of turn 1: its denoise, retrain... batches changed
    assert "up to date" in run("status")


def _published(settings, turn: int) -> str:
    from stores.store import Store

    with Store.open(settings.path("store")) as store:
        return store.data_version(settings.model.registry_name, turn)[0]


def _file_hashes(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_each_turn_is_a_dvc_version_in_the_remote_and_checkout_restores_it_byte_for_byte(turn):
    """Two turns (the second a cheap one), then the workspace's exports, turn folders, .dvc files and DVC cache are
    removed: `flywheel checkout` brings each turn back from the remote, and the models' data tags point into it."""
    from datasets import load_dataset

    from flows.cli import main
    from flows.turn import flywheel
    from mlflow import MlflowClient
    from stores import tracking
    from stores.dvc import read_tracked

    settings, _ = turn
    folder, params = settings.root, str(settings.root / "params.yaml")
    cheap = {"skip": ["annotate", "denoise", "preference", "rewrite", "rag_eval"], "retrain": {"sft": {"max_steps": 1}}}
    flywheel(turns=1, first_turn=2, params=params, overrides=cheap)
    turns = {t: folder / "data" / "turns" / "flywheel-policy" / f"turn-{t}" for t in (1, 2)}
    before = {t: _file_hashes(path) for t, path in turns.items()}
    assert "dataset/README.md" in before[1] and "tables/training_examples.parquet" in before[2]
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(turns[1]) + ".dvc"], cwd=folder, capture_output=True
    ).returncode
    assert ignored == 1, "the turn's .dvc file must be committable"

    tracking.configure(settings.path("mlflow"), settings.experiment)
    client = MlflowClient()
    remote = folder / "dvc-remote"
    for t in (1, 2):
        tracked = read_tracked(folder, Path(str(turns[t]) + ".dvc"))
        assert tracked.md5 == _published(settings, t)
        assert all((remote / path).is_file() for path in tracked.object_paths())
        tagged = client.search_model_versions(f"name = 'flywheel-policy' and tags.`data.turn` = '{t}'")
        [model] = [m for m in tagged if m.tags["data.md5"] == tracked.md5]  # the version trained on this data
        assert model.tags["data.sft_md5"] in {md5 for name, md5 in tracked.files.items() if "/sft-" in name}
        assert (remote / "files" / "md5" / model.tags["data.md5"][:2] / f"{model.tags['data.md5'][2:]}.dir").is_file()

    sft = load_dataset(str(turns[2] / "dataset"), "sft")["train"]
    assert set(sft["kind"]) == {"sft-refine", "sft-human"}  # turn 2 skipped annotation: human rows only
    assert [m["role"] for m in sft[0]["prompt"]] == ["system", "user"]
    assert sft[0]["completion"][0]["role"] == "assistant"
    dpo = load_dataset(str(turns[1] / "dataset"), "dpo")["train"]
    assert dpo.column_names[:3] == ["prompt", "chosen", "rejected"]

    for path in (folder / "data" / "exports", *turns.values(), folder / ".dvc" / "cache"):
        shutil.rmtree(path)
    for path in turns.values():
        Path(str(path) + ".dvc").unlink()
    for t in (1, 2):
        assert main(["--params", params, "checkout", "--turn", str(t)]) == 0
        assert _file_hashes(turns[t]) == before[t]
