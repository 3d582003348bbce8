from tasks.rewrite.rewrite import RETRIEVALS, REWRITES, STAGE, tag_precision
from tasks.rewrite.strategies import STRATEGIES

__all__ = ["RETRIEVALS", "REWRITES", "STAGE", "STRATEGIES", "tag_precision"]
