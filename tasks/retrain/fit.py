"""Training is quiet by default: the flywheel prints one line per finished stage, and TRL's per-step progress bar and
log dicts show only with `--verbose` (FLYWHEEL_VERBOSE=1). The losses still reach the trainer's log history, and
from there MLflow.

TRL's fused LM head (SFT and DPO losses) projects only the labelled positions through the 49k-token head on CUDA,
but every position elsewhere, so that a compiled Neuron kernel keeps one shape. On the CPU that is ~300 prompt tokens
projected for every ~20 completion tokens trained on: 45% of an SFT step. We train eagerly, so no shape has to stay
fixed: `fit` lets TRL compact the positions on every device (same losses to bf16 rounding; SFT 8 steps 59.6 s ->
33.3 s on a 2-core Xeon with AMX, tests/tasks/test_retrain.py checks the losses agree). DPO trainers are also built
under it, since TRL precomputes the reference log-probs while building one (7 pairs: 4.3-4.6 s -> 3.1-3.4 s a build,
the same log-probs)."""

from __future__ import annotations

from contextlib import contextmanager

from stores.env import verbose


@contextmanager
def compact_lm_head():
    """TRL scores only labelled positions while this is open (trl 1.16: `_use_triton` decides the compaction)."""
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original


def fit(trainer):
    """Train and return the trained model, its own forward restored. Accelerate marks a model it has prepared and
    leaves it as it is the next time, so a second trainer on the same model (the next SFT phase, every DPO round)
    trained without the bf16 autocast it was configured with: in float32, on the wrapped forward of the first.
    Unmarking the model before training and unwrapping it after gives every trainer the model as loaded."""
    if not verbose():
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    trainer.model.__dict__.pop("_is_accelerate_prepared", None)
    with compact_lm_head():
        trainer.train()
    model = trainer.model
    for patched in ("forward", "_original_forward", "_is_accelerate_prepared"):  # TRL's fused head, accelerate's
        model.__dict__.pop(patched, None)
    return model
