from tasks.ingest.ingest import ITEMS, STAGE, ingest_jsonl, ingest_semanlink

__all__ = ["ITEMS", "STAGE", "ingest_jsonl", "ingest_semanlink"]
