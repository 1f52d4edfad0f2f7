"""The batched multi-turn rollout engine: where a trajectory is born.

All active trajectories advance together: one batched generate call per turn, stopping at
</code>, </search> or </answer>; the batch's tool calls run concurrently (sandbox pool, search);
each result is appended as a tool segment; finished trajectories leave the batch. Token ids are
concatenated segment by segment, never re-tokenized from joined text, so the ids a trainer sees are
exactly the ids the model produced or was shown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tasks.core.hashing import stable_int
from tasks.core.tir import ANSWER_STOP, STOP_STRINGS, TOOL_STOPS, ToolCall, parse_tool_call, tool_segment_text
from tasks.generation.llm import Generation, LLMBackend, SamplingParams
from tasks.generation.tools import ToolRunner
from tools_sandbox.executor import PythonSession

log = logging.getLogger(__name__)
# "rejected": never generated, its input is over a limit (not retried); "error": failed, retried by a re-run.
FINISH_REASONS = ("answer", "eos", "length", "max_tool_calls", "max_turns", "rejected", "error")


@dataclass(frozen=True)
class EngineLimits:
    """Budgets per trajectory."""

    max_tool_calls: int = 3
    max_turns: int = 10
    max_new_tokens_per_turn: int = 512
    max_total_tokens: int = 4096
    deadline: float | None = None  # time.time() after which no turn starts: the rest is errored, to retry


@dataclass
class Segment:
    """A run of text the model wrote (kind 'model') or a tool returned (kind 'tool')."""

    kind: str
    text: str
    token_ids: list[int]
    tool: str | None = None

    def as_row(self) -> dict[str, Any]:
        """The rollouts-table struct."""
        return {
            "kind": self.kind,
            "tool": self.tool,
            "text": self.text,
            "token_ids": self.token_ids,
            "n_tokens": len(self.token_ids),
        }


@dataclass
class Trajectory:
    """One trajectory being written: its prompt, its segments so far, and how it ended."""

    query_id: str
    sample_index: int
    prompt: str
    prompt_ids: list[int]
    segments: list[Segment] = field(default_factory=list)
    finish_reason: str | None = None
    num_tool_calls: int = 0
    num_turns: int = 0
    error: str | None = None
    seed: int | None = None  # this trajectory's sampling seed (each turn derives its own from it)
    session: PythonSession | None = None
    system: str | None = None  # the prompt's messages, for chat backends (which take messages, not ids)
    user: str = ""
    usage: list[int] | None = None  # [prompt, completion] tokens a served model reported, summed over turns

    @property
    def done(self) -> bool:
        """Whether it has left the batch."""
        return self.finish_reason is not None

    @property
    def response(self) -> str:
        """Everything after the prompt, model and tool text alike."""
        return "".join(segment.text for segment in self.segments)

    @property
    def completion_ids(self) -> list[int]:
        """Token ids after the prompt, segment by segment."""
        return [token for segment in self.segments for token in segment.token_ids]

    @property
    def completion_mask(self) -> list[int]:
        """1 on model-written tokens, 0 on tool tokens (what training masks out)."""
        return [int(segment.kind == "model") for segment in self.segments for _ in segment.token_ids]

    def context(self) -> list[int]:
        """The ids the model continues from."""
        return self.prompt_ids + self.completion_ids

    def finish(self, reason: str, error: str | None = None) -> None:
        """Leave the batch."""
        self.finish_reason, self.error = reason, error

    def turn_seed(self, base: int | None) -> int:
        """The seed of this trajectory's next turn: its own seed (or one from `base` and its query and
        sample), and the turn number, so samples differ and a re-run or resumed run repeats them."""
        seed = self.seed if self.seed is not None else stable_int(base, self.query_id, self.sample_index)
        return stable_int(seed, self.num_turns)


class RolloutEngine:
    """Advances a batch of trajectories turn by turn until each answers or runs out of budget."""

    def __init__(self, backend: LLMBackend, tools: ToolRunner, limits: EngineLimits | None = None):
        self.backend = backend
        self.tools = tools
        self.limits = limits or EngineLimits()

    def _encode_tool(self, text: str) -> list[int]:
        return self.backend.tokenizer.encode(text, add_special_tokens=False)

    def _apply(self, trajectory: Trajectory, generation: Generation) -> ToolCall | None:
        """Record one turn's generation; return the tool call to run, if any."""
        trajectory.num_turns += 1
        if generation.usage is not None:
            trajectory.usage = [a + b for a, b in zip(trajectory.usage or [0, 0], generation.usage, strict=True)]
        budget = self.limits.max_total_tokens - len(trajectory.completion_ids)
        ids, text = generation.token_ids, generation.text
        over_budget = len(ids) > budget
        if over_budget:
            ids = ids[:budget]
            text = self.backend.tokenizer.decode(ids, skip_special_tokens=False)
        if ids or text:
            trajectory.segments.append(Segment("model", text, ids))
        if generation.finish == "error":
            trajectory.finish("error", generation.error)
        elif over_budget:
            trajectory.finish("length")
        elif generation.stop == ANSWER_STOP:
            trajectory.finish("answer")
        elif generation.stop in TOOL_STOPS:
            if trajectory.num_tool_calls >= self.limits.max_tool_calls:
                trajectory.finish("max_tool_calls")
                return None
            trajectory.num_tool_calls += 1
            return parse_tool_call(text, generation.stop)
        elif generation.finish == "eos":
            trajectory.finish("eos")
        else:
            trajectory.finish("length")
        return None

    def run(
        self,
        trajectories: list[Trajectory],
        params: SamplingParams,
        on_finished: Callable[[Trajectory], None] | None = None,
    ) -> list[Trajectory]:
        """Run every trajectory to its end; `on_finished` is called as each leaves the batch."""
        active = [t for t in trajectories if not t.done]
        while active:
            if self.limits.deadline is not None and time.time() >= self.limits.deadline:
                for trajectory in active:
                    trajectory.finish("error", "the stage run's deadline (requests.stage_deadline_s) passed")
                    if on_finished is not None:
                        on_finished(trajectory)
                break
            budgets = [self.limits.max_total_tokens - len(t.completion_ids) for t in active]
            turn_params = SamplingParams(
                max_new_tokens=max(1, min(self.limits.max_new_tokens_per_turn, max(budgets))),
                temperature=params.temperature,
                top_p=params.top_p,
                logprobs=params.logprobs,
            )
            seeds = [t.turn_seed(params.seed) for t in active]
            if getattr(self.backend, "speaks_chat", False):  # a chat API continues the conversation itself
                generations = self.backend.generate_chat(active, STOP_STRINGS, turn_params, seeds)  # type: ignore[attr-defined]
            else:
                contexts = [t.context() for t in active]
                generations = self.backend.generate(
                    contexts, STOP_STRINGS, turn_params, keys=[id(t) for t in active], seeds=seeds
                )
            calls = []
            for trajectory, generation in zip(active, generations, strict=True):
                call = self._apply(trajectory, generation)
                if call is not None:
                    calls.append((trajectory, call))
            for (trajectory, call), output in zip(calls, self.tools.run(calls), strict=True):
                text = tool_segment_text(output)
                trajectory.segments.append(Segment("tool", text, self._encode_tool(text), tool=call.tool))
                if trajectory.num_turns >= self.limits.max_turns:
                    trajectory.finish("max_turns")
            for trajectory in active:
                if trajectory.done and on_finished is not None:
                    on_finished(trajectory)
            active = [t for t in active if not t.done]
        forget = getattr(self.backend, "forget", None)
        if forget is not None:  # a backend's kept KV caches serve only these trajectories
            forget()
        return trajectories
