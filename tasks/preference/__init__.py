from tasks.preference.preference import PAIRS, RESPONSES, STAGE, make_pairs
from tasks.preference.scorer import rule_violations, score_responses

__all__ = ["PAIRS", "RESPONSES", "STAGE", "make_pairs", "rule_violations", "score_responses"]
