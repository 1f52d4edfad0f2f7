"""Where a trajectory is born: LLM backends, the multi-turn engine, the tools it calls, and the
resumable sharded runner that turns work items into committed rollouts rows."""
