"""The embedded default's own models: the synthetic task (synth.py), the tiny tokenizer, teacher and
repairer built from scratch (build.py), and the check of a build against its targets (check.py)."""
