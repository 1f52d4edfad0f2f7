"""One module per stage, each declared once by its `SPEC` (tasks/core/stage.py); no stage imports another.

import_queries (files -> queries) · rollout (a trajectory is born) · score (judged) · repair (rewritten) ·
pairs (training data) · sft, reward_model, grpo (trained on) · evaluate (compared).
"""
