"""The search tool: local BM25 on the bundled corpus, the HTTP client against serve-search, failures."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from schemas.config import SearchConfig
from tests.conftest import SHARED_DATA, cli_server, free_port
from tools_sandbox.protocol import ExecResult
from tools_sandbox.results import format_result, truncate
from tools_sandbox.search import CachedSearch, LocalSearch, Passage, RemoteSearch, SearchError, searcher_from_config

CORPUS = SHARED_DATA / "corpus" / "wiki_sample.jsonl"
pytestmark = pytest.mark.skipif(not CORPUS.exists(), reason="needs ../shared/data beside the checkout")


@pytest.fixture(scope="module")
def index_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("search-home")


@pytest.fixture(scope="module")
def local(index_home: Path) -> LocalSearch:
    return LocalSearch(CORPUS, index_home)


def _known_passage() -> dict:
    with CORPUS.open() as handle:
        for number, line in enumerate(handle):
            if number == 1234:
                return json.loads(line)
    raise AssertionError("corpus shorter than expected")


def test_local_top_k_finds_a_known_passage(local: LocalSearch) -> None:
    known = _known_passage()
    # A distinctive stretch of the passage's own text must bring it back first.
    words = known["contents"].split("\n", 1)[-1].split()
    hits = local.search(" ".join(words[10:40]), k=3)
    assert len(hits) == 3
    assert hits[0].id == known["id"]
    assert hits[0].score >= hits[1].score >= hits[2].score > 0
    assert local.search("zzqqxx vvbbnn", k=3) == []


def test_index_is_built_once_and_cached(local: LocalSearch, index_home: Path, monkeypatch) -> None:
    def refuse(self) -> None:
        raise AssertionError("the index was rebuilt")

    monkeypatch.setattr(LocalSearch, "_build", refuse)
    again = LocalSearch(CORPUS, index_home)
    assert again.index_dir == local.index_dir
    assert len(again.passages) == 2785


def test_malformed_corpus_lines_are_counted(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        '{"id": 1, "title": "Alpha", "contents": "alpha particles are helium nuclei"}\n'
        "not json\n"
        '{"id": 2, "contents": "\\"Beta\\"\\nbeta decay emits electrons"}\n'
        '{"id": 3, "title": "no contents"}\n'
    )
    search = LocalSearch(corpus, tmp_path / "home")
    assert search.skipped_lines == 2
    assert [p.title for p in search.search("beta electrons", k=1)] == ["Beta"]
    with pytest.raises(SearchError, match="not found"):
        LocalSearch(tmp_path / "absent.jsonl", tmp_path / "home")


def test_result_text_is_formatted_and_capped() -> None:
    passages = [Passage("1", "Alpha", '"Alpha"\nfirst  passage\ntext', 2.0), Passage("2", "Beta", "second", 1.0)]
    assert format_result(passages, 2000) == "Doc 1 (Title: Alpha) first passage text\nDoc 2 (Title: Beta) second"
    assert format_result([], 2000) == "No results found."
    capped = truncate("x" * 5000, 2000)
    assert capped.startswith("x" * 2000) and capped.endswith("[output truncated: 3000 more characters]")


def test_python_result_text_keeps_the_error_line() -> None:
    long_failure = ExecResult(stdout="y" * 5000, error="ValueError: bad input", error_type="ValueError")
    shown = format_result(long_failure, 2000)
    assert shown.endswith("\nValueError: bad input") and "[output truncated:" in shown
    assert len(shown) < 2000 + 100
    assert format_result(ExecResult(stdout="4\n"), 2000) == "4\n"
    assert format_result(ExecResult(error="TimeoutError: x", error_type="TimeoutError"), 2000) == "TimeoutError: x"


def test_search_cache_replays_the_first_answer(local: LocalSearch, tmp_path: Path) -> None:
    class Changing:
        """A backend whose answers change between calls, as a live retriever's may."""

        identity = "changing"
        calls = 0

        def search(self, query: str, k: int = 3) -> list[Passage]:
            Changing.calls += 1
            return [Passage(id=str(Changing.calls), title=query, contents=f"answer {Changing.calls}", score=1.0)]

    cached = CachedSearch(Changing(), tmp_path / "cache.sqlite")
    first = cached.search("who", 3)
    assert cached.search("who", 3) == first and Changing.calls == 1
    assert cached.search("who", 5) != first  # k is part of the key
    reopened = CachedSearch(Changing(), tmp_path / "cache.sqlite")  # another process of the same run
    assert reopened.search("who", 3) == first and reopened.hits == 1
    config = SearchConfig(corpus=str(local.corpus))
    assert isinstance(searcher_from_config(config, str(tmp_path), cache=True), CachedSearch)
    assert isinstance(searcher_from_config(config, str(tmp_path)), LocalSearch)
    assert isinstance(searcher_from_config(config.model_copy(update={"cache": True}), str(tmp_path)), CachedSearch)


def test_a_missing_corpus_is_an_error_only_where_search_is_required(tmp_path: Path) -> None:
    config = SearchConfig(corpus=str(tmp_path / "absent.jsonl"))
    with pytest.raises(SearchError, match=r"absent\.jsonl not found"):
        searcher_from_config(config, str(tmp_path))
    assert searcher_from_config(config, str(tmp_path), required=False) is None  # the tool is off
    assert isinstance(
        searcher_from_config(config.model_copy(update={"corpus": str(CORPUS)}), str(tmp_path), required=False),
        LocalSearch,
    )


@pytest.fixture(scope="module")
def served(index_home: Path):
    """`autotraj tools serve-search` in its own process on a free 127.0.0.1 port."""
    with cli_server("tools", "serve-search", env={**os.environ, "AUTOTRAJ_HOME": str(index_home)}) as url:
        yield url


def test_http_client_against_serve_search_matches_local(served: str, local: LocalSearch) -> None:
    remote = RemoteSearch(served, timeout_s=10)
    for query in ("American actor television series", "river valley farm", _known_passage()["title"]):
        expected = local.search(query, k=3)
        got = remote.search(query, k=3)
        assert [(p.id, p.title, p.contents) for p in got] == [(p.id, p.title, p.contents) for p in expected]
        assert [p.score for p in got] == pytest.approx([p.score for p in expected])
    health = httpx.get(f"{served}/health").json()
    assert health == {"status": "ok", "passages": 2785, "corpus": str(CORPUS.resolve())}
    # Without return_score the server sends the documents alone, as FlashRAG does.
    plain = httpx.post(f"{served}/search", json={"query": "river valley farm", "top_n": 2}).json()
    assert [doc["id"] for doc in plain] == [p.id for p in local.search("river valley farm", k=2)]


def test_dead_server_is_a_clear_error() -> None:
    remote = RemoteSearch(f"http://127.0.0.1:{free_port()}", timeout_s=1, attempts=2)
    with pytest.raises(SearchError, match=r"ConnectError: .*\(after 2 attempts\)"):
        remote.search("anything")


@contextlib.contextmanager
def _http_server(handler: type[BaseHTTPRequestHandler]):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_slow_server_times_out_instead_of_hanging() -> None:
    release = threading.Event()

    class Stalls(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            release.wait(5)

        def log_message(self, *args) -> None:
            pass

    with _http_server(Stalls) as url:
        remote = RemoteSearch(url, timeout_s=0.5, attempts=2)
        started = time.monotonic()
        with pytest.raises(SearchError, match=r"ReadTimeout: .*\(after 2 attempts\)"):
            remote.search("anything")
        release.set()
    assert time.monotonic() - started < 5


def test_failing_server_is_retried_then_reported() -> None:
    calls = []

    class Fails(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append(self.path)
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"index loading")

        def log_message(self, *args) -> None:
            pass

    with _http_server(Fails) as url, pytest.raises(SearchError, match=r"HTTP 503: index loading \(after 3 attempts\)"):
        RemoteSearch(url, timeout_s=2, attempts=3).search("anything")
    assert calls == ["/search"] * 3


def test_cli_search_prints_result_text_and_json(cli, home: Path) -> None:
    shown = cli("tools", "search", "river valley farm", "-k", "2")
    assert shown.exit_code == 0
    assert shown.output.startswith("Doc 1 (Title: ") and "Doc 2 (Title: " in shown.output
    as_json = json.loads(cli("tools", "search", "river valley farm", "-k", "2", "--json").stdout)
    assert len(as_json) == 2 and set(as_json[0]) == {"id", "title", "contents", "score"}
    missing = cli("--set", "tools.search.backend=http", "tools", "search", "x")
    assert missing.exit_code == 2 and "needs tools.search.url" in missing.output
