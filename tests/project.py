"""A throwaway flywheel project for tests: small params in a folder of its own (store, exports, MLflow), sharing the
repository's converted-model cache."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tasks.config import merge_params

REPO = Path(__file__).resolve().parents[1]

# A turn small enough for CI: 8 train items, 4 held-out, a few training steps.
TINY = {
    "seed": 13,
    "data": {"probe_items": 0},  # no probe: model-call counts are the window's
    "task": {"max_field_chars": 300},
    "model": {"batch_size": 8},
    "refine": {"items_per_turn": 4, "max_steps": 1},
    "annotate": {"items_per_turn": 8, "candidates": 1},  # one model call per item (tests count them)
    "preference": {"prompts_per_turn": 4, "human_prompts_per_turn": 2},
    "rewrite": {"queries_per_turn": 4},
    "retrain": {
        "sft": {"max_steps": 2, "batch_size": 4, "human_items_per_turn": 4},  # replays the refined titles
        "dpo": {"max_steps": 2, "batch_size": 2, "gradient_accumulation": 1},
    },
    "evaluate": {"items": 4},
    "rag_eval": {"queries": 2},
}


def link_shared(folder: Path) -> None:
    """The project's `.cache/models` and `.venv-vllm` link to the repository's: one converted model and one vLLM
    environment for every test and bench project (params paths must stay inside the project)."""
    for path in (Path(".cache") / "models", Path(".venv-vllm")):
        link = folder / path
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(REPO / path, target_is_directory=True)


def write_params(folder: Path, overrides: dict | None = None, base: str = "params.yaml") -> Path:
    """The repository's params file `base` (params.yaml: every key DVC tracks) with the TINY sizes and any overrides
    on top, as `params.yaml` in a folder that shares the repository's model cache and vLLM environment."""
    link_shared(folder)
    params = merge_params(merge_params(yaml.safe_load((REPO / base).read_text()), TINY), overrides or {})
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def git_checkout(folder: Path) -> None:
    """Make `folder` look like a user's clone: the code, dvc.yaml, .dvc config and ignore files, committed to git
    (a test in `dvc init --no-scm` once hid that dvc.lock was git-ignored)."""
    for name in ("tasks", "stores", "flows", "labels", ".dvc"):
        shutil.copytree(REPO / name, folder / name, ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, folder / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "project"]):
        subprocess.run(git + args, cwd=folder, check=True, capture_output=True)


def tiny_llama(tokenizer):
    """A two-layer Llama with random weights (seed 0) over the packaged tokenizer: real code paths in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)
