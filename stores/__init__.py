"""Storage layer: the DuckDB store, lineage, the LLM-call cache, the retrieval index and registry/tracking access."""

from stores.env import apply_offline_env

apply_offline_env()
