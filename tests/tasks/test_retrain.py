"""The TaiLr-weighted SFT loss on the real model: it equals the hand-computed weighted NLL of the batch, reduces
to plain SFT at γ = 0, and trains."""

import pytest
import torch


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
        args = SFTConfig(
            output_dir=str(tmp_path_factory.mktemp("sft")),
            max_steps=1,
            per_device_train_batch_size=2,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            seed=0,
            logging_steps=1,
        )
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


def test_tailr_loss_is_the_weighted_nll_and_mle_at_gamma_zero(trainer_factory):
    for gamma in (0.8, 0.0):
        trainer = trainer_factory(gamma)
        trainer.model.eval()
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
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
