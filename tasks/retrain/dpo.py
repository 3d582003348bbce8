"""DPO in rounds: TSO's dual-clip reward and iterative reference update, Iter-W2S-RLAIF's weak-to-strong
extrapolation. TRL's DPOTrainer does the batching; this module owns what differs.

- **Rounds with reference update**: the pairs are split into `rounds` chunks; each round trains against a frozen
  copy of the policy as it was when the round began, so after every chunk the reference becomes the current policy.
  Before a round after the first, `refresh` may replace the chunk's pairs (the retrain stage regenerates the
  policy's cells of the model matrix with the current policy and relabels them).
- **Dual-clip reward** (our reconstruction; the TSO paper's exact form was not reachable): with implicit rewards
  `r = β · (log π(y|x) − log π_ref(y|x))`, the loss is `−log σ(min(r_w, c_w) − max(r_l, −c_l))`. Past `c_w` the
  chosen reward earns nothing more and past `−c_l` the rejected one is pushed down no further (zero gradient), so
  neither can run away without bound, the failure mode of plain DPO on easy pairs.
- **Weak-to-strong extrapolation** (ExPO, arXiv 2404.16792): after each round `θ ← θ + α (θ − θ_ref)`, moving
  further along the direction the round moved, with the round's reference as the weaker model.
- **Reference log-probs computed once**: when a round visits its pairs more than once (steps × batch × accumulation
  > pairs), the frozen reference scores each pair once before training (TRL's `precompute_ref_log_probs`) instead of
  once per visit; a round that sees each pair at most once computes them as it goes (precomputing would score pairs
  it never trains on). `bench/dpo.py` measures both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from trl import DPOTrainer

from tasks.retrain.fit import compact_lm_head, fit


def dual_clip_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, clip_chosen: float, clip_rejected: float
) -> torch.Tensor:
    """Per-pair loss −log σ(min(r_w, c_w) − max(r_l, −c_l))."""
    clipped_chosen = torch.clamp(chosen_rewards, max=clip_chosen)
    clipped_rejected = torch.clamp(rejected_rewards, min=-clip_rejected)
    return -F.logsigmoid(clipped_chosen - clipped_rejected)


@torch.no_grad()
def extrapolate(model: torch.nn.Module, reference: torch.nn.Module, alpha: float) -> None:
    """θ ← θ + α (θ − θ_ref), in place, for every parameter (tied weights once)."""
    reference_params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        param.add_(param - reference_params[name].to(param.device, param.dtype), alpha=alpha)


class DualClipDPOTrainer(DPOTrainer):
    """DPOTrainer whose loss is `dual_clip_loss` (reverse-KL implicit rewards, summed completion log-probs)."""

    def __init__(self, *args, clip_chosen: float, clip_rejected: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.clip_chosen, self.clip_rejected = clip_chosen, clip_rejected

    def _sequence_logps(self, model, inputs) -> tuple[torch.Tensor, object]:
        completion_mask = inputs["completion_mask"]
        model_inputs = {
            k: v for k, v in inputs.items() if k not in {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
        }
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_inputs, use_cache=False, labels=labels, fused_lm_head=True)
        return outputs.log_probs[:, -(completion_mask.size(1) - 1) :].sum(dim=1), outputs

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        logps, outputs = self._sequence_logps(model, inputs)
        if self.precompute_ref_logps:
            ref_logps = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(logps.device)
        else:
            with torch.no_grad():
                ref_logps, _ = self._sequence_logps(self.ref_model, inputs)
        chosen, rejected = (self.beta * (logps - ref_logps)).chunk(2, dim=0)  # the batch is [chosen, rejected]
        loss = dual_clip_loss(chosen, rejected, self.clip_chosen, self.clip_rejected).mean()
        chosen, rejected = chosen.detach(), rejected.detach()
        for name, value in {
            "rewards/chosen": chosen.mean(),
            "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "rewards/chosen_clipped": (chosen > self.clip_chosen).float().mean(),
            "rewards/rejected_clipped": (rejected < -self.clip_rejected).float().mean(),
        }.items():
            self._metrics[mode][name].append(value.item())
        return (loss, outputs) if return_outputs else loss


def revisits_pairs(steps: int, cfg, pairs: int) -> bool:
    """Whether a round of `steps` optimiser steps reads its `pairs` more than once."""
    return steps * cfg.batch_size * cfg.gradient_accumulation > pairs


def round_steps(max_steps: int, rounds: int) -> list[int]:
    """`max_steps` spread over the rounds as evenly as possible (earlier rounds get the remainder)."""
    return [max_steps // rounds + (1 if r < max_steps % rounds else 0) for r in range(rounds)]


def train_dpo(
    model,
    tokenizer,
    pairs: pd.DataFrame,
    cfg,
    make_args: Callable[..., object],
    refresh: Callable[[int, object, pd.DataFrame], pd.DataFrame] | None = None,
):
    """DPO rounds on `pairs` (prompt, chosen, rejected, ...). `cfg` is the Dpo section; `make_args(round, steps,
    **extra TRL options)` builds the TRL config. Returns (model, {loss name: [...]}, the pairs each round trained on
    with `round`)."""
    from datasets import Dataset

    losses: dict[str, list[float]] = {}
    trained = []
    steps = round_steps(cfg.max_steps, cfg.rounds)
    for number, chunk in enumerate(np.array_split(np.arange(len(pairs)), cfg.rounds)):
        chunk = pairs.iloc[chunk].reset_index(drop=True)
        if number > 0 and refresh is not None and len(chunk):
            fresh = refresh(number, model, chunk)
            # the policy's new responses made no pair (all filtered): the round keeps its stored pairs, and its
            # steps and reference update, rather than training on nothing
            chunk = fresh if len(fresh) else chunk
        if chunk.empty or steps[number] == 0:
            continue
        data = Dataset.from_list(
            [
                {
                    "prompt": p,
                    "chosen": [{"role": "assistant", "content": c}],
                    "rejected": [{"role": "assistant", "content": r}],
                }
                for p, c, r in zip(chunk["prompt"], chunk["chosen"], chunk["rejected"])
            ]
        )
        reference = copy.deepcopy(model).eval()
        precompute = revisits_pairs(steps[number], cfg, len(chunk))
        args = make_args(number, steps[number], precompute_ref_log_probs=precompute, precompute_ref_batch_size=8)
        kwargs = dict(model=model, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer)
        with compact_lm_head():  # the trainer precomputes the reference log-probs as it is built
            if cfg.loss == "dual_clip":
                trainer = DualClipDPOTrainer(**kwargs, clip_chosen=cfg.clip_chosen, clip_rejected=cfg.clip_rejected)
            else:
                trainer = DPOTrainer(**kwargs)
        model = fit(trainer)
        if cfg.extrapolation_alpha:
            extrapolate(model, reference, cfg.extrapolation_alpha)
        del reference
        losses.setdefault("dpo_loss", []).extend(e["loss"] for e in trainer.state.log_history if "loss" in e)
        trained.append(chunk.assign(round=number))
    return model, losses, (pd.concat(trained, ignore_index=True) if trained else pairs.iloc[0:0].assign(round=0))
