"""`dfly preheat`: warm a file or an image in the supernodes (`dfnet.preheat`).

    dfly preheat URL | docker://REGISTRY/REPO:TAG [--supernode ADDR]... [--config-service URL]
                 [--platform linux/amd64] [--creds USER:PASS] [--plain-http] [--timeout SECONDS]

Progress lines go to stderr; one JSON summary of what was warmed (digests, bytes) to stdout.
Bad flags or references: one line, exit 2; failures: one line and a wget-style code (4
network, 6 auth, 8 an error from the registry or origin, 1 otherwise).
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from experiments.commands.errors import UsageError

_PLATFORM = re.compile(r"[a-z0-9_]+/[a-z0-9_]+(/[a-z0-9_]+)?")


def run(args: argparse.Namespace) -> int:
    if args.supernode and args.config_service:
        raise UsageError("give --supernode or --config-service, not both")
    if not _PLATFORM.fullmatch(args.platform):
        raise UsageError(f"--platform {args.platform!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")
    creds = None
    if args.creds is not None:
        user, sep, password = args.creds.partition(":")
        if not sep or not user:
            raise UsageError("--creds: expected USER:PASS")
        creds = (user, password)
    from dfnet.serve import parse_addr
    for s in args.supernode:
        try:
            parse_addr(s, "--supernode")
        except ValueError as e:
            raise UsageError(str(e)) from None
    import asyncio

    from dfnet.errors import USAGE
    from dfnet.preheat import PreheatError, preheat

    def progress(line: str) -> None:
        if not args.quiet:
            print(f"preheat: {line}", file=sys.stderr, flush=True)

    try:
        summary = asyncio.run(preheat(args.target, supernodes=args.supernode, config_service=args.config_service,
                                      platform=args.platform, creds=creds, plain_http=args.plain_http,
                                      timeout=args.timeout, progress=progress))
    except PreheatError as e:
        if e.code == USAGE:
            raise UsageError(str(e)) from None
        print(f"dfly preheat: error: {e}", file=sys.stderr)
        return e.code
    print(json.dumps(summary))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("preheat", help="warm a file or an image's layers in the supernodes")
    p.add_argument("target", metavar="URL|docker://REGISTRY/REPO:TAG")
    p.add_argument("--supernode", action="append", default=[], metavar="ADDR", help="supernode to warm (repeatable)")
    p.add_argument("--config-service", default=None, metavar="URL", help="warm every healthy supernode it lists")
    p.add_argument("--platform", default="linux/amd64", help="the image of an index to warm (default linux/amd64)")
    p.add_argument("--creds", default=None, metavar="USER:PASS", help="registry credentials")
    p.add_argument("--plain-http", action="store_true",
                   help="the registry speaks plain HTTP (loopback registries always do)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="per blob and supernode (default 3600)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)
