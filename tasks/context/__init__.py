from tasks.context.context import CONTEXTS, STAGE

__all__ = ["CONTEXTS", "STAGE"]
