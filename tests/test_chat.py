"""A hosted chat-completions teacher, the way users run one: `backend: openai-chat`, from the CLI.

`autotraj serve-model` answers /v1/chat/completions (the tiny teacher's chat template, and native
tool calls when `tools` are declared), standing in for a hosted API on 127.0.0.1; the flaky server
of tests/flaky_server.py sits in front of it where the test needs faults, a request count or the
usage the server reported.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from pathlib import Path

import pytest

from schemas.lake import Lake
from tasks.core.tir import format_problem
from tests.conftest import cli_server
from tests.flaky_server import FlakyServer, flaky_server

SHORT = ["--set", "rollout.max_new_tokens_per_turn=160", "--set", "rollout.max_total_tokens=512",
         "--set", "tools.python.workers=1", "--set", "rollout.backend=openai-chat"]  # fmt: skip


@pytest.fixture(scope="module")
def upstream(tiny_models):
    with cli_server("serve-model", "--model", tiny_models.teacher) as url:
        yield url


def _rollout(
    cli,
    url: str,
    tokenizer: str,
    *extra: str,
    name: str,
    mode: str = "tags",
    queries: str = "arith-s79-n4",  # two-step problems, which the greedy teacher computes with Python
    options: tuple[str, ...] = (),
):
    chat = ["--set", f"rollout.chat_mode={mode}", "--set", f"rollout.tokenizer={tokenizer}"]
    return cli(*SHORT, *chat, *extra, "rollout", "--queries", queries, "--model", f"{url}/v1#default", "--n", "2",
               "--no-ray", "--name", name, *options)  # fmt: skip


@pytest.mark.parametrize("mode", ["tags", "tools"])
def test_a_chat_teacher_writes_tir_trajectories_in_both_modes(mode: str, upstream, tiny_models, home: Path, cli):
    assert cli("data", "synth", "--n", "4", "--seed", "79").exit_code == 0
    counting = FlakyServer(upstream)
    counting.healthy = True
    with flaky_server(counting) as url:
        result = _rollout(cli, url, tiny_models.teacher, "--set", "rollout.temperature=0", name=mode, mode=mode)
    assert result.exit_code == 0, result.output
    lake = Lake(home)
    rows = lake.read(f"rollouts/{mode}").to_pylist()
    assert len(rows) == 8 and all(row["error"] is None for row in rows)
    assert Counter(row["finish_reason"] for row in rows)["answer"] >= 6
    called = [row for row in rows if row["num_tool_calls"]]
    assert len(called) >= 6  # the greedy tiny teacher computes with Python: through native calls in tools mode
    for row in called:  # the same grammar and segments as any rollout: model text, then the tool's result
        kinds = [segment["kind"] for segment in row["segments"]]
        assert kinds[:3] == ["model", "tool", "model"] and row["segments"][1]["tool"] == "python"
        assert row["segments"][0]["text"].rstrip().endswith("</code>") and "<result>" in row["segments"][1]["text"]
        assert all(segment["n_tokens"] == len(segment["token_ids"]) > 0 for segment in row["segments"])
    assert sum(format_problem(row["response"]) is None for row in rows) >= 6
    # Usage: per trajectory in the table, summed in the stage report, equal to what the server reported.
    assert [sum(row[f"usage_{part}_tokens"] for row in rows) for part in ("prompt", "completion")] == counting.usage
    report = lake.stage_metrics(lake.resolve(f"rollouts/{mode}"))["usage"]
    assert [report["prompt_tokens"], report["completion_tokens"]] == counting.usage
    assert f"{counting.usage[0]} prompt + {counting.usage[1]} completion tokens" in result.output


def test_the_request_cache_replays_a_stage_at_zero_requests(upstream, tiny_models, home: Path, cli):
    assert cli("data", "synth", "--n", "4", "--seed", "79").exit_code == 0
    counting = FlakyServer(upstream)
    counting.healthy = True
    cache = ["--set", "requests.cache=[rollout]", "--set", "rollout.temperature=0.7"]
    with flaky_server(counting) as url:
        first = _rollout(cli, url, tiny_models.teacher, *cache, name="first")
        sent = counting.calls
        replay = _rollout(cli, url, tiny_models.teacher, *cache, name="replay")  # a new name: the lake misses
        assert (first.exit_code, replay.exit_code) == (0, 0) and sent > 0
        assert counting.calls == sent  # every request answered by the cache
        bypass = _rollout(cli, url, tiny_models.teacher, *cache, name="bypass", options=("--no-cache",))
        assert bypass.exit_code == 0 and counting.calls == 2 * sent  # --no-cache sends them all again
    lake = Lake(home)
    key = ("trajectory_id", "response", "segments", "usage_prompt_tokens", "usage_completion_tokens")
    rows = {name: [{k: row[k] for k in key} for row in lake.read(f"rollouts/{name}").to_pylist()]
            for name in ("first", "replay", "bypass")}  # fmt: skip
    assert rows["first"] == rows["replay"] == rows["bypass"]  # sampled at 0.7, seeded per trajectory


def test_rate_limits_and_faults_are_retried_and_a_rerun_completes(upstream, tiny_models, home: Path, cli):
    assert cli("data", "synth", "--n", "4", "--seed", "72").exit_code == 0
    flaky = FlakyServer(upstream, modes=("429", "500", "drop", "stall", "429"), every=2, stall_s=2.0)
    policy = ["--set", "requests.timeout_s=1", "--set", "requests.attempts=2", "--set", "requests.backoff_s=0.05"]
    with flaky_server(flaky) as url:
        failed = _rollout(cli, url, tiny_models.teacher, *policy, name="flaky", queries="arith-s72-n4")
        assert failed.exit_code == 1 and "trajectories errored" in failed.output, failed.output
        limited = [flaky.times[seed] for seed, fault in flaky.fault_of_seed.items() if fault == "429"]
        assert limited and all(times[1] - times[0] >= 0.9 for times in limited)  # Retry-After: 1 was honoured
        flaky.healthy = True
        healed = _rollout(cli, url, tiny_models.teacher, *policy, name="flaky", queries="arith-s72-n4")
    assert healed.exit_code == 0, healed.output
    lake = Lake(home)
    *_, complete = versions = lake.versions("rollouts", "flaky")
    rows = lake.read(complete).to_pylist()
    assert len(versions) == 2 and complete.complete and len({row["trajectory_id"] for row in rows}) == len(rows) == 8
    assert flaky.faults["429"] and flaky.faults["500"] and flaky.faults["stall"]


def test_a_refused_key_fails_the_stage_at_once(upstream, tiny_models, home: Path, cli):
    assert cli("data", "synth", "--n", "4", "--seed", "79").exit_code == 0
    refusing = FlakyServer(upstream, modes=("401",))
    with flaky_server(refusing) as url:
        started = time.monotonic()
        result = _rollout(cli, url, tiny_models.teacher, name="refused")
    assert result.exit_code == 2 and "HTTP 401" in result.output and "check the key" in result.output  # bad config
    assert refusing.calls <= 8 and time.monotonic() - started < 60  # not retried
    assert Lake(home).versions("rollouts", "refused") == []


def test_repair_and_eval_take_a_chat_model_and_eval_replays_from_its_cache(upstream, tiny_models, home: Path, cli):
    assert cli("data", "synth", "--n", "4", "--seed", "73").exit_code == 0
    counting = FlakyServer(upstream)
    counting.healthy = True
    chat = ["--set", "repair.backend=openai-chat", "--set", f"repair.tokenizer={tiny_models.teacher}",
            "--set", "evaluate.backend=openai-chat", "--set", f"evaluate.tokenizer={tiny_models.teacher}",
            "--set", "evaluate.temperature=0"]  # fmt: skip
    with flaky_server(counting) as url:
        reference = f"{url}/v1#default"
        rolled = _rollout(cli, url, tiny_models.teacher, "--set", "rollout.temperature=0.7", name="chat",
                          queries="arith-s73-n4")  # fmt: skip
        assert rolled.exit_code == 0 and cli("score", "--rollouts", "chat").exit_code == 0
        repaired = cli(*SHORT, *chat, "repair", "--scores", "chat", "--model", reference, "--no-ray")
        assert repaired.exit_code == 0, repaired.output
        compare = ["eval", "--models", f"{reference},{tiny_models.teacher}", "--benchmarks", "arith-s73-n4", "--no-ray"]
        first = cli(*SHORT, *chat, *compare, "--name", "a")
        sent = counting.calls
        again = cli(*SHORT, *chat, *compare, "--name", "b")
    assert (first.exit_code, again.exit_code) == (0, 0), first.output
    assert counting.calls == sent  # evaluation caches by default: the second comparison sent nothing
    lake = Lake(home)
    repairs = lake.read("repairs/chat").to_pylist()
    assert repairs and all(row["finish_reason"] != "error" for row in repairs)
    assert lake.stage_metrics(lake.resolve("repairs/chat"))["usage"]["completion_tokens"] > 0
    values = {(row["model_id"], row["metric"]): row["value"] for row in lake.read("eval_results/a").to_pylist()}
    assert values == {(row["model_id"], row["metric"]): row["value"] for row in lake.read("eval_results/b").to_pylist()}
    assert values[("default", "generation_errors")] == 0


def test_a_rate_cap_spaces_requests_and_a_named_key_variable_must_be_set(monkeypatch) -> None:
    from tasks.core.errors import ModelAuthError
    from tasks.generation.served import ServedClient, ServedOptions
    from tools_sandbox.http_retry import RateLimit

    limit, starts = RateLimit(per_minute=1200), []  # one start per 50 ms
    for _ in range(5):
        limit.wait()
        starts.append(time.monotonic())
    assert all(later - earlier >= 0.045 for earlier, later in itertools.pairwise(starts))
    monkeypatch.delenv("TEAM_GATEWAY_KEY", raising=False)
    with pytest.raises(ModelAuthError, match=r"\$TEAM_GATEWAY_KEY \(api_key_env\) is not set"):
        ServedClient("http://127.0.0.1:1/v1/chat/completions", ServedOptions(api_key_env="TEAM_GATEWAY_KEY"))
    monkeypatch.setenv("TEAM_GATEWAY_KEY", "sk-team")
    client = ServedClient("http://127.0.0.1:1/v1/chat/completions", ServedOptions(api_key_env="TEAM_GATEWAY_KEY"))
    assert client.client.headers["Authorization"] == "Bearer sk-team"
