from tasks.retrain.retrain import STAGE, TRAINING_EXAMPLES, sft_phases

__all__ = ["STAGE", "TRAINING_EXAMPLES", "sft_phases"]
