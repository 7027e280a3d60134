"""`dfly supernode` and `dfly daemon`: the live runtime's node processes (dfnet).

Each parses its flags into one-line usage errors, starts its aiohttp apps, prints one JSON line
`{"listening": ...}` on stdout, logs JSON lines to stderr, and stops on SIGTERM / SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from experiments.commands.errors import UsageError


def _rate(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    from dfnet.core.units import parse_limit
    try:
        return parse_limit(text)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


def _addr(text: str, flag: str) -> tuple[str, int]:
    from dfnet.serve import parse_addr
    try:
        return parse_addr(text, flag)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _data_dir(text: str, flag: str = "--data") -> Path:
    path = Path(text).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{flag} {text}: {e.strerror or e}") from None
    return path


def _policy(uri: str, kind: str, **params):
    """The node's policy handle; a policy that cannot load stops the node from starting."""
    from models.deploy import PolicyHandle
    from models.loader import PolicyError
    try:
        return PolicyHandle(uri, kind, seed=0, **params)
    except PolicyError as e:
        raise UsageError(str(e)) from None


def _poll(value: float, flag: str) -> float:
    if not value > 0:
        raise UsageError(f"{flag} must be > 0 seconds")
    return value


# ---- supernode ---------------------------------------------------------------------------
def supernode(args: argparse.Namespace) -> int:
    host, port = _addr(args.listen, "--listen")
    data = _data_dir(args.data)
    _poll(args.policy_poll_s, "--policy-poll-s")
    if not 0 < args.stream_idle_s < float("inf"):          # also refuses nan
        raise UsageError("--stream-idle-s must be a finite number of seconds > 0")
    factory = _policy(args.policy, "piece-selector")
    from dfnet.core.units import parse_size
    piece = None
    if args.piece_size:
        try:
            piece = parse_size(args.piece_size)
            if not 0 < piece <= 64 << 20:
                raise ValueError("must be between 1 B and 64 MiB")
        except ValueError as e:
            raise UsageError(f"--piece-size: {e}") from None
    cache = []
    for flag, text in (("--cache-high", args.cache_high), ("--cache-low", args.cache_low)):
        try:
            cache.append(parse_size(text))
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from None
    if cache[1] > cache[0]:
        raise UsageError("--cache-low must not exceed --cache-high")
    upload = _rate(args.upload_limit, "--upload-limit")
    if not 1 <= args.concurrent_pieces <= 256:
        raise UsageError("--concurrent-pieces must be between 1 and 256")
    from dfnet import logs
    logs.setup(args.log_level)
    return asyncio.run(_supernode(args, host, port, data, factory, piece, cache, upload))


async def _supernode(args, host, port, data, factory, piece, cache, upload) -> int:
    from dfnet import serve
    from dfnet.core.scheduler import SchedulerConfig
    from dfnet.supernode.service import Supernode
    from dfnet.throttle import set_rate

    node = Supernode(data, factory, advertise="", piece_size=piece, cache_high=cache[0], cache_low=cache[1],
                     revalidate_s=args.revalidate_s, policy_poll_s=args.policy_poll_s,
                     min_upload_bps=_rate(args.min_upload_rate, "--min-upload-rate"),
                     offer_stream=not args.no_sync_stream, stream_idle_s=args.stream_idle_s,
                     config=SchedulerConfig(concurrent_pieces=args.concurrent_pieces))
    if upload:
        set_rate(node.upload_bucket, upload)
    runner, addr = await serve.start(node.app(), host, port)
    node.advertise = args.advertise or addr
    node.node_id = args.id or f"supernode-{node.advertise}"
    background = []
    if args.config_service:
        import aiohttp

        from dfnet.configservice.client import SupernodeHeartbeat, SupernodeInfo, poll_settings
        session = aiohttp.ClientSession()
        info = SupernodeInfo(node.node_id, node.advertise, args.idc, args.location)
        background = [asyncio.create_task(SupernodeHeartbeat(session, args.config_service, info,
                                                             load=lambda: len(node.tasks)).run()),
                      asyncio.create_task(poll_settings(session, args.config_service, node.apply_settings))]
    import logging
    logging.getLogger("dfnet.supernode").info("piece selector", extra={"fields": {
        "policy": factory.uri, "version": factory.version}})
    serve.announce(listening=addr, id=node.node_id)
    try:
        await serve.wait_for_signal()
    finally:
        for t in background:
            t.cancel()
        if background:
            await asyncio.gather(*background, return_exceptions=True)
            await session.close()
        await runner.cleanup()
    return 0


# ---- daemon ------------------------------------------------------------------------------
def daemon(args: argparse.Namespace) -> int:
    host, port = _addr(args.listen, "--listen")
    up_host, up_port = _addr(args.upload_listen or f"{host}:0", "--upload-listen")
    for s in args.supernode:
        _addr(s, "--supernode")
    data = _data_dir(args.data)
    down = _rate(args.download_limit, "--download-limit")
    up = _rate(args.upload_limit, "--upload-limit")
    _poll(args.policy_poll_s, "--policy-poll-s")
    rates = _policy(args.rate_policy, "rate-controller", download_bps=down, upload_bps=up)
    if args.registry_mirror or args.proxy_listen or args.proxy_rule:
        _proxy_flags(args)
    from dfnet import logs
    logs.setup(args.log_level)
    if not args.supernode and not args.config_service:
        import logging
        logging.getLogger("dfnet.daemon").warning(
            "no --supernode or --config-service: downloads can only go back to the source")
    return asyncio.run(_daemon(args, host, port, up_host, up_port, data, rates))


async def _daemon(args, host, port, up_host, up_port, data, rates) -> int:
    from dfnet import serve
    from dfnet.daemon.service import Daemon

    node = Daemon(data, supernodes=args.supernode, config_service=args.config_service, idc=args.idc,
                  location=args.location, rate_controller=rates, nic=args.nic, idle_exit_s=args.idle_exit,
                  policy_poll_s=args.policy_poll_s, budgets=(_rate(args.download_limit, "--download-limit"),
                                                             _rate(args.upload_limit, "--upload-limit")))
    if args.disk_limit:
        from dfnet.throttle import set_rate
        set_rate(node.disk_bucket, _rate(args.disk_limit, "--disk-limit"))
    up_runner, up_addr = await serve.start(node.upload_app(), up_host, up_port)
    if args.advertise:
        up_addr = f"{args.advertise}:{up_addr.rsplit(':', 1)[1]}"
    node.upload_addr = up_addr
    try:
        runner, addr = await serve.start(node.local_app(), host, port)
    except OSError:
        await up_runner.cleanup()
        raise
    proxy_runner, proxy = None, {}
    if args.registry_mirror or args.proxy_listen or args.proxy_rule:
        try:
            proxy_runner, proxy["proxy"] = await serve.start(node.proxy_app(args.registry_mirror, args.proxy_rule),
                                                             *_addr(args.proxy_listen or DEFAULT_PROXY, "--proxy-listen"))
        except OSError:
            await runner.cleanup()
            await up_runner.cleanup()
            raise
    serve.announce(listening=addr, upload=up_addr, peer=node.peer_id, **proxy)
    try:
        stop = asyncio.create_task(serve.wait_for_signal(node.stop))
        await stop
    finally:
        if proxy_runner is not None:
            await proxy_runner.cleanup()
        await runner.cleanup()
        await up_runner.cleanup()
    return 0


DEFAULT_PROXY = "127.0.0.1:65002"


def _proxy_flags(args: argparse.Namespace) -> None:
    """--registry-mirror, --proxy-listen and --proxy-rule, checked before anything starts."""
    import re

    from dfnet.daemon.mirror import check_upstream
    if args.registry_mirror:
        try:
            args.registry_mirror = check_upstream(args.registry_mirror)
        except ValueError as e:
            raise UsageError(f"--registry-mirror: {e}") from None
    _addr(args.proxy_listen or DEFAULT_PROXY, "--proxy-listen")
    for rule in args.proxy_rule or ():
        try:
            re.compile(rule)
        except re.error as e:
            raise UsageError(f"--proxy-rule {rule!r}: {e}") from None


def add_parser(sub) -> None:
    sn = sub.add_parser("supernode", help="run a supernode: scheduler and seed cache")
    sn.add_argument("--listen", default="127.0.0.1:8002", metavar="ADDR")
    sn.add_argument("--advertise", default=None, metavar="ADDR", help="address peers use (default: the bound one)")
    sn.add_argument("--data", default=os.path.expanduser("~/.dfly/supernode"), metavar="DIR")
    sn.add_argument("--policy", default="heuristic:d2", metavar="URI",
                    help="piece selector (default heuristic:d2); the config service's 'policy' setting overrides it")
    sn.add_argument("--policy-poll-s", type=float, default=30.0, metavar="SECONDS",
                    help="how often a models:/NAME@ALIAS policy is checked for a moved alias (default 30)")
    sn.add_argument("--config-service", default=None, metavar="URL")
    sn.add_argument("--id", default=None, help="node id (default supernode-ADDR)")
    sn.add_argument("--idc", default="")
    sn.add_argument("--location", default="")
    sn.add_argument("--piece-size", default=None, metavar="SIZE", help="override Dragonfly 1's piece-size rule")
    sn.add_argument("--upload-limit", default=None, metavar="RATE")
    sn.add_argument("--min-upload-rate", default=None, metavar="RATE",
                    help="upload slot width: a rate-limited peer gets ceil(limit / this) slots (default 4MiB/s)")
    sn.add_argument("--concurrent-pieces", type=int, default=16, metavar="N",
                    help="pieces in flight per peer (default 16: one sync assigns a batch)")
    sn.add_argument("--cache-high", default="50GiB", metavar="SIZE", help="GC starts above this (default 50GiB)")
    sn.add_argument("--cache-low", default="40GiB", metavar="SIZE", help="GC goes down to this (default 40GiB)")
    sn.add_argument("--revalidate-s", type=float, default=30.0, metavar="SECONDS",
                    help="a cached task is revalidated with the origin when older than this (default 30)")
    sn.add_argument("--no-sync-stream", action="store_true",
                    help="do not offer daemons the sync stream: they sync with one HTTP POST each, as with "
                         "older supernodes (for comparisons and tests)")
    sn.add_argument("--stream-idle-s", type=float, default=600.0, metavar="SECONDS",
                    help="a sync stream silent this long (nothing held) is closed; its daemon reopens it "
                         "at its next sync (default 600)")
    sn.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sn.set_defaults(func=supernode)

    d = sub.add_parser("daemon", help="run a host's daemon: P2P download, upload, local API")
    d.add_argument("--listen", default="127.0.0.1:65001", metavar="ADDR", help="local API for dfget")
    d.add_argument("--upload-listen", default=None, metavar="ADDR", help="upload server for peers (default HOST:0)")
    d.add_argument("--advertise", default=None, metavar="HOST", help="host peers reach the upload server at")
    d.add_argument("--supernode", action="append", default=[], metavar="ADDR")
    d.add_argument("--config-service", default=None, metavar="URL")
    d.add_argument("--data", default=os.path.expanduser("~/.dfly/daemon"), metavar="DIR")
    d.add_argument("--idc", default="")
    d.add_argument("--location", default="")
    d.add_argument("--download-limit", default=None, metavar="RATE")
    d.add_argument("--upload-limit", default=None, metavar="RATE")
    d.add_argument("--disk-limit", default=None, metavar="RATE", help="disk write limit")
    d.add_argument("--rate-policy", default="heuristic:static", metavar="URI")
    d.add_argument("--policy-poll-s", type=float, default=30.0, metavar="SECONDS",
                   help="how often a models:/NAME@ALIAS rate policy is checked for a moved alias (default 30)")
    d.add_argument("--registry-mirror", default=None, metavar="URL",
                   help="default upstream registry of the mirror/proxy listener (http(s)://HOST[:PORT])")
    d.add_argument("--proxy-listen", default=None, metavar="ADDR",
                   help=f"mirror/proxy listener (default {DEFAULT_PROXY} when --registry-mirror or "
                        "--proxy-rule is given)")
    d.add_argument("--proxy-rule", action="append", default=None, metavar="REGEX",
                   help="URLs whose GETs go P2P (repeatable; default: registry blobs by sha256 digest)")
    d.add_argument("--nic", default=None, help="interface whose counters the rate policy sees")
    d.add_argument("--idle-exit", type=float, default=0.0, metavar="SECONDS",
                   help="exit after this long with no transfer (0: never)")
    d.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    d.set_defaults(func=daemon)
