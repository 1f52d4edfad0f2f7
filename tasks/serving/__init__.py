"""Models behind HTTP: an OpenAI-compatible completions server (completions.py) and the reward model's
scorer, server and clients (reward_model.py)."""
