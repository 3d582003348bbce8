from tasks.denoise.denoise import DENOISED, STAGE, decision_table, noise_decision
from tasks.denoise.methods import METHODS, Decision, decide

__all__ = ["DENOISED", "METHODS", "STAGE", "Decision", "decide", "decision_table", "noise_decision"]
