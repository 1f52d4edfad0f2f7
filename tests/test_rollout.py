"""The rollout engine, the LLM backends and the rollout stage, on the test-size bootstrap models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from schemas.lake import Lake
from tasks.bootstrap import mixture, synth
from tasks.core.prompts import Prompts, encode_prompt
from tasks.core.tir import TOOL_STOPS, parse_tool_call, tool_segment_text
from tasks.generation.engine import FINISH_REASONS, EngineLimits, RolloutEngine, Trajectory
from tasks.generation.llm import SamplingParams, TransformersBackend
from tasks.generation.served import OpenAIBackend, ServedOptions
from tasks.generation.tools import ToolRunner
from tests.conftest import cli_server, run_stage_here
from tests.flaky_server import MODES, FlakyServer, flaky_server
from tools_sandbox.executor import SandboxPool
from tools_sandbox.http_retry import RetryPolicy
from tools_sandbox.results import format_result

QUESTIONS = synth.generate(12, seed=321, prefix="rt")


@pytest.fixture(scope="module")
def teacher(tiny_models) -> TransformersBackend:
    return TransformersBackend(tiny_models.teacher)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2) as sandbox:
        yield sandbox


def _trajectories(backend, count: int = len(QUESTIONS)) -> list[Trajectory]:
    prompts = Prompts.from_config()
    result = []
    for problem in QUESTIONS[:count]:
        text, ids = encode_prompt(backend.tokenizer, prompts.system, problem.question)
        result.append(Trajectory(problem.id, 0, text, ids))
    return result


def _engine(backend, pool, **limits) -> RolloutEngine:
    return RolloutEngine(
        backend, ToolRunner(pool, None, 2000), EngineLimits(**({"max_new_tokens_per_turn": 160} | limits))
    )


def test_tool_results_match_executing_the_code(teacher, pool) -> None:
    trajectories = _engine(teacher, pool).run(_trajectories(teacher), SamplingParams(temperature=1.0, seed=5))
    checked = 0
    for trajectory in trajectories:
        assert trajectory.finish_reason in FINISH_REASONS and trajectory.finish_reason != "error"
        for model_segment, tool_segment in zip(trajectory.segments, trajectory.segments[1:], strict=False):
            if tool_segment.kind != "tool":
                continue
            stop = next(s for s in TOOL_STOPS if model_segment.text.endswith(s))
            call = parse_tool_call(model_segment.text, stop)
            expected = tool_segment_text(format_result(pool.run(call.argument), 2000))
            assert tool_segment.text == expected and tool_segment.tool == "python"
            checked += 1
        # ids are the concatenation of per-segment ids; the mask is 0 exactly on tool tokens
        assert trajectory.completion_ids == [t for s in trajectory.segments for t in s.token_ids]
        mask = trajectory.completion_mask
        position = 0
        for segment in trajectory.segments:
            assert set(mask[position : position + len(segment.token_ids)]) <= {int(segment.kind == "model")}
            position += len(segment.token_ids)
        assert trajectory.response == "".join(s.text for s in trajectory.segments)
    assert checked >= len(trajectories) // 3  # the teacher often uses the tool (it also skips it, by design)


class _WithoutKeys:
    """The same backend, called the way a keyless caller would: every turn re-encodes its context."""

    def __init__(self, backend: TransformersBackend):
        self.backend, self.tokenizer, self.name = backend, backend.tokenizer, backend.name

    def generate(self, contexts, stop, params, keys=None, seeds=None):
        return self.backend.generate(contexts, stop, params, seeds=seeds)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_continuing_from_the_kept_kv_cache_changes_nothing(teacher, pool, temperature: float) -> None:
    params = SamplingParams(temperature=temperature, seed=11)
    before = teacher.continued_rows
    cached = _engine(teacher, pool).run(_trajectories(teacher), params)
    assert teacher.continued_rows - before >= sum(t.num_tool_calls > 0 and t.num_turns > 1 for t in cached) > 0
    assert teacher._kept == {}  # released when the run ended
    encoded = _engine(_WithoutKeys(teacher), pool).run(_trajectories(teacher), params)
    assert [t.completion_ids for t in cached] == [t.completion_ids for t in encoded]
    assert [t.finish_reason for t in cached] == [t.finish_reason for t in encoded]


def test_limits_end_trajectories_with_their_reason(teacher, pool) -> None:
    # All 12: the greedy teacher guesses on the hard (3-step) ones and calls the tool on the others.
    no_tools = _engine(teacher, pool, max_tool_calls=0).run(_trajectories(teacher), SamplingParams(temperature=0.0))
    assert {t.finish_reason for t in no_tools} <= {"max_tool_calls", "answer"}
    assert "max_tool_calls" in {t.finish_reason for t in no_tools}
    assert all(t.num_tool_calls == 0 for t in no_tools)
    short = _engine(teacher, pool, max_new_tokens_per_turn=4).run(
        _trajectories(teacher, 3), SamplingParams(temperature=0.0)
    )
    assert all(t.finish_reason == "length" and t.completion_ids.__len__() == 4 for t in short)
    budget = _engine(teacher, pool, max_total_tokens=30).run(_trajectories(teacher, 3), SamplingParams(temperature=0.0))
    assert all(t.finish_reason == "length" and len(t.completion_ids) <= 30 for t in budget)
    one_turn = _engine(teacher, pool, max_turns=1).run(_trajectories(teacher, 4), SamplingParams(temperature=0.0))
    assert {t.finish_reason for t in one_turn} <= {"max_turns", "answer"} and all(t.num_turns == 1 for t in one_turn)


def _import_questions(lake: Lake, tmp_path: Path, count: int, task: str = "math") -> str:
    from tasks.stages.import_queries import FieldMapping, import_queries

    path = mixture.write_jsonl(QUESTIONS[:count], tmp_path / "rt.jsonl")
    report = import_queries(lake, path, f"rt-{task}", FieldMapping(task="no-such-field", default_task=task))
    assert report.queries_version is not None
    return report.queries_version.version_id


def _overrides(**rollout) -> list[str]:
    return [f"rollout.{key}={value}" for key, value in ({"max_new_tokens_per_turn": 160} | rollout).items()] + [
        "tools.python.workers=1"
    ]


def test_sharded_ray_run_equals_one_shard_in_process(
    tiny_models, local_ray, lake: Lake, home: Path, tmp_path: Path
) -> None:
    queries = _import_questions(lake, tmp_path, 6)
    common = {"queries": queries, "model": tiny_models.teacher, "n": 2}
    overrides = _overrides(temperature=0.7)  # sampled: each trajectory's tokens come from its own seeds
    whole = run_stage_here("rollout", overrides, **common, name="whole", shard_size=100, no_ray=True)
    sharded = run_stage_here("rollout", overrides, **common, name="sharded", shard_size=2, actors=2)
    partials = {name: [info for info in lake.versions("rollouts") if info.dataset.startswith(f"{name}.partial-")]
                for name in ("whole", "sharded")}  # fmt: skip
    assert len(partials["sharded"]) == 3 and len(partials["whole"]) == 1  # one commit per shard
    one, many = lake.read(whole.outputs["rollouts"]).to_pylist(), lake.read(sharded.outputs["rollouts"]).to_pylist()
    assert len(one) == len(many) == 12
    key = ("trajectory_id", "response", "finish_reason", "segments")
    assert [{k: row[k] for k in key} for row in one] == [{k: row[k] for k in key} for row in many]
    assert len({row["trajectory_id"] for row in one}) == 12
    info = lake.resolve(whole.outputs["rollouts"])
    assert info.input_versions == (queries,) and info.stage == "rollout"


def test_a_missing_search_corpus_stops_only_rollouts_whose_queries_need_search(
    tiny_models, lake: Lake, home: Path, tmp_path: Path
) -> None:
    from tools_sandbox.search import SearchError

    overrides = [*_overrides(), f"tools.search.corpus={tmp_path / 'none'}"]
    math = run_stage_here("rollout", overrides, queries=_import_questions(lake, tmp_path, 2), model=tiny_models.teacher,
                          n=1, no_ray=True, name="math")  # fmt: skip
    assert math.metrics["trajectories"] == 2 and math.metrics["errors"] == 0
    with pytest.raises(SearchError, match=r"search corpus .* not found"):
        run_stage_here("rollout", overrides, queries=_import_questions(lake, tmp_path, 2, "qa"),
                       model=tiny_models.teacher, n=1, no_ray=True, name="qa")  # fmt: skip


RESUME_OVERRIDES = ["rollout.max_new_tokens_per_turn=160", "rollout.temperature=0.7", "tools.python.workers=1"]
ROLLOUT_SCRIPT = """
import sys
def show(done, total, info=""):
    print("progress", done, total, flush=True)
from flows.stage import STAGES, run_stage
result = run_stage(STAGES["rollout"], {"queries": sys.argv[1], "model": sys.argv[2], "n": 2, "shard_size": 1,
                   "no_ray": True, "name": "resumed"}, "cpu",
                   sys.argv[3:], progress=show)
print("generated", result.metrics["generated"], flush=True)
"""


def test_a_killed_rollout_resumes_without_duplicates(tiny_models, lake: Lake, home: Path, tmp_path: Path) -> None:
    queries = _import_questions(lake, tmp_path, 6)
    env = {**os.environ, "AUTOTRAJ_HOME": str(home)}
    command = [sys.executable, "-c", ROLLOUT_SCRIPT, queries, tiny_models.teacher, *RESUME_OVERRIDES]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None
    for line in first.stdout:
        if line.startswith("progress") and int(line.split()[1]) >= 4:  # two shards committed
            first.kill()
            break
    first.wait(timeout=60)
    committed = sum(info.row_count for info in lake.versions("rollouts") if ".partial-" in info.dataset)
    assert 4 <= committed < 12
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=True)
    assert f"generated {12 - committed}" in second.stdout
    rows = lake.read("rollouts/resumed").to_pylist()
    assert len(rows) == 12 and len({row["trajectory_id"] for row in rows}) == 12
    assert set(Counter(row["query_id"] for row in rows).values()) == {2}
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=True)
    assert "generated 0" in again.stdout
    assert len(lake.versions("rollouts", "resumed")) == 1  # nothing new: no second version
    # Sampled at 0.7, killed and resumed in other shards and batches: the same trajectories as one run.
    whole = run_stage_here("rollout", RESUME_OVERRIDES, queries=queries, model=tiny_models.teacher, n=2,
                           shard_size=100, no_ray=True, name="uninterrupted")  # fmt: skip
    key = ("trajectory_id", "response", "segments", "finish_reason")
    uninterrupted = {row["trajectory_id"]: {k: row[k] for k in key} for row in lake.read(whole.outputs["rollouts"])
                     .to_pylist()}  # fmt: skip
    assert {row["trajectory_id"]: {k: row[k] for k in key} for row in rows} == uninterrupted
    assert len({row["response"] for row in rows}) > 6  # samples differ


@pytest.fixture(scope="module")
def model_server(tiny_models):
    with cli_server("serve-model", "--model", tiny_models.teacher) as url:
        yield url


def test_http_backend_against_serve_model_matches_transformers(teacher, tiny_models, model_server, pool) -> None:
    remote = OpenAIBackend(model_server, "default", tiny_models.teacher, concurrency=4)
    local_runs = _engine(teacher, pool).run(_trajectories(teacher, 4), SamplingParams(temperature=0.0))
    remote_runs = _engine(remote, pool).run(_trajectories(remote, 4), SamplingParams(temperature=0.0))
    assert [t.response for t in remote_runs] == [t.response for t in local_runs]
    assert [t.completion_ids for t in remote_runs] == [t.completion_ids for t in local_runs]
    assert remote.failed_requests == 0


@pytest.mark.parametrize("mode", MODES)
def test_failing_server_is_retried_and_recorded(mode: str, tiny_models, pool) -> None:
    state = FlakyServer(modes=(mode,), stall_s=2.0)
    with flaky_server(state) as url:
        policy = RetryPolicy(timeout_s=0.5, attempts=2, backoff_s=0.05)
        remote = OpenAIBackend(url, "default", tiny_models.teacher, options=ServedOptions(policy))
        trajectories = _engine(remote, pool).run(_trajectories(remote, 2), SamplingParams(temperature=0.0))
    assert state.calls == 4  # two contexts, two attempts each: a malformed body is retried like a dropped one
    assert all(t.finish_reason == "error" and url in (t.error or "") for t in trajectories)
    assert all((t.error or "").endswith("(after 2 attempts)") for t in trajectories), trajectories[0].error
    assert remote.failed_requests == 2


def test_a_request_past_the_deadline_is_not_tried(tiny_models) -> None:
    state = FlakyServer(modes=("stall",), stall_s=2.0)
    with flaky_server(state) as url:
        remote = OpenAIBackend(url, "default", tiny_models.teacher)
        remote.served.policy = RetryPolicy(timeout_s=30, attempts=4, backoff_s=0.05, deadline=time.time() + 0.5)
        started = time.monotonic()
        (generation,) = remote.generate([[5, 6, 7]], [], SamplingParams(max_new_tokens=4))
    assert time.monotonic() - started < 1.5 and state.calls == 1  # cut at the deadline, not 30 s x 4
    assert generation.finish == "error" and "(after 1 attempt)" in (generation.error or "")


def test_rollout_batch_size_sets_the_generation_batch(tiny_models, lake: Lake, tmp_path: Path, cli, monkeypatch):
    rows_per_call: list[int] = []
    run = TransformersBackend._run

    def recording(self, inputs, contexts, *args, **kwargs):
        rows_per_call.append(len(contexts))
        return run(self, inputs, contexts, *args, **kwargs)

    monkeypatch.setattr(TransformersBackend, "_run", recording)
    queries = _import_questions(lake, tmp_path, 4)
    overrides = [item for override in _overrides(batch_size=3) for item in ("--set", override)]
    result = cli(*overrides, "rollout", "-q", queries, "-m", tiny_models.teacher, "--n", "2", "--no-ray")
    assert result.exit_code == 0, result.output
    assert max(rows_per_call) == 3 and rows_per_call[0] == 3  # 8 trajectories, 3 rows per generate call


def test_an_oversized_question_is_rejected_alone_at_rollout(tiny_models, lake: Lake, tmp_path: Path, cli) -> None:
    from tasks.stages.import_queries import FieldMapping, import_queries, query_id_for

    rows = [{"question": problem.question, "answer": str(problem.answer)} for problem in QUESTIONS[:3]]
    rows.insert(1, {"question": "What is " + "1 + " * 2_500_000 + "1?", "answer": "2500001"})  # 10 MB
    source = tmp_path / "huge.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    imported = import_queries(lake, source, "huge", FieldMapping(max_question_chars=20_000_000))  # let it in
    assert imported.imported == 4
    overrides = [item for override in _overrides() for item in ("--set", override)]
    result = cli(*overrides, "rollout", "-q", "huge", "-m", tiny_models.teacher, "--n", "2", "--no-ray")
    assert result.exit_code == 0, result.output  # the others proceed, and the version is complete
    written = lake.read("rollouts/huge-rollout").to_pylist()
    rejected = [row for row in written if row["finish_reason"] == "rejected"]
    assert len(written) == 8 and len(rejected) == 2
    assert {row["query_id"] for row in rejected} == {query_id_for(rows[1]["question"])}
    assert rejected[0]["error"] == (
        "the prompt has 10000010 characters, surely over 8192 tokens; rollout.max_prompt_tokens is 8192"
    )
    assert all(row["error"] is None for row in written if row["finish_reason"] != "rejected")
    assert lake.versions("rollouts", "huge-rollout")[0].complete
    again = cli(*overrides, "rollout", "-q", "huge", "-m", tiny_models.teacher, "--n", "2", "--no-ray")
    assert again.exit_code == 0 and len(lake.versions("rollouts", "huge-rollout")) == 1  # not retried: fixed input


def test_a_passed_deadline_errors_what_is_left(teacher, pool) -> None:
    engine = _engine(teacher, pool)
    engine.limits = EngineLimits(max_new_tokens_per_turn=160, deadline=time.time() - 1)
    trajectories = engine.run(_trajectories(teacher, 3), SamplingParams(temperature=0.0))
    assert all(t.finish_reason == "error" and "requests.stage_deadline_s" in (t.error or "") for t in trajectories)
    assert all(t.num_turns == 0 for t in trajectories)
