"""The tools a trajectory calls, wired once: Python on the sandbox pool, search on threads.

`open_tools(config, search_required)` is the one place a stage builds its tools from config
(rollout and repair workers, GRPO, evaluation, the bootstrap check); the runner it returns owns the
pool and closes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from schemas.config import PipelineConfig
from tasks.core.tir import ToolCall
from tools_sandbox.executor import ExecResult, PythonSession, SandboxPool
from tools_sandbox.results import format_result
from tools_sandbox.search import Searcher, SearchError


class Caller(Protocol):
    """What makes a tool call: a trajectory, which keeps its Python session between calls."""

    session: PythonSession | None


SEARCH_TASKS = frozenset({"qa"})  # the query tasks whose questions need the search tool


def needs_search(tasks: Iterable[str]) -> bool:
    """Whether any of these query tasks needs the search tool."""
    return not SEARCH_TASKS.isdisjoint(tasks)


class ToolRunner:
    """Runs a batch's tool calls concurrently: Python on the sandbox pool, search on threads."""

    def __init__(
        self,
        pool: SandboxPool | None,
        searcher: Searcher | None,
        max_result_chars: int,
        top_k: int = 3,
        owns_pool: bool = False,
    ):
        self.pool = pool
        self.searcher = searcher
        self.max_result_chars = max_result_chars
        self.top_k = top_k
        self.owns_pool = owns_pool
        self._search_threads = ThreadPoolExecutor(8, thread_name_prefix="search")

    def _submit(self, trajectory: Caller, call: ToolCall) -> Callable[[], str]:
        """Start one call; the returned function waits for it and gives its <result> text."""
        if call.error is not None:
            return lambda: f"Error: {call.error}"
        if call.tool == "python":
            if self.pool is None:
                return lambda: "Error: the Python tool is not available"
            session = trajectory.session = trajectory.session or PythonSession(self.pool)
            future = self.pool.submit(session.request(call.argument), owner=session)

            def python_result() -> str:
                try:
                    result = future.result()
                except Exception as exc:  # the pool could not serve: this call fails, the batch goes on
                    result = ExecResult(error=f"SandboxError: {exc}", error_type="SandboxError")
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

    def run(self, calls: Sequence[tuple[Caller, ToolCall]]) -> list[str]:
        """Result text for every call, in order; all calls in flight at once."""
        waiting = [self._submit(trajectory, call) for trajectory, call in calls]
        return [wait() for wait in waiting]

    def close(self) -> None:
        """Stop the search threads, and the sandbox pool when this runner owns it."""
        self._search_threads.shutdown(wait=True)
        if self.owns_pool and self.pool is not None:
            self.pool.close()

    def __enter__(self) -> ToolRunner:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


def open_tools(config: PipelineConfig, search_required: bool = True, search: bool = True) -> ToolRunner:
    """The sandbox pool and the searcher the config names, in a runner that owns them.

    A missing local corpus is an error only when `search_required` (some query's task needs search);
    `search=False` leaves the search tool off.
    """
    from tools_sandbox.search import searcher_from_config

    tools = config.tools
    searcher = searcher_from_config(tools.search, config.runtime.data_dir, required=search_required) if search else None
    return ToolRunner(SandboxPool(tools.python), searcher, tools.max_result_chars, tools.search.top_k, owns_pool=True)
