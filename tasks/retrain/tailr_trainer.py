"""TRL's SFTTrainer with the TaiLr-weighted token loss (tasks/denoise/tailr.py has the weights and their source).
Imported only when a phase trains with γ > 0, so importing the stage modules does not import TRL."""

from __future__ import annotations

import torch
from trl import SFTTrainer

from tasks.denoise.tailr import tailr_weights


class TaiLrSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with the TaiLr-weighted token loss (completion tokens only, like SFT's default)."""

    def __init__(self, *args, gamma: float, min_weight: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma, self.min_weight = gamma, min_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)  # per-token log-probs of the labels, zero where ignored
        mask = outputs.label_mask.to(outputs.log_probs.dtype)
        with torch.no_grad():
            weights = tailr_weights(outputs.log_probs.detach().float(), self.gamma, self.min_weight) * mask
        tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -(weights * outputs.log_probs).sum() / torch.as_tensor(tokens).clamp(min=1)
        mode = "train" if model.training else "eval"
        self._metrics[mode]["tailr_mean_weight"].append((weights.sum() / mask.sum().clamp(min=1)).item())
        return (loss, outputs) if return_outputs else loss
