"""A JSON cache on disk (SQLite): answers to repeated requests, shared by every process and thread.

Used where a replay must see exactly what the first run saw and cost nothing: search results
(`tools.search.cache`) and served models' replies (`requests.cache`). Keys are the sha256 of the
request's parts as sorted JSON; a value is written once (the first writer wins).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any


class JsonCache:
    """JSON values by request, in one table of a SQLite file."""

    def __init__(self, path: str | os.PathLike[str], table: str):
        if not table.isidentifier():
            raise ValueError(f"cache table {table!r} must be an identifier")
        self.path, self.table = Path(path), table
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.hits = self.misses = 0

    def __getstate__(self) -> dict[str, Any]:  # sent to Ray actors: each process opens its own connections
        return {"path": self.path, "table": self.table}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["table"])  # type: ignore[misc]

    def _connection(self) -> sqlite3.Connection:
        if getattr(self._local, "db", None) is None:  # sqlite connections are per thread
            self._local.db = sqlite3.connect(self.path, timeout=30)
        return self._local.db

    @staticmethod
    def key(*parts: Any) -> str:
        """The key of a request made of JSON-able parts."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        """The value stored under `key`, or None (counted as a hit or a miss)."""
        row = self._connection().execute(f"SELECT value FROM {self.table} WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        """Store `value` under `key` unless a value is already there."""
        db, text = self._connection(), json.dumps(value, ensure_ascii=False)
        with db:
            db.execute(f"INSERT OR IGNORE INTO {self.table} VALUES (?, ?)", (key, text))
