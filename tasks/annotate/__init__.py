from tasks.annotate.annotate import ANNOTATIONS, STAGE, annotate

__all__ = ["ANNOTATIONS", "STAGE", "annotate"]
