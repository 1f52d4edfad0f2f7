"""Served models, the way the gpu profile names them: `http://HOST:PORT/v1#SERVED_NAME`, no --tokenizer.

`autotraj serve-model` serves the test-size teacher under the gpu profile's served name; the
tokenizer then defaults to that name, found as a directory of that name in the working directory
(as a local copy of a Hub repository would be) or as a Hub id in the Hugging Face cache. Rollout,
repair and eval run against it from the CLI; samples of a query differ and replay; a dead or
refusing server gives errored trajectories that score counts and never labels.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from schemas.config import PROFILES_DIR
from schemas.lake import Lake
from tasks.bootstrap import mixture, synth
from tasks.core.models import API_KEY_ENV
from tests.conftest import cli_server, free_port

GPU_TEACHER = yaml.safe_load((PROFILES_DIR / "gpu.yaml").read_text())["rollout"]["model"]
SERVED_NAME = GPU_TEACHER.partition("#")[2]  # Qwen/Qwen2.5-7B-Instruct
WEDGED_AFTER_S = 0.5  # /health calls a request wedged past this: far below a 1,900-token generation
SHORT = ["--set", "rollout.max_new_tokens_per_turn=160", "--set", "rollout.max_total_tokens=512",
         "--set", "tools.python.workers=1"]  # fmt: skip


def _reference(url: str) -> str:
    """gpu.yaml's teacher reference, pointed at the test server (same path and served name)."""
    return url + "/v1#" + SERVED_NAME


@pytest.fixture(scope="module")
def tokenizer_root(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding `Qwen/Qwen2.5-7B-Instruct/` with the tiny teacher's tokenizer and config (what a
    Hub repository's files give), without its weights."""
    import shutil

    from tasks.generation.llm import load_tokenizer

    root = tmp_path_factory.mktemp("hub-copy")
    load_tokenizer(tiny_models.teacher).save_pretrained(root / SERVED_NAME)
    shutil.copy(Path(tiny_models.teacher) / "config.json", root / SERVED_NAME)
    return root


@pytest.fixture(scope="module")
def served(tiny_models) -> Iterator[str]:
    """`autotraj serve-model` with the test-size teacher, named as gpu.yaml names its teacher, requiring a
    bearer key that every client in this module sends from $AUTOTRAJ_API_KEY (as a cluster shares it)."""
    key = "served-key-" + os.urandom(4).hex()
    previous = os.environ.get(API_KEY_ENV)
    os.environ[API_KEY_ENV] = key
    try:
        with cli_server("serve-model", "--model", tiny_models.teacher, "--served-name", SERVED_NAME, "--api-key",
                        key, "--wedged-after-s", str(WEDGED_AFTER_S)) as url:  # fmt: skip
            yield url
    finally:
        os.environ.pop(API_KEY_ENV, None)
        if previous is not None:
            os.environ[API_KEY_ENV] = previous


def _by_query(rows: list[dict]) -> dict[str, list[str]]:
    responses: dict[str, list[str]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: row["sample_index"]):
        responses[row["query_id"]].append(row["response"])
    return responses


def test_gpu_profile_rollout_and_repair_against_a_served_teacher(
    served, tokenizer_root, tiny_models, local_ray, home, cli, monkeypatch
) -> None:
    monkeypatch.chdir(tokenizer_root)
    reference = _reference(served)
    gpu = ["--profile", "gpu", *SHORT, "--set", f"rollout.model={reference}", "--set", f"repair.model={reference}",
           "--set", "rollout.temperature=0.7"]  # fmt: skip
    assert cli("data", "synth", "--n", "3", "--seed", "61").exit_code == 0
    result = cli(*gpu, "rollout", "--queries", "arith-s61-n3", "--n", "4")  # through Ray actors, as the profile runs
    assert result.exit_code == 0, result.output
    lake = Lake(home)
    rows = lake.read("rollouts/arith-s61-n3-rollout").to_pylist()
    assert len(rows) == 12 and {row["model"] for row in rows} == {SERVED_NAME}
    assert all(row["error"] is None for row in rows)
    # Every sample of a query has its own seed: at 0.7 they differ over HTTP, as they do locally (with one
    # seed per query every query's samples would be identical; a confident tiny model may repeat itself on
    # one query, so some query, not each, shows it).
    http = _by_query(rows)
    assert any(len(set(samples)) >= 2 for samples in http.values()), http
    local = cli(*SHORT, "--set", "rollout.temperature=0.7", "rollout", "--queries", "arith-s61-n3", "--n", "4",
                "--model", tiny_models.teacher, "--no-ray", "--name", "local")  # fmt: skip
    assert local.exit_code == 0, local.output
    assert any(len(set(samples)) >= 2 for samples in _by_query(lake.read("rollouts/local").to_pylist()).values())
    # The same seeds again: the same samples.
    again = cli(*gpu, "rollout", "--queries", "arith-s61-n3", "--n", "4", "--name", "replay", "--no-ray")
    assert again.exit_code == 0, again.output
    assert _by_query(lake.read("rollouts/replay").to_pylist()) == http

    assert cli(*gpu, "score", "--rollouts", "arith-s61-n3-rollout", "--name", "served").exit_code == 0
    repaired = cli(*gpu, "repair", "--scores", "served", "--no-ray")
    assert repaired.exit_code == 0, repaired.output
    scores = lake.read("scores/served").to_pylist()
    repairs = lake.read("repairs/served").to_pylist()
    assert len(repairs) == sum(row["label"] != "high_quality" for row in scores)
    assert {row["model"] for row in repairs} <= {SERVED_NAME}
    assert all(row["finish_reason"] != "error" for row in repairs)


def test_eval_takes_a_served_model(served, tokenizer_root, tiny_models, home, cli, monkeypatch) -> None:
    monkeypatch.chdir(tokenizer_root)
    assert cli("data", "synth", "--n", "4", "--seed", "62").exit_code == 0
    models = f"{_reference(served)},{tiny_models.teacher}"
    result = cli(*SHORT, "--set", "evaluate.temperature=0", "eval", "--models", models, "--benchmarks", "arith-s62-n4",
                 "--no-ray", "--name", "served")  # fmt: skip
    assert result.exit_code == 0, result.output
    values: dict[str, dict[str, float]] = defaultdict(dict)
    for row in Lake(home).read("eval_results/served").to_pylist():
        values[row["model_id"]][row["metric"]] = row["value"]
    path_label = f"{Path(tiny_models.teacher).parent.name}-teacher"
    assert set(values) == {SERVED_NAME, path_label}
    # The same weights, greedy, behind HTTP or loaded here: the same trajectories, the same figures.
    assert values[SERVED_NAME] == values[path_label] and values[SERVED_NAME]["generation_errors"] == 0


def test_a_dead_server_gives_errored_rows_that_score_counts_and_never_labels(
    served, tokenizer_root, tiny_models, lake: Lake, tmp_path: Path, cli
) -> None:
    tokenizer = str(tokenizer_root / SERVED_NAME)
    assert cli("data", "synth", "--n", "2", "--seed", "63").exit_code == 0
    dead = f"http://127.0.0.1:{free_port()}/v1#{SERVED_NAME}"  # nothing listens there
    result = cli(*SHORT, "rollout", "--queries", "arith-s63-n2", "--n", "2", "--model", dead, "--tokenizer", tokenizer,
                 "--no-ray", "--name", "dead")  # fmt: skip
    assert result.exit_code == 2 and "all 4 trajectories errored" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.output and len(errors) == 1
    assert lake.versions("rollouts", "dead") == []  # nothing usable was written …
    query = "SELECT count(*) AS n FROM rollouts_all WHERE dataset LIKE 'dead.partial-%' AND error IS NOT NULL"
    errored = lake.sql(query)
    assert errored.to_pylist() == [{"n": 4}]  # … but every errored attempt is recorded

    # A server that refuses one query (too long for its context) and answers the others.
    problems = synth.generate(2, 64, prefix="mixed")
    long = synth.Problem("mixed-long", " ".join(["the stone is heavy"] * 600) + " What is 1 + 1?", "", "", 2)
    path = mixture.write_jsonl([*problems, long], tmp_path / "mixed.jsonl")
    assert cli("data", "import", str(path), "--name", "mixed").exit_code == 0
    result = cli(*SHORT, "rollout", "--queries", "mixed", "--n", "2", "--model", _reference(served), "--tokenizer",
                 tokenizer, "--no-ray")  # fmt: skip
    assert result.exit_code == 1 and "2 of 6 trajectories errored" in result.output and "re-run" in result.output
    rows = lake.read("rollouts/mixed-rollout").to_pylist()
    refused = {row["trajectory_id"] for row in rows if row["error"]}
    assert len(rows) == 6 and len(refused) == 2 and all("HTTP 400" in row["error"] for row in rows if row["error"])
    scored = cli("score", "--rollouts", "mixed-rollout")
    assert scored.exit_code == 0, scored.output
    scores = lake.read("scores/mixed-rollout").to_pylist()
    assert len(scores) == 4 and not refused & {row["trajectory_id"] for row in scores}  # never labelled
    assert lake.stage_metrics(lake.resolve("scores/mixed-rollout"))["generation_errors"] == 2


def test_a_served_tokenizer_is_found_by_hub_id_in_the_hugging_face_cache(tokenizer_root, tmp_path: Path) -> None:
    snapshot = tmp_path / "hf" / "hub" / f"models--{SERVED_NAME.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.parent.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    script = ("from tasks.generation.llm import load_tokenizer\n"
              f"print(len(load_tokenizer({SERVED_NAME!r})))")  # fmt: skip
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    missing = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode != 0 and "nor a Hugging Face model id in the local cache" in missing.stderr
    import shutil

    shutil.copytree(tokenizer_root / SERVED_NAME, snapshot)
    found = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    expected = len(__import__("transformers").AutoTokenizer.from_pretrained(tokenizer_root / SERVED_NAME))
    assert int(found.stdout) == expected


def test_serve_model_refuses_bad_requests_and_lets_go_of_abandoned_ones(served, tiny_models) -> None:
    url = served + "/v1/completions"
    key = {"Authorization": f"Bearer {os.environ[API_KEY_ENV]}"}
    body = {"model": SERVED_NAME, "prompt": "What is 2 + 2?", "max_tokens": 4}
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    assert httpx.get(served + "/v1/models", timeout=30).status_code == 401
    assert httpx.post(url, json=body, headers=key, timeout=30).status_code == 200

    def status(**changes: object) -> int:
        return httpx.post(url, json=body | changes, headers=key, timeout=30).status_code

    def raw_status(text: str) -> int:
        headers = key | {"content-type": "application/json"}
        return httpx.post(url, content=text.encode(), headers=headers, timeout=30).status_code

    # Each of these answered 500, or ran, before: each is the client's error now.
    template = f'{{"model": "{SERVED_NAME}", "prompt": "hi", "temperature": %s}}'
    assert [raw_status(template % "NaN"), raw_status(template % "Infinity")] == [422, 422]
    assert status(seed=2**70) == status(prompt="") == status(prompt=[]) == status(min_tokens=5) == 422
    assert status(prompt=[5, 10**6]) == status(prompt=[-1]) == 400  # out of the vocabulary
    assert status(model="some-other-model") == 404
    assert status(max_tokens=32768) == 400  # past the model's context (its config's max_position_embeddings)
    assert status(prompt=[5] * 1_000_000) == 413  # the body bound, before anything is parsed
    assert httpx.get(served + "/health", timeout=30).json()["status"] == "ok"

    # A client that leaves: its generation stops, and the worker is free again.
    long = body | {"max_tokens": 1900, "min_tokens": 1900}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=long, headers=key, timeout=0.3)
    deadline = time.monotonic() + 60
    while (health := httpx.get(served + "/health", timeout=30).json())["busy_s"] or not health.get("cancelled"):
        assert time.monotonic() < deadline, health
        time.sleep(0.1)
    assert health["cancelled"] == 1

    # One request holding the model past --wedged-after-s: /health says so while it runs.
    finished = threading.Event()
    replies: list[int] = []

    def run_long() -> None:
        replies.append(httpx.post(url, json=long, headers=key, timeout=120).status_code)
        finished.set()

    threading.Thread(target=run_long, daemon=True).start()
    seen: set[int] = set()
    while not finished.is_set():
        seen.add(httpx.get(served + "/health", timeout=30).status_code)
        time.sleep(0.05)
    assert replies == [200] and 503 in seen
    assert httpx.get(served + "/health", timeout=30).status_code == 200


def test_a_cancelled_generation_stops_at_the_next_token(tiny_models) -> None:
    from tasks.generation.llm import SamplingParams, TransformersBackend

    backend = TransformersBackend(tiny_models.teacher)
    params = SamplingParams(max_new_tokens=500, min_new_tokens=500)
    assert len(backend.generate([[5, 6, 7]], [], params)[0].token_ids) == 500
    backend.cancel = threading.Event()
    backend.cancel.set()
    assert len(backend.generate([[5, 6, 7]], [], params)[0].token_ids) <= 1
