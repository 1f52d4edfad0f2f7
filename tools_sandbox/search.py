"""The search tool: a local bm25s index over a JSONL corpus, an HTTP retriever client, and its server.

The HTTP API is FlashRAG's, which the paper's pipeline calls: POST /search with
{"query", "top_n", "return_score"}; the answer is [documents, scores] when return_score is true,
else documents, each document {"id", "contents", …}. `serve_app` serves a local index with that API.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, Field

from schemas.config import SearchConfig, private_dir
from tools_sandbox.http_retry import MalformedResponse, RequestFailed, RetryPolicy, post_json
from tools_sandbox.json_cache import JsonCache

log = logging.getLogger(__name__)
INDEX_FORMAT = 1


class SearchError(RuntimeError):
    """A search that could not be answered (unreachable or failing server, malformed reply)."""


class CorpusError(SearchError, FileNotFoundError):
    """A local corpus that is missing or holds nothing: a configuration error, not worth a retry."""


@dataclass(frozen=True)
class Passage:
    """One retrieved passage."""

    id: str
    title: str
    contents: str
    score: float


class Searcher(Protocol):
    """What the rollout engine needs from a search backend."""

    identity: str  # what the search cache keys on: the index or the server

    def search(self, query: str, k: int = 3) -> list[Passage]: ...


def _title_of(row: dict[str, Any]) -> str:
    if row.get("title"):
        return str(row["title"])
    first = str(row.get("contents", "")).partition("\n")[0]
    return first.strip('"')


class LocalSearch:
    """BM25 (bm25s) over a JSONL corpus of {id, title, contents}, built once and cached on disk."""

    def __init__(self, corpus: str | os.PathLike[str], cache_dir: str | os.PathLike[str]):
        self.corpus = Path(corpus).resolve()
        if not self.corpus.exists():
            raise CorpusError(f"search corpus {self.corpus} not found")
        stat = self.corpus.stat()
        key = hashlib.sha256(f"{INDEX_FORMAT}|{self.corpus}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
        self.index_dir = Path(cache_dir) / "search_index" / key[:16]
        self.identity = f"local:{key[:16]}"
        self.skipped_lines = 0
        if not (self.index_dir / "meta.json").exists():
            self._build()
        self._load()

    def _read_corpus(self) -> list[dict[str, str]]:
        passages = []
        with self.corpus.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    passages.append({"id": str(row["id"]), "title": _title_of(row), "contents": str(row["contents"])})
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    self.skipped_lines += 1
                    log.warning("corpus %s line %d skipped: %s", self.corpus, number, exc)
        if not passages:
            raise CorpusError(f"search corpus {self.corpus} holds no valid passages")
        return passages

    def _build(self) -> None:
        import bm25s

        passages = self._read_corpus()
        tokenizer = bm25s.tokenization.Tokenizer(stopwords="en")
        tokens = tokenizer.tokenize([f"{p['title']} {p['contents']}" for p in passages], show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        # Build beside the final directory and rename, so a killed build never leaves a half index.
        staging = self.index_dir.with_name(f".{self.index_dir.name}.{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True)
        # Indexed from token ids, bm25s keeps an int-keyed vocab that its JSON writer refuses.
        retriever.vocab_dict = {str(key): value for key, value in retriever.vocab_dict.items()}
        try:
            retriever.save(staging, show_progress=False)
            tokenizer.save_vocab(staging)
            with (staging / "passages.jsonl").open("w") as handle:
                for passage in passages:
                    handle.write(json.dumps(passage, ensure_ascii=False) + "\n")
            meta = {"corpus": str(self.corpus), "passages": len(passages), "skipped_lines": self.skipped_lines}
            (staging / "meta.json").write_text(json.dumps(meta))
            with contextlib.suppress(FileExistsError, OSError):
                staging.rename(self.index_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _load(self) -> None:
        import bm25s

        self.meta = json.loads((self.index_dir / "meta.json").read_text())
        self.skipped_lines = self.meta["skipped_lines"]
        self.retriever = bm25s.BM25.load(self.index_dir, show_progress=False)
        self.retriever.vocab_dict = {int(key): value for key, value in self.retriever.vocab_dict.items()}
        self.tokenizer = bm25s.tokenization.Tokenizer(stopwords="en")
        self.tokenizer.load_vocab(self.index_dir)
        with (self.index_dir / "passages.jsonl").open() as handle:
            self.passages = [json.loads(line) for line in handle]

    def batch_search(self, queries: list[str], k: int = 3) -> list[list[Passage]]:
        """Top-k passages for each query (passages scoring 0 share no term with it and are left out)."""
        if not queries:
            return []
        k = max(1, min(k, len(self.passages)))
        tokens = self.tokenizer.tokenize(queries, update_vocab=False, show_progress=False)
        indices, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        results = []
        for row_indices, row_scores in zip(indices, scores, strict=True):
            results.append(
                [
                    Passage(score=float(score), **self.passages[int(index)])
                    for index, score in zip(row_indices, row_scores, strict=True)
                    if score > 0
                ]
            )
        return results

    def search(self, query: str, k: int = 3) -> list[Passage]:
        """Top-k passages for one query."""
        return self.batch_search([query], k)[0]


class RemoteSearch:
    """Client of a FlashRAG-style retriever service, with timeouts and retries with backoff."""

    def __init__(self, url: str, timeout_s: float = 10.0, attempts: int = 3):
        self.url = url.rstrip("/")
        if not self.url.endswith("/search"):
            self.url += "/search"
        self.policy = RetryPolicy(timeout_s, attempts, backoff_s=0.2, max_backoff_s=3.0)
        self.identity = f"http:{self.url}"
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s))

    def search(self, query: str, k: int = 3) -> list[Passage]:
        """Top-k passages for one query from the server."""
        payload = {"query": query, "top_n": k, "return_score": True}
        try:
            return post_json(self.client, self.url, payload, self.policy, _parse_reply)
        except RequestFailed as exc:
            raise SearchError(f"search server {exc}") from exc


def _parse_reply(data: Any) -> list[Passage]:
    """The passages of a retriever's reply: [documents, scores], or documents alone."""
    try:
        if (
            isinstance(data, list)
            and len(data) == 2
            and all(isinstance(part, list) for part in data)
            and (not data[0] or isinstance(data[0][0], dict))
        ):
            documents, scores = data
        else:
            documents, scores = data, [0.0] * len(data)
        return [
            Passage(id=str(doc.get("id", "")), title=_title_of(doc), contents=str(doc["contents"]), score=float(score))
            for doc, score in zip(documents, scores, strict=True)
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MalformedResponse(f"a reply that is not [documents, scores]: {exc}") from exc


class CachedSearch:
    """Answers a repeated (backend, query, k) from a SQLite cache, so replays see the same passages.

    On disk (not in memory) so that evaluation reruns and every process of a run share one answer.
    """

    def __init__(self, searcher: Searcher, path: str | os.PathLike[str]):
        self.searcher = searcher
        self.identity = searcher.identity
        self.cache = JsonCache(path, "search_cache")

    @property
    def hits(self) -> int:
        """Searches answered from the cache."""
        return self.cache.hits

    @property
    def misses(self) -> int:
        """Searches the backend answered."""
        return self.cache.misses

    def search(self, query: str, k: int = 3) -> list[Passage]:
        """The cached passages for this query, or the backend's (then cached)."""
        key = self.cache.key(self.identity, query, k)
        stored = self.cache.get(key)
        if stored is not None:
            return [Passage(**passage) for passage in stored]
        passages = self.searcher.search(query, k)
        self.cache.put(key, [asdict(p) for p in passages])
        return passages


def searcher_from_config(
    config: SearchConfig, data_dir: str, cache: bool | None = None, required: bool = True
) -> Searcher | None:
    """The search backend the config names, wrapped in the query cache when asked (cache=None: config).

    A local corpus that does not exist is an error when search is `required` (some query needs it);
    otherwise the run goes on without the tool (None) and logs a warning.
    """
    private_dir(data_dir)  # the index and the query cache live there
    if config.backend == "http":
        if not config.url:
            raise SearchError("tools.search.backend=http needs tools.search.url")
        searcher: Searcher = RemoteSearch(config.url, config.timeout_s, config.attempts)
    elif not required and not Path(config.corpus).exists():
        log.warning("search corpus %s not found; no query here needs search, so the tool is off", config.corpus)
        return None
    else:
        searcher = LocalSearch(config.corpus, data_dir)
    if config.cache if cache is None else cache:
        return CachedSearch(searcher, Path(data_dir) / "search_cache.sqlite")
    return searcher


class SearchRequest(BaseModel):
    """Body of POST /search (FlashRAG's API)."""

    query: str
    top_n: int = Field(3, ge=1, le=100)
    return_score: bool = False


def serve_app(searcher: LocalSearch):  # -> fastapi.FastAPI, imported lazily
    """A FastAPI app serving `searcher` with the FlashRAG API, plus GET /health."""
    from fastapi import FastAPI

    app = FastAPI(title="AutoTraj search", description="BM25 over a local corpus, FlashRAG-compatible")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "passages": len(searcher.passages), "corpus": str(searcher.corpus)}

    @app.post("/search")
    def search(request: SearchRequest) -> list[Any]:
        passages = searcher.search(request.query, request.top_n)
        documents = [{k: v for k, v in asdict(p).items() if k != "score"} for p in passages]
        return [documents, [p.score for p in passages]] if request.return_score else documents

    return app
