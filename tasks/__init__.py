"""Stage logic: where trajectories are born, scored, repaired and trained on."""

import os

# The stages show their own progress; the per-file bars of transformers and datasets only clutter
# logs. A user who wants them back sets these variables to 0.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# GRPO knowingly uses TRL's experimental `rollout_func` (the way to plug in a multi-turn engine).
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
