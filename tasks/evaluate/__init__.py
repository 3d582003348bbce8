from tasks.evaluate.evaluate import SCOREBOARD, STAGE, summarize

__all__ = ["SCOREBOARD", "STAGE", "summarize"]
