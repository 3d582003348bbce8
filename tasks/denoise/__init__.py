from tasks.denoise.denoise import DENOISED, STAGE, noise_scores, tail_threshold

__all__ = ["DENOISED", "STAGE", "noise_scores", "tail_threshold"]
