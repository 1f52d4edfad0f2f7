"""The tools a model calls mid-trajectory: the sandboxed Python executor and search (issue 3)."""
