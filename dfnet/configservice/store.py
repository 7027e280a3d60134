"""The config service's database: SQLite, one file, opened by one ``Store``.

Owns the schema and every query. Tables: ``supernodes`` (one row per supernode id: its
address, IDC, location, reported load and the wall-clock time of its last heartbeat) and
``settings`` (key -> JSON of the normal form), plus the settings version in ``meta``.

Rules kept here:
- WAL mode, ``synchronous=NORMAL``: a heartbeat is one small write that does not wait for
  fsync; a crash may lose the last heartbeats (they come again within a TTL), never corrupt.
- The settings version starts at 0 and goes up by one with every update that changes the
  settings; an update that changes nothing keeps it. Update and bump are one transaction
  (``BEGIN IMMEDIATE``), so two services on one file cannot hand out the same version.
- Health is age: a supernode is healthy while ``now - last_seen < ttl``. Times are wall clock
  (``time.time()``) so they survive a restart. Rows unseen for a day are deleted.
- A file that is not a SQLite database, or a SQLite database of something else (tables but
  not ours), is refused with a one-line ``StoreError``; an empty or missing file is set up.
- Methods are synchronous and short; the server runs them on one worker thread, so the
  connection is only ever used by one thread at a time.
"""
from __future__ import annotations

import json
import sqlite3

__all__ = ["Store", "StoreError", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
FORGET_AFTER_S = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS supernodes (
    id TEXT PRIMARY KEY,
    addr TEXT NOT NULL,
    idc TEXT NOT NULL,
    location TEXT NOT NULL,
    tasks INTEGER,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('settings_version', 0);
"""


class StoreError(Exception):
    """The database cannot be opened or used; the message is one line."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class Store:
    def __init__(self, conn: sqlite3.Connection, path: str):
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str) -> "Store":
        """Open (creating if need be) the database at `path`; StoreError if it cannot be used."""
        conn = None
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
                if tables:
                    raise StoreError(f"{path}: a SQLite database of something else (it has tables but no config-service schema)")
            elif version != SCHEMA_VERSION:
                raise StoreError(f"{path}: config-service schema version {version}, this program knows {SCHEMA_VERSION}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            raise StoreError(f"{path}: {_one_line(e)}") from None
        except StoreError:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    def ping(self) -> None:
        self._conn.execute("SELECT 1").fetchone()

    # --- supernodes ---------------------------------------------------------------------

    def heartbeat(self, sn: dict, now: float) -> int:
        """Insert or refresh the supernode `sn` ({"id", "addr", "idc", "location", "tasks"});
        returns the settings version, so a heartbeat also tells a node when to re-read them."""
        with self._transaction():
            self._conn.execute(
                "INSERT INTO supernodes (id, addr, idc, location, tasks, last_seen) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, idc = excluded.idc,"
                " location = excluded.location, tasks = excluded.tasks, last_seen = excluded.last_seen",
                (sn["id"], sn["addr"], sn["idc"], sn["location"], sn.get("tasks"), now),
            )
            self._conn.execute("DELETE FROM supernodes WHERE last_seen < ?", (now - FORGET_AFTER_S,))
            return self._read_version()

    def healthy(self, now: float, ttl: float) -> list[dict]:
        """Every supernode whose last heartbeat is younger than `ttl`, with `last_seen_s_ago`."""
        rows = self._conn.execute(
            "SELECT id, addr, idc, location, tasks, last_seen FROM supernodes WHERE last_seen > ?",
            (now - ttl,),
        ).fetchall()
        return [
            {"id": i, "addr": a, "idc": d, "location": loc, "tasks": t,
             "last_seen_s_ago": round(max(0.0, now - seen), 3)}
            for i, a, d, loc, t, seen in rows
        ]

    # --- settings ----------------------------------------------------------------------

    def settings(self) -> tuple[int, dict]:
        """(version, {key: normal form})."""
        with self._transaction(immediate=False):
            return self._read_settings()

    def update_settings(self, changes: dict) -> tuple[int, dict, bool]:
        """Apply validated `changes` (None deletes); bump the version if anything changed.
        Returns (version, settings, changed)."""
        with self._transaction():
            version, before = self._read_settings()
            after = dict(before)
            for key, value in changes.items():
                if value is None:
                    after.pop(key, None)
                else:
                    after[key] = value
            if after == before:
                return version, before, False
            for key, value in changes.items():
                if value is None:
                    self._conn.execute("DELETE FROM settings WHERE key = ?", (key,))
                else:
                    self._conn.execute(
                        "INSERT INTO settings (key, value) VALUES (?, ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (key, json.dumps(value)),
                    )
            version += 1
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'settings_version'", (version,))
            return version, after, True

    def _read_version(self) -> int:
        return int(self._conn.execute("SELECT value FROM meta WHERE key = 'settings_version'").fetchone()[0])

    def _read_settings(self) -> tuple[int, dict]:
        rows = self._conn.execute("SELECT key, value FROM settings ORDER BY key").fetchall()
        return self._read_version(), {key: json.loads(value) for key, value in rows}

    def _transaction(self, immediate: bool = True) -> "_Transaction":
        return _Transaction(self._conn, immediate)


class _Transaction:
    """BEGIN ... COMMIT, or ROLLBACK if the block raised; sqlite3 errors become StoreError."""

    def __init__(self, conn: sqlite3.Connection, immediate: bool):
        self._conn, self._immediate = conn, immediate

    def __enter__(self) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE" if self._immediate else "BEGIN")
        except sqlite3.Error as e:
            raise StoreError(_one_line(e)) from None

    def __exit__(self, kind, error, tb) -> bool:
        try:
            self._conn.execute("COMMIT" if kind is None else "ROLLBACK")
        except sqlite3.Error as e:
            if kind is None:
                raise StoreError(_one_line(e)) from None
        if isinstance(error, sqlite3.Error):
            raise StoreError(_one_line(error)) from None
        return False
