from pathlib import Path

import pytest

from tasks.config import ConfigError, load_settings
from tests.project import write_params

REPO = Path(__file__).resolve().parents[1]


def test_the_repository_params_file_is_valid():
    settings = load_settings(REPO / "params.yaml")
    assert settings.root == REPO
    assert settings.path("store") == REPO / "data" / "flywheel.duckdb"


def test_unknown_key_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("annotate:\n  candidats: 2\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert str(path) in str(error.value) and "annotate.candidats" in str(error.value)


def test_out_of_range_value_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("denoise:\n  drop_quantile: 1.5\n")
    with pytest.raises(ConfigError, match="denoise.drop_quantile"):
        load_settings(path)


def test_splits_must_leave_a_train_pool(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  heldout_fraction: 0.45\n  human_fraction: 0.4\n")
    with pytest.raises(ConfigError, match="at least 20%"):
        load_settings(path)


def test_fusion_depth_must_reach_past_the_top_k(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("rewrite:\n  top_k: 10\n  fusion_depth: 10\n")
    with pytest.raises(ConfigError, match="fusion_depth must be more than rewrite.top_k"):
        load_settings(path)


@pytest.mark.parametrize("text", ["seed: [unclosed\n", "- a list\n"])
def test_malformed_yaml_is_a_config_error(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):
        load_settings(path)


def test_section_hash_changes_only_with_its_sections(tmp_path):
    base = tmp_path / "a.yaml"
    base.write_text("denoise: {drop_quantile: 0.2}\n")
    changed = tmp_path / "b.yaml"
    changed.write_text("denoise: {drop_quantile: 0.3}\n")
    a, b = load_settings(base), load_settings(changed)
    assert a.section_hash("denoise") != b.section_hash("denoise")
    assert a.section_hash("annotate", "data") == b.section_hash("annotate", "data")


def test_a_dotted_section_hashes_one_field(tmp_path):
    """The rewrite stage reads only `rag_eval.heldout_fraction`: the scoreboard's query count must not rerun it."""
    fewer = tmp_path / "a.yaml"
    fewer.write_text("rag_eval: {queries: 8}\n")
    split = tmp_path / "b.yaml"
    split.write_text("rag_eval: {heldout_fraction: 0.4}\n")
    (tmp_path / "defaults.yaml").write_text("{}\n")
    base, a, b = load_settings(tmp_path / "defaults.yaml"), load_settings(fewer), load_settings(split)
    assert a.section_values("rag_eval.heldout_fraction") == {"rag_eval.heldout_fraction": 0.5}
    assert a.section_hash("rag_eval.heldout_fraction") == base.section_hash("rag_eval.heldout_fraction")
    assert a.section_hash("rag_eval") != base.section_hash("rag_eval")
    assert b.section_hash("rag_eval.heldout_fraction") != base.section_hash("rag_eval.heldout_fraction")


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("paths", "store", "/etc/flywheel.duckdb"),
        ("paths", "exports", "../outside"),
        ("paths", "models", "data/../../models"),
        ("data", "source", "/home/someone/items.jsonl"),
    ],
)
def test_params_paths_stay_inside_the_project(tmp_path, section, key, value):
    params = write_params(tmp_path, {section: {key: value}})
    with pytest.raises(ConfigError, match=rf"{section}.{key}: .*must be a relative path inside the project folder"):
        load_settings(params)


def test_precision_auto_is_resolved_even_when_the_params_omit_it(tmp_path, monkeypatch):
    import tasks.config as config

    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\n")  # no model or retrain section: the defaults, resolved for this machine
    settings = config.load_settings(params)
    native = config.native_bf16()
    assert (settings.model.dtype, settings.retrain.bf16) == ("bfloat16" if native else "float32", native)
    params.write_text("model: {batch_size: 4}\nretrain: {max_length: 256}\n")  # sections without the keys
    for native, dtype in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(config, "native_bf16", lambda native=native: native)
        settings = config.load_settings(params)
        assert (settings.model.dtype, settings.retrain.bf16) == (dtype, native)
    params.write_text("model: {dtype: bfloat16}\nretrain: {bf16: true}\n")
    settings = config.load_settings(params)
    assert (settings.model.dtype, settings.retrain.bf16) == ("bfloat16", True)  # explicit wins


def test_the_config_knows_exactly_the_defined_rewrite_strategies_and_imports_no_stage(tmp_path):
    import subprocess
    import sys
    from typing import get_args

    from tasks.config import StrategyName
    from tasks.rewrite.strategies import STRATEGIES

    assert set(get_args(StrategyName)) == set(STRATEGIES)
    with pytest.raises(ConfigError, match="strategies"):
        load_settings(write_params(tmp_path, {"rewrite": {"strategies": ["gqr", "nope"]}}))
    heavy = "('mlflow', 'duckdb', 'tasks.stage')"
    probe = f"import sys, tasks.config; print(sorted(m for m in {heavy} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_every_arm_of_the_default_experiment_is_valid_params():
    from flows.experiment import arm_settings, load_spec

    arms = arm_settings(REPO / "params.yaml", load_spec(REPO / "experiments" / "ablation.yaml"))
    assert {"full", "human_only", "no_retrieval", "dmqr_context"} <= arms.keys()
    assert arms["dmqr_context"][1].context.query == "dmqr" and arms["full"][1].context.query == "content"


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_experiment_file_is_valid(path):
    """Each arm's overrides must validate against the repository's params before anyone spends an hour on it."""
    from flows.experiment import arm_settings, load_spec

    spec = load_spec(path)
    arms = arm_settings(REPO / "params.yaml", spec)
    assert set(arms) == set(spec.arms) and spec.baseline in arms
    assert len({settings.model.registry_name for _, settings in arms.values()}) == len(arms)  # own lineages
