"""The batched multi-turn rollout engine: where a trajectory is born.

All active trajectories advance together: one batched generate call per turn, stopping at
</code>, </search> or </answer>; the batch's tool calls run concurrently (sandbox pool, search);
each result is appended as a tool segment; finished trajectories leave the batch. Token ids are
concatenated segment by segment, never re-tokenized from joined text, so the ids a trainer sees are
exactly the ids the model produced or was shown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tasks.llm import Generation, LLMBackend, SamplingParams
from tasks.tir import ANSWER_STOP, STOP_STRINGS, TOOL_STOPS, ToolCall, load_prompt, parse_tool_call, tool_segment_text
from tools_sandbox.executor import PythonSession, SandboxPool
from tools_sandbox.results import format_result
from tools_sandbox.search import Searcher, SearchError

log = logging.getLogger(__name__)
FINISH_REASONS = ("answer", "eos", "length", "max_tool_calls", "max_turns", "error")


@dataclass(frozen=True)
class EngineLimits:
    """Budgets per trajectory."""

    max_tool_calls: int = 3
    max_turns: int = 10
    max_new_tokens_per_turn: int = 512
    max_total_tokens: int = 4096


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
    session: PythonSession | None = None

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


@dataclass(frozen=True)
class Prompts:
    """The system prompt and user template; files a user can override."""

    system: str
    user_template: str

    @classmethod
    def load(cls, system_file: str | None = None, user_file: str | None = None) -> Prompts:
        """The bundled prompts, or the user's files."""
        return cls(load_prompt("system", system_file), load_prompt("user", user_file))


def encode_prompt(tokenizer: Any, system: str, user: str) -> tuple[str, list[int]]:
    """Prompt text and ids: the chat template when the tokenizer has one, else plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = f"{system}\n\n{user}\n"
    return text, tokenizer.encode(text, add_special_tokens=False)


class ToolRunner:
    """Runs a batch's tool calls concurrently: Python on the sandbox pool, search on threads."""

    def __init__(self, pool: SandboxPool | None, searcher: Searcher | None, max_result_chars: int, top_k: int = 3):
        self.pool = pool
        self.searcher = searcher
        self.max_result_chars = max_result_chars
        self.top_k = top_k
        self._search_threads = ThreadPoolExecutor(8, thread_name_prefix="search")

    def _submit(self, trajectory: Trajectory, call: ToolCall) -> Callable[[], str]:
        """Start one call; the returned function waits for it and gives its <result> text."""
        if call.error is not None:
            return lambda: f"Error: {call.error}"
        if call.tool == "python":
            if self.pool is None:
                return lambda: "Error: the Python tool is not available"
            session = trajectory.session = trajectory.session or PythonSession(self.pool)
            future = self.pool.submit(session.request(call.argument))

            def python_result() -> str:
                result = future.result()
                session.record(call.argument, result)
                return format_result(result, self.max_result_chars)

            return python_result
        if self.searcher is None:
            return lambda: "Error: the search tool is not available"
        searcher = self.searcher

        def search() -> str:
            try:
                return format_result(searcher.search(call.argument, self.top_k), self.max_result_chars)
            except SearchError as exc:
                return f"Error: {exc}"

        return self._search_threads.submit(search).result

    def run(self, calls: Sequence[tuple[Trajectory, ToolCall]]) -> list[str]:
        """Result text for every call, in order; all calls in flight at once."""
        waiting = [self._submit(trajectory, call) for trajectory, call in calls]
        return [wait() for wait in waiting]

    def close(self) -> None:
        """Stop the search threads (the pool belongs to the caller)."""
        self._search_threads.shutdown(wait=True)


class RolloutEngine:
    """Advances a batch of trajectories turn by turn until each answers or runs out of budget."""

    def __init__(self, backend: LLMBackend, tools: ToolRunner, limits: EngineLimits | None = None):
        self.backend = backend
        self.tools = tools
        self.limits = limits or EngineLimits()
        self.generate_calls = 0

    def _encode_tool(self, text: str) -> list[int]:
        return self.backend.tokenizer.encode(text, add_special_tokens=False)

    def _apply(self, trajectory: Trajectory, generation: Generation) -> ToolCall | None:
        """Record one turn's generation; return the tool call to run, if any."""
        trajectory.num_turns += 1
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
            budgets = [self.limits.max_total_tokens - len(t.completion_ids) for t in active]
            turn_params = SamplingParams(
                max_new_tokens=max(1, min(self.limits.max_new_tokens_per_turn, max(budgets))),
                temperature=params.temperature,
                top_p=params.top_p,
                seed=None if params.seed is None else params.seed + self.generate_calls,
                logprobs=params.logprobs,
            )
            contexts = [t.context() for t in active]
            generations = self.backend.generate(contexts, STOP_STRINGS, turn_params, keys=[id(t) for t in active])
            self.generate_calls += 1
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
