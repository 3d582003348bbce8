from tasks.rag_eval.scoreboard import RAG_SCORES, STAGE

__all__ = ["RAG_SCORES", "STAGE"]
