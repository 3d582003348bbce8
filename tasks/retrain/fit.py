"""Training is quiet by default: the flywheel prints one line per finished stage, and TRL's per-step progress bar and
log dicts show only with `--verbose` (FLYWHEEL_VERBOSE=1). The losses still reach the trainer's log history, and
from there MLflow."""

from __future__ import annotations

from stores.env import verbose


def fit(trainer):
    """Train and return the trained model."""
    if not verbose():
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    trainer.train()
    return trainer.model
