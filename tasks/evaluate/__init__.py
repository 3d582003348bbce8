from tasks.evaluate.evaluate import SCOREBOARD, STAGE, summarize
from tasks.evaluate.promote import PROMOTIONS, decide
from tasks.evaluate.promote import STAGE as PROMOTE_STAGE

__all__ = ["PROMOTE_STAGE", "PROMOTIONS", "SCOREBOARD", "STAGE", "decide", "summarize"]
