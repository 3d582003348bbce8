from tasks.refine.refine import REFINEMENT_EXAMPLES, STAGE

__all__ = ["REFINEMENT_EXAMPLES", "STAGE"]
