from tasks.rewrite.rewrite import REWRITES, STAGE, STRATEGIES, rewrite_queries, tag_precision

__all__ = ["REWRITES", "STAGE", "STRATEGIES", "rewrite_queries", "tag_precision"]
