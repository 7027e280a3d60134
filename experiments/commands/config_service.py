"""`dfly config-service`: run the config service (DESIGN, "The command surface").

Parses and checks the flags, opens the database, then hands over to
`dfnet.configservice.server.serve`. A bad flag, an address that cannot be bound or a
database that cannot be used is one line on stderr and exit code 2 (`UsageError`).
"""
from __future__ import annotations

import argparse
import math
import os

from experiments.commands.errors import UsageError

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_DB = "sqlite:///dfly-config.db"


def db_path(url: str) -> str:
    """The SQLite file of a --db value: 'sqlite:///PATH' (PATH relative, or absolute with a
    fourth slash as in 'sqlite:////var/lib/x.db') or a plain path. Other URLs are refused."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
    elif "://" in url or url.startswith("sqlite:"):
        raise UsageError(f"--db {url!r}: only SQLite is supported: use sqlite:///PATH or a plain path")
    else:
        path = url
    if not path.strip() or path.endswith(os.sep):
        raise UsageError(f"--db {url!r}: no database file named")
    return path


def _setup_logging() -> None:
    """JSON lines on stderr: the service's own records from INFO, any library's from WARNING."""
    import logging

    from dfnet.logs import JsonFormatter, setup

    setup("info")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from dfnet.configservice.addresses import split_hostport

    try:
        host, port = split_hostport(args.listen, allow_port_zero=True)
    except ValueError as e:
        raise UsageError(f"--listen: {e}") from None
    try:
        ttl = float(args.supernode_ttl)
    except ValueError:
        raise UsageError(f"--supernode-ttl: {args.supernode_ttl!r} is not a number of seconds") from None
    if not (math.isfinite(ttl) and 0.1 <= ttl <= 3600):
        raise UsageError(f"--supernode-ttl: {args.supernode_ttl!r} must be from 0.1 to 3600 seconds")
    path = db_path(args.db)

    import asyncio

    from dfnet.configservice.server import serve
    from dfnet.configservice.store import Store, StoreError

    try:
        store = Store.open(path)
    except StoreError as e:
        raise UsageError(f"--db {args.db!r}: cannot use the database: {e}") from None
    _setup_logging()
    try:
        asyncio.run(serve(host, port, store, ttl))
    except OSError as e:  # the address cannot be bound: in use, not local, not resolvable
        raise UsageError(f"--listen {args.listen!r}: cannot listen: {' '.join(str(e.strerror or e).split())}") from None
    finally:
        store.close()
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("config-service", help="run the config service: the supernode registry and cluster settings")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR",
                   help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN}; port 0 picks a free port)")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL",
                   help=f"sqlite:///PATH or a plain path (default {DEFAULT_DB}, in the current directory)")
    p.add_argument("--supernode-ttl", default="6", metavar="SECONDS",
                   help="a supernode is healthy while its last heartbeat is younger than this (default 6)")
    p.set_defaults(func=run)
