"""From a scenario to a testbed plan: which hosts exist, their NICs, addresses, arrivals, exits.

Owns the mapping of a `dfsim.scenario.Scenario` onto one machine, and the physics bounds of the
hosts it drew.

Rules kept here:
- The draws are the simulator's: the same generator (`default_rng(seed)`) consumed in the same
  order as `dfsim.sim.Simulation._build_nodes` (per group: NICs, arrivals if spread, churn
  flags if churn, exit fractions), so `--compare` runs the very hosts the simulator ran. If the
  simulator changes its order, this must follow (tests compare the two bounds).
- A scenario with more than `MAX_HOSTS` hosts is refused, not silently shrunk: the user scales
  it with --set, so the scenario that ran is the one written down.
- What the live runtime cannot express is said once on stderr (`Plan.notes`), never ignored
  silently: background traffic, per-slot scheduler knobs.
- Addresses: IDC k is 10.(k+1).0.0/16; the origin is .0.2, supernodes .0.10+, hosts from
  .1.1, the inter-IDC router .255.254.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dfsim.physics import IdcSide, client_server_s, p2p_lower_bound_s
from dfsim.scenario import Scenario

# One machine with 2 cores runs about this many daemons (each an asyncio process of ~60 MiB)
# before process start-up and Python's per-byte cost dominate; see the README's Testbed section.
MAX_HOSTS = 60


class PlanError(ValueError):
    """A scenario the testbed cannot build: one line."""


@dataclass(frozen=True)
class Endpoint:
    name: str                 # namespace suffix and veth suffix ("h3", "s0", "o")
    idc: str
    ip: str
    upload_bps: float | None  # None: unshaped
    download_bps: float | None
    location: str = ""


@dataclass(frozen=True)
class Host(Endpoint):
    index: int = 0
    arrival_s: float = 0.0
    leave_at_s: float | None = None   # killed (SIGKILL) at this time after the start: churn


@dataclass(frozen=True)
class Supernode(Endpoint):
    fail_at_s: float | None = None


@dataclass
class Plan:
    scenario: Scenario
    idcs: list[str]
    origin: Endpoint
    supernodes: list[Supernode]
    hosts: list[Host]
    links: dict[tuple[str, str], float]          # directed inter-IDC capacity, bytes/s
    lower_bound_s: float
    client_server_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return self.scenario.run.mode

    def subnet_of(self, idc: str) -> int:
        return self.idcs.index(idc) + 1

    def router_ip(self, idc: str) -> str:
        return f"10.{self.subnet_of(idc)}.255.254"


def make_plan(sc: Scenario, seed: int | None = None) -> Plan:
    if sc.n_hosts > MAX_HOSTS:
        sets = " ".join(f"--set hosts.{i}.count=N" for i in range(len(sc.hosts)))
        raise PlanError(f"scenario {sc.name} has {sc.n_hosts} hosts; the testbed runs at most {MAX_HOSTS} "
                        f"on one machine: scale it with {sets}")
    if sc.n_hosts == 0:
        raise PlanError(f"scenario {sc.name} has no hosts")
    seed = sc.run.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    idcs = [i.name for i in sc.idcs] or [""]
    default_idc = sc.source.idc or idcs[0]
    notes: list[str] = []

    def ip(idc: str, n: int) -> str:
        return f"10.{idcs.index(idc) + 1}.{n // 250}.{n % 250 + 1}"

    origin = Endpoint("o", default_idc, ip(default_idc, 1), sc.source.upload_bps, None)
    spread = sc.run.arrival.spread_s if sc.run.arrival.kind == "uniform" else 0.0
    hosts: list[Host] = []
    for group in sc.hosts:        # the simulator's draw order, exactly (module docstring)
        down, up = group.draw_nics(rng, group.count)
        arrivals = rng.uniform(0.0, spread, group.count) if spread > 0 else np.zeros(group.count)
        leaves = (rng.random(group.count) < group.churn.leave_fraction) if group.churn else \
            np.zeros(group.count, dtype=bool)
        leave_frac = rng.uniform(0.1, 0.9, group.count)
        idc = group.idc or default_idc
        if group.background:
            notes.append(f"background traffic of host group {sc.hosts.index(group)} is not generated live")
        for i in range(group.count):
            n = len(hosts)
            hosts.append(Host(f"h{n}", idc, ip(idc, 250 + n), float(up[i]), float(down[i]), group.location,
                              index=n, arrival_s=float(arrivals[i]),
                              leave_at_s=float(leave_frac[i]) if leaves[i] else None))
    supernodes: list[Supernode] = []
    if sc.run.mode == "p2p":
        for group in sc.supernodes:
            for _ in range(group.count):
                j = len(supernodes)
                idc = group.idc or default_idc
                supernodes.append(Supernode(f"s{j}", idc, ip(idc, 9 + j), group.upload_bps, group.download_bps,
                                            group.location, fail_at_s=group.fail_at_s))
        if not supernodes:
            raise PlanError(f"scenario {sc.name} runs p2p but has no supernodes")
    links: dict[tuple[str, str], float] = {}
    for link in sc.links:
        a, b = link.between
        links[(a, b)] = links[(b, a)] = link.capacity_bps
    if len(idcs) > 2 and links:
        notes.append("with more than two IDCs each IDC's router leg is shaped at its largest link: "
                     "pairwise capacities are approximate")
    if sc.scheduler.upload_slots is not None or sc.scheduler.parent_sample != 15:
        notes.append("scheduler.upload_slots and parent_sample are simulator knobs; live nodes use their defaults")
    if sc.scheduler.end_game:
        notes.append("scheduler.end_game is simulator-only (live daemons fetch whole pieces): live nodes run without it")

    # the bounds, computed as the simulator computes them from the same draws
    size = sc.file.size
    downs = np.array([h.download_bps for h in hosts])
    ups = np.array([h.upload_bps for h in hosts])
    staying = np.array([h.leave_at_s is None for h in hosts], dtype=bool)
    cs = client_server_s(size, len(hosts), sc.source.upload_bps, downs)
    sides: dict[str, list] = {}
    for node, is_origin, finishing in ([(origin, True, False)] + [(s, False, False) for s in supernodes]
                                       + [(h, False, h.leave_at_s is None) for h in hosts]):
        side = sides.setdefault(node.idc, [0, 0.0, False])
        side[1] += node.upload_bps or 0.0
        side[2] = side[2] or is_origin
        side[0] += int(finishing)
    lb = p2p_lower_bound_s(size, sc.source.upload_bps, sum(s.upload_bps for s in supernodes), downs[staying],
                           ups, spread, {k: IdcSide(*v) for k, v in sides.items()}, links)
    # an exit happens inside the download, as in the simulator: a fraction of the lower bound
    hosts = [h if h.leave_at_s is None else
             Host(**{**h.__dict__, "leave_at_s": h.arrival_s + h.leave_at_s * lb}) for h in hosts]
    return Plan(sc, idcs, origin, supernodes, hosts, links, lb, cs, notes)
