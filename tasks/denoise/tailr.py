"""TaiLr token reweighting (Ji et al., "Tailoring Language Generation Models under Total Variation Distance",
ICLR 2023, arXiv 2302.13344): each target token's negative log-likelihood is weighted by

    w_t = p_t / (γ + (1 − γ) · p_t),   clamped to [min_weight, 1],   computed without gradient,

where p_t is the model's current probability of that token. γ = 0 is MLE (w = 1); larger γ down-weights
low-probability tokens (likely noise) harder; γ = 1 gives w = p (the DFT weighting). The formula, the clamp and its
order (weight computed in log space, then clamped) follow the authors' fairseq criterion (thu-coai/TaiLr,
`fairseq/criterions/tailr.py`); their summarization recipe used γ = 0.8 and min_weight = 0.2. The loss is the
weighted NLL summed over completion tokens and divided by the token count, as there (training side:
tasks/retrain/tailr_trainer.py).
"""

from __future__ import annotations

import numpy as np
import torch


def tailr_weights(token_logprobs, gamma: float, min_weight: float):
    """TaiLr weights from token log-probs (a torch tensor or a NumPy array)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if isinstance(token_logprobs, torch.Tensor):
        log_weights = token_logprobs - torch.log(gamma + (1.0 - gamma) * token_logprobs.exp())
        return log_weights.exp().clamp(min=min_weight, max=1.0)
    logprobs = np.asarray(token_logprobs, dtype=float)
    return np.clip(np.exp(logprobs - np.log(gamma + (1.0 - gamma) * np.exp(logprobs))), min_weight, 1.0)
