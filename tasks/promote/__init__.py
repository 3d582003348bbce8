from tasks.promote.promote import PROMOTIONS, STAGE, decide

__all__ = ["PROMOTIONS", "STAGE", "decide"]
