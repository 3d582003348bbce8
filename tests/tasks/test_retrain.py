"""The TaiLr-weighted SFT loss on the real model: it equals the hand-computed weighted NLL of the batch, reduces
to plain SFT at γ = 0, and trains. The SFT and DPO losses are checked with TRL's LM head as it comes and with the
compaction `fit` trains under (tasks/retrain/fit.py): only labelled positions projected, the same loss."""

import contextlib

import pytest
import torch

from tasks.retrain.fit import compact_lm_head


def lm_head(compact: bool):
    return compact_lm_head() if compact else contextlib.nullcontext()


def cpu_args(config_cls, out, steps: int, batch: int, **extra):
    """A TRL config for a few logged CPU steps, no checkpoints, no reporting."""
    return config_cls(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        logging_steps=1,
        **extra,
    )


@pytest.fixture(scope="module")
def trainer_factory(base_model_path, tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from tasks.retrain.tailr_trainer import TaiLrSFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"Title for a note about {topic}?"}],
                "completion": [{"role": "assistant", "content": title}],
            }
            for topic, title in [("graphs", "Graph Neural Networks"), ("soup", "zebra quantum marmalade")]
        ]
    )

    def make(gamma: float):
        args = cpu_args(SFTConfig, tmp_path_factory.mktemp("sft"), steps=1, batch=2)
        model = AutoModelForCausalLM.from_pretrained(base_model_path)
        return TaiLrSFTTrainer(
            model=model, args=args, train_dataset=data, processing_class=tokenizer, gamma=gamma, min_weight=0.2
        )

    return make


def _hand_loss(model, batch, gamma, min_weight):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    logprobs = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    probs = logprobs.exp()
    weights = (probs / (gamma + (1 - gamma) * probs)).clamp(min_weight, 1.0)
    return -(weights * logprobs)[mask].sum() / mask.sum(), -(logprobs[mask]).mean()


@pytest.mark.parametrize("compact", [False, True])
def test_tailr_loss_is_the_weighted_nll_and_mle_at_gamma_zero(trainer_factory, compact):
    for gamma in (0.8, 0.0):
        trainer = trainer_factory(gamma)
        trainer.model.eval()
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad(), lm_head(compact):
            loss = trainer.compute_loss(trainer.model, dict(batch))
        weighted, plain = _hand_loss(trainer.model, batch, gamma, 0.2)
        assert loss.item() == pytest.approx(weighted.item(), rel=1e-4)
        if gamma == 0.0:
            assert loss.item() == pytest.approx(plain.item(), rel=1e-4)
        else:
            assert loss.item() < plain.item()  # low-probability tokens count less


def test_tailr_trainer_trains(trainer_factory):
    trainer = trainer_factory(0.8)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert 0.2 <= trainer.state.log_history[0]["tailr_mean_weight"] <= 1.0


def make_dual_clip_trainer(base_model_path, out, **extra):
    """A dual-clip DPO trainer on two pairs, against a reference that differs from the policy (non-zero rewards)."""
    import copy

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from tasks.retrain.dpo import DualClipDPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    model = AutoModelForCausalLM.from_pretrained(base_model_path)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        reference.model.norm.weight.mul_(1.05)
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"Title for a note about {topic}?"}],
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
            }
            for topic, good, bad in [
                ("graphs", "Graph Neural Networks", "zebra quantum marmalade"),
                ("search", "Dense Retrieval in Practice", "a title"),
            ]
        ]
    )
    args = cpu_args(DPOConfig, out, steps=1, batch=2, beta=0.5, **extra)
    return DualClipDPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        clip_chosen=0.05,
        clip_rejected=0.05,
    )


@pytest.fixture(scope="module")
def dual_clip_trainer(base_model_path, tmp_path_factory):
    return make_dual_clip_trainer(base_model_path, tmp_path_factory.mktemp("dpo"))


def _completion_logps(model, batch):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    targets, mask = batch["input_ids"][:, 1:], batch["completion_mask"][:, 1:]
    logprobs = torch.log_softmax(logits[:, :-1], -1).gather(-1, targets[..., None])[..., 0]
    return (logprobs * mask).sum(dim=1)


@pytest.mark.parametrize("compact", [False, True])
def test_dual_clip_trainer_loss_is_the_hand_computed_clipped_dpo_loss(dual_clip_trainer, compact):
    import math

    trainer = dual_clip_trainer
    trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad(), lm_head(compact):
        loss = trainer.compute_loss(trainer.model, dict(batch))
    rewards = 0.5 * (_completion_logps(trainer.model, batch) - _completion_logps(trainer.ref_model, batch))
    chosen, rejected = rewards.chunk(2)
    hand = [math.log1p(math.exp(-(min(w, 0.05) - max(lo, -0.05)))) for w, lo in zip(chosen.tolist(), rejected.tolist())]
    assert loss.item() == pytest.approx(sum(hand) / len(hand), rel=1e-3)
    assert any(abs(r) > 0.05 for r in rewards.tolist())  # the clips are active in this case


def test_reference_log_probs_precomputed_under_the_compact_head_are_the_references(base_model_path, tmp_path):
    """`train_dpo` builds its trainers under the compaction, so the reference log-probs TRL precomputes while building
    one score only the completion positions: they are still each pair's summed completion log-probs."""
    with compact_lm_head():
        trainer = make_dual_clip_trainer(
            base_model_path, tmp_path, precompute_ref_log_probs=True, precompute_ref_batch_size=2
        )
    batch = next(iter(trainer.get_train_dataloader()))
    precomputed = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
    assert torch.allclose(precomputed, _completion_logps(trainer.ref_model, batch), rtol=1e-4, atol=1e-3)


def test_dpo_rounds_reset_the_reference_refresh_later_rounds_and_extrapolate(base_model_path, tmp_path):
    import pandas as pd
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from tasks.config import Dpo
    from tasks.retrain import dpo as dpo_module

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    model = AutoModelForCausalLM.from_pretrained(base_model_path)
    prompt = [{"role": "user", "content": "Title for a note about graphs?"}]
    pairs = pd.DataFrame(
        {
            "item_id": ["a", "b"],
            "prompt": [prompt, prompt],
            "chosen": ["Graph Networks", "Graphs"],
            "rejected": ["x", "y"],
        }
    )
    refreshed, extrapolated = [], []
    original = dpo_module.extrapolate
    dpo_module.extrapolate = lambda m, ref, alpha: (extrapolated.append(alpha), original(m, ref, alpha))
    try:

        def refresh(number, policy, chunk):
            refreshed.append(number)
            return chunk.assign(chosen="Graph Neural Networks")

        def make_args(number, steps, **extra):
            return cpu_args(DPOConfig, tmp_path / f"r{number}", steps=steps, batch=1, **extra)

        cfg = Dpo(max_steps=2, rounds=2, loss="dual_clip", extrapolation_alpha=0.3)
        _, losses, trained = dpo_module.train_dpo(model, tokenizer, pairs, cfg, make_args, refresh)
    finally:
        dpo_module.extrapolate = original
    assert refreshed == [1] and extrapolated == [0.3, 0.3]
    assert list(trained["round"]) == [0, 1] and list(trained["chosen"]) == ["Graph Networks", "Graph Neural Networks"]
    assert len(losses["dpo_loss"]) == 2
    # a refresh whose responses make no pair (all filtered) leaves the round its stored pairs
    _, _, trained = dpo_module.train_dpo(model, tokenizer, pairs, cfg, make_args, lambda n, p, chunk: chunk.iloc[0:0])
    assert list(trained["round"]) == [0, 1] and list(trained["chosen"]) == ["Graph Networks", "Graphs"]


def test_a_round_that_revisits_its_pairs_scores_the_reference_once(base_model_path, tmp_path, monkeypatch):
    import pandas as pd
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from tasks.config import Dpo
    from tasks.retrain import dpo as dpo_module

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    prompt = [{"role": "user", "content": "Title for a note about graphs?"}]
    chosen, rejected = ["Graph Networks", "Graphs"], ["x", "y"]
    pairs = pd.DataFrame({"item_id": ["a", "b"], "prompt": [prompt, prompt], "chosen": chosen, "rejected": rejected})
    cfg = Dpo(max_steps=4, rounds=1, batch_size=1, gradient_accumulation=1, loss="dual_clip")
    assert dpo_module.revisits_pairs(4, cfg, len(pairs)) and not dpo_module.revisits_pairs(2, cfg, len(pairs))
    forward = dpo_module.DualClipDPOTrainer._sequence_logps

    def train(precompute: bool, folder: str) -> tuple[list[float], int]:
        reference_forwards = []

        def counted(self, model, inputs):
            if model is self.ref_model:
                reference_forwards.append(len(inputs["input_ids"]))
            return forward(self, model, inputs)

        monkeypatch.setattr(dpo_module, "revisits_pairs", lambda *_: precompute)
        monkeypatch.setattr(dpo_module.DualClipDPOTrainer, "_sequence_logps", counted)
        model = AutoModelForCausalLM.from_pretrained(base_model_path)
        make_args = lambda number, steps, **extra: cpu_args(DPOConfig, tmp_path / folder, steps=steps, batch=1, **extra)  # noqa: E731
        _, losses, _ = dpo_module.train_dpo(model, tokenizer, pairs, cfg, make_args)
        return losses["dpo_loss"], len(reference_forwards)

    on_the_fly, forwards = train(False, "fly")
    precomputed, forwards_after_precompute = train(True, "pre")
    assert forwards == 4 and forwards_after_precompute == 0  # 4 steps, each pair twice: the reference ran 4 times
    assert precomputed == pytest.approx(on_the_fly, abs=1e-3)


def test_every_trainer_on_one_model_trains_under_its_bf16_autocast(base_model_path, tmp_path):
    """Accelerate leaves a model it prepared before as it is: before `fit` unmarked it, the second trainer on the
    same model (the next SFT phase, every DPO round) trained in float32 although configured for bf16."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tasks.retrain.fit import fit
    from tests.project import tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    model = tiny_llama(tokenizer)
    row = {"prompt": [{"role": "user", "content": "Title?"}], "completion": [{"role": "assistant", "content": "G"}]}
    data = Dataset.from_list([row])
    autocast, patched = [], []
    model.model.register_forward_pre_hook(lambda module, args: autocast.append(torch.is_autocast_enabled("cpu")))
    for number in range(3):
        args = cpu_args(SFTConfig, tmp_path / str(number), steps=1, batch=1, bf16=True)
        model = fit(SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer))
        patched.append("forward" in vars(model))  # TRL's fused head or accelerate's wrapper left on the model
    assert autocast == [True, True, True]
    assert patched == [False, False, False]
