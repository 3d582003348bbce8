from tasks.preference.preference import LABEL_QUEUE, PAIRS, PROMPTS, RESPONSES, STAGE, collect_pairs

__all__ = ["LABEL_QUEUE", "PAIRS", "PROMPTS", "RESPONSES", "STAGE", "collect_pairs"]
