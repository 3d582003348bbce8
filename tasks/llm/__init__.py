"""Model access for stages: a generation backend interface, its transformers implementation, and the cache."""
