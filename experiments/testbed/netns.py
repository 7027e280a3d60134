"""Kernel objects of one testbed run: network namespaces, veth pairs, bridges, `tc` shaping.

Owns every namespace, link and bridge a run creates, and their removal.

Rules kept here:
- Every name starts with the run's tag, `dft<pid>` (the orchestrator's pid): a leftover of a
  crashed run is recognisable by its name alone, and a run never touches another live run's
  objects (`sweep_leftovers` removes only tags whose pid is gone).
- An object is recorded before it is created, so `teardown` removes whatever exists even if
  creation failed halfway. Teardown never raises: it tries everything and keeps going.
- Hosts live in namespaces only; the root namespace gets bridges and the outer ends of veths,
  never an address. Runs can therefore reuse the same subnets side by side.
- Shaping is `tbf` on both ends of a host's veth: the egress inside the namespace is the host's
  upload, the egress of the outer end (towards the host) its download (ANCHORS; netem is not
  available). A rate of None leaves that direction unshaped. Rates are payload rates, as
  the simulator's flows carry payload: tbf counts frames, so it is set at rate x
  `WIRE_PER_PAYLOAD` (an MTU-sized TCP segment puts 1,514 bytes on the wire for 1,448 of
  payload; one shaped flow was measured at 0.956 of the tc rate).
- `enter(name)` moves the *calling thread* into a namespace (setns is per thread), so the
  orchestrator can open client sockets "on" a host without a process per host.
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import time

TAG_PREFIX = "dft"
_TAG = re.compile(rf"^{TAG_PREFIX}(\d+)(?=[a-z-])")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


class NetnsError(RuntimeError):
    """A kernel command failed: one line with the command and its stderr."""


def run_tag(pid: int | None = None) -> str:
    return f"{TAG_PREFIX}{os.getpid() if pid is None else pid}"


def sh(*cmd: str, check: bool = True) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {r.stderr.strip() or f'exit {r.returncode}'}")
    return r.stdout


def available() -> str | None:
    """None if this machine can build a testbed, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the testbed needs root (network namespaces, veths, tc)"
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"'{tool}' is not installed (iproute2)"
    probe = f"{run_tag()}-probe"
    try:
        sh("ip", "netns", "add", probe)
    except NetnsError as e:
        return f"cannot create network namespaces: {e}"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


WIRE_PER_PAYLOAD = 1514 / 1448


def _tbf(rate_bps: float) -> list[str]:
    """tbf arguments for a payload rate of `rate_bps` bytes/s. The bucket holds 4 ms of traffic
    (at least 32 KiB, so a TSO burst fits); the queue holds 50 ms, about what a switch port
    buffers."""
    wire = rate_bps * WIRE_PER_PAYLOAD
    burst = max(32 * 1024, int(wire * 0.004))
    return ["tbf", "rate", f"{int(wire * 8)}bit", "burst", str(burst), "latency", "50ms"]


def enter(name: str) -> None:
    """Move the calling thread into namespace `name` (for sockets it opens from now on)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class Network:
    """The namespaces, bridges and links of one run, named under `tag`."""

    def __init__(self, tag: str):
        self.tag = tag
        self.namespaces: list[str] = []
        self.links: list[str] = []       # outer veth ends and bridges, in the root namespace

    # ---- building ----------------------------------------------------------------------------
    def bridge(self, suffix: str) -> str:
        name = f"{self.tag}{suffix}"
        self.links.append(name)
        sh("ip", "link", "add", name, "type", "bridge")
        # no STP, no forwarding delay: a port forwards the moment it is up
        sh("ip", "link", "set", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        sh("ip", "link", "set", name, "up")
        return name

    def namespace(self, suffix: str) -> str:
        name = f"{self.tag}-{suffix}"
        self.namespaces.append(name)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def attach(self, ns: str, outer: str, bridge: str, addr: str, *, inner: str = "eth0",
               upload_bps: float | None, download_bps: float | None) -> None:
        """A veth from namespace `ns` (end `inner`, address `addr` with prefix) into `bridge`,
        shaped at `upload_bps` out of the namespace and `download_bps` into it."""
        outer = f"{self.tag}{outer}"
        self.links.append(outer)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        sh("ip", "link", "set", outer, "master", bridge, "up")
        sh("ip", "-n", ns, "addr", "add", addr, "dev", inner)
        sh("ip", "-n", ns, "link", "set", inner, "up")
        if upload_bps:
            sh("tc", "-n", ns, "qdisc", "add", "dev", inner, "root", *_tbf(upload_bps))
        if download_bps:
            sh("tc", "qdisc", "add", "dev", outer, "root", *_tbf(download_bps))

    def route(self, ns: str, via: str) -> None:
        sh("ip", "-n", ns, "route", "add", "default", "via", via)

    def forwarding(self, ns: str) -> None:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    @staticmethod
    def tx_bytes(ns: str, dev: str) -> int:
        """Bytes sent by `dev` inside `ns` (wire bytes: headers included)."""
        out = sh("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/tx_bytes")
        return int(out.strip())

    # ---- removal -----------------------------------------------------------------------------
    def teardown(self) -> list[str]:
        """Remove everything this run made; returns the errors (it never raises)."""
        return _remove(self.namespaces, self.links)


def _pids_in(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def _remove(namespaces: list[str], links: list[str]) -> list[str]:
    errors: list[str] = []
    # processes first: a namespace with a process in it outlives `ip netns del`
    for ns in namespaces:
        for pid in _pids_in(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while any(_pids_in(ns) for ns in namespaces) and time.monotonic() < deadline:
        time.sleep(0.05)
    existing = set(_namespaces())
    for ns in namespaces:
        if ns in existing:
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if r.returncode:
                errors.append(f"netns {ns}: {r.stderr.strip()}")
    present = set(_root_links())
    for link in links:
        if link in present:
            r = subprocess.run(["ip", "link", "del", link], capture_output=True, text=True)
            # an outer veth end disappears by itself when its namespace goes: not an error
            if r.returncode and link in set(_root_links()):
                errors.append(f"link {link}: {r.stderr.strip()}")
    return errors


def _namespaces() -> list[str]:
    # lines look like "name" or "name (id: 3)"
    return [line.split()[0] for line in sh("ip", "netns", "list", check=False).splitlines() if line.strip()]


def _root_links() -> list[str]:
    out = sh("ip", "-o", "link", "show", check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers() -> tuple[list[str], list[str]]:
    """Namespaces and root links of runs whose orchestrator is gone."""
    def dead(name: str) -> bool:
        m = _TAG.match(name)
        return bool(m) and not _alive(int(m.group(1)))
    namespaces = [n for n in _namespaces() if dead(n)]
    links = [n for n in _root_links() if dead(n)]
    return namespaces, links


def sweep_leftovers() -> list[str]:
    """Remove what crashed runs left behind; returns the names removed."""
    namespaces, links = leftovers()
    if namespaces or links:
        _remove(namespaces, links)
    return namespaces + links


def tag_alive(name: str) -> bool:
    """Whether the run that owns `name` (a file or object named under a tag) is still running."""
    m = _TAG.match(name)
    return bool(m) and _alive(int(m.group(1)))
