"""Scenario files: load a TOML scenario, apply `--set` overrides, validate, and freeze it.

Owns: the scenario schema (which keys exist, where, and what each may hold), the override
syntax of `dfly sim run --set KEY=VALUE`, and the frozen `Scenario` the simulator runs.

Rules kept here:
- The schema is data: `SECTIONS` lists, for every table, its keys, how each is read and its
  default. Validation, unknown-key errors and override navigation all walk that one table.
- Units are converted once, here: sizes are `int` bytes, rates are `float` bytes per second
  (a field named `*_bps` is Bytes Per Second, never bits), times are `float` seconds.
- Nothing is guessed. An unknown key, a wrong type, a missing unit, an undeclared IDC is
  refused with a `ScenarioError`: one line, starting with the key path ("hosts.0.download: ...").
- Defaults live in the schema, so a scenario file only says what its experiment is about.
- IDCs: when `[[idcs]]` is present, every IDC named elsewhere must be declared in it; when it is
  absent, every IDC named anywhere is declared implicitly, in order of first use.
- Overrides (`hosts.0.count=200`) edit the raw data before validation, so an overridden value
  is checked exactly like one written in the file. They may add a key the file leaves out only
  where the schema knows that key (a missing known table such as [scheduler] is created; an
  array item never is: an index past the end is an error).
"""
from __future__ import annotations

import copy
import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dfnet.core.scheduler import fill_concurrency

from dfsim.units import format_bytes, format_rate, parse_rate, parse_size

__all__ = [
    "ScenarioError", "RateMix", "Background", "Churn", "FileSpec", "SourceSpec", "Arrival",
    "RunSpec", "IdcSpec", "LinkSpec", "SupernodeGroup", "HostGroup", "SchedulerSpec",
    "Scenario", "SECTIONS", "load_scenario", "parse_scenario", "apply_overrides",
]

MIN_PIECE_SIZE = 16 * 1024


class ScenarioError(ValueError):
    """A scenario refused: `path` is the dotted key path ("" for the whole file)."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{path}: {self.reason}" if path else self.reason)


# ---------------------------------------------------------------------------------------------
# The frozen scenario


@dataclass(frozen=True, slots=True)
class RateMix:
    """A NIC rate drawn per host: `values[i]` bytes/s with probability `weights[i]`.

    A fixed rate is one value with weight 1.0. Weights are normalised to sum to 1.
    """

    values: tuple[float, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values or len(self.values) != len(self.weights):
            raise ValueError("a mix needs one weight per rate, and at least one rate")
        if any(w <= 0 or not math.isfinite(w) for w in self.weights):
            raise ValueError("mix weights must be positive")
        total = float(sum(self.weights))
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        object.__setattr__(self, "weights", tuple(float(w) / total for w in self.weights))

    @classmethod
    def of(cls, rate: float) -> RateMix:
        return cls((rate,), (1.0,))

    @property
    def is_fixed(self) -> bool:
        return len(self.values) == 1

    @property
    def mean(self) -> float:
        return float(sum(v * w for v, w in zip(self.values, self.weights)))

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def index(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Category per host; draws nothing from `rng` for a fixed rate."""
        if self.is_fixed:
            return np.zeros(n, dtype=np.intp)
        return rng.choice(len(self.values), size=n, p=np.asarray(self.weights))

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.asarray(self.values, dtype=float)[self.index(rng, n)]


@dataclass(frozen=True, slots=True)
class Background:
    """Business traffic on a host's NIC: bursts at `peak_bps` for `on_s`, then a lower level
    for `off_s`, averaging `mean_bps` (bytes/s)."""

    mean_bps: float
    peak_bps: float
    on_s: float
    off_s: float

    def __post_init__(self) -> None:
        if not 0 <= self.mean_bps <= self.peak_bps:
            raise ValueError(f"needs 0 <= mean <= peak, not mean {format_rate(self.mean_bps)}"
                             f" and peak {format_rate(self.peak_bps)}")
        if not (self.on_s > 0 and self.off_s > 0):
            raise ValueError("on_s and off_s must be positive")

    @property
    def base_bps(self) -> float:
        """The level during "off" that keeps the average at `mean_bps` (0 if bursts alone
        already exceed it)."""
        period = self.on_s + self.off_s
        return max(0.0, (self.mean_bps * period - self.peak_bps * self.on_s) / self.off_s)


@dataclass(frozen=True, slots=True)
class Churn:
    leave_fraction: float  # of the group's hosts, which leave before finishing


@dataclass(frozen=True, slots=True)
class FileSpec:
    size: int                      # bytes
    piece_size: int | None = None  # bytes; None: the core's default rule


@dataclass(frozen=True, slots=True)
class SourceSpec:
    upload_bps: float
    idc: str | None = None


@dataclass(frozen=True, slots=True)
class Arrival:
    kind: str              # 'simultaneous' | 'uniform'
    spread_s: float = 0.0  # uniform: start times drawn uniformly in [0, spread_s)


@dataclass(frozen=True, slots=True)
class RunSpec:
    mode: str = "p2p"  # 'p2p' | 'source' (every host downloads from the origin)
    seed: int = 1
    arrival: Arrival = Arrival("simultaneous")
    max_sim_s: float | None = None


@dataclass(frozen=True, slots=True)
class IdcSpec:
    name: str


@dataclass(frozen=True, slots=True)
class LinkSpec:
    between: tuple[str, str]
    capacity_bps: float  # in each direction


@dataclass(frozen=True, slots=True)
class SupernodeGroup:
    count: int
    upload_bps: float
    download_bps: float
    idc: str | None = None
    location: str = ""
    fail_at_s: float | None = None


@dataclass(frozen=True, slots=True)
class HostGroup:
    count: int
    download: RateMix
    upload: RateMix
    idc: str | None = None
    location: str = ""
    background: Background | None = None
    churn: Churn | None = None

    @property
    def joint(self) -> bool:
        """Download and upload are mixes of the same rates: one NIC category per host."""
        return not self.download.is_fixed and set(self.download.values) == set(self.upload.values)

    def draw_nics(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Download and upload capacity (bytes/s) for `n` hosts of this group."""
        down = self.download.draw(rng, n)
        if self.joint:
            return down, down.copy()  # the same category, and categories are named by rate
        return down, self.upload.draw(rng, n)


@dataclass(frozen=True, slots=True)
class SchedulerSpec:
    concurrent_pieces: int = 4             # pieces a host downloads at once (Dragonfly 1: 4);
                                           # "auto", the default: `fill_concurrency` of the hosts
    upload_slots: int | None = None        # per normal peer; None: the core's default
    seed_upload_slots: int | None = None   # per supernode; None: the core's default
    parent_sample: int = 15                # peers sampled as parent candidates (Dragonfly 2: 15)
    min_upload_bps: float | None = None    # slot width; None: mean host download / concurrent_pieces
    link_slots: bool = False               # give each IDC link ceil(capacity / slot width) slots
    end_game: bool = False                 # freed slots send parts of running pieces (core rule 6)


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """What a piece costs beyond its bytes at the flow's rate: `overhead = piece_overhead_s +
    ramp_bytes / min(child download, parent upload)`, during which the parent's slot is held."""
    piece_overhead_s: float = 0.0          # per piece: request and report round trips
    ramp_bytes: int = 0                    # per piece: bytes' worth of time lost to TCP's start
    profile: str = "datacenter"


# `[network] profile`: the defaults of the keys above, per kind of network.
NETWORK_PROFILES: dict[str, NetworkSpec] = {
    # round trips well under a millisecond, TCP's start over in a few of them: nothing to charge
    "datacenter": NetworkSpec(0.0, 0, "datacenter"),
    # the testbed's shaped 10-30 Mbit/s links, whose tbf queues hold 50 ms: measured there by
    # `python -m experiments.testbed.calibration` (2026-11-29, 774 pieces whose parent and child
    # had no other transfer; fit 0.2013 s + 98,207 B, reports/testbed/calibration.json)
    "testbed": NetworkSpec(0.2, 98_000, "testbed"),
}


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    file: FileSpec
    source: SourceSpec
    run: RunSpec
    idcs: tuple[IdcSpec, ...]
    links: tuple[LinkSpec, ...]
    supernodes: tuple[SupernodeGroup, ...]
    hosts: tuple[HostGroup, ...]
    scheduler: SchedulerSpec
    network: NetworkSpec = NETWORK_PROFILES["datacenter"]
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # the data, overrides applied

    @property
    def n_hosts(self) -> int:
        return sum(g.count for g in self.hosts)

    @property
    def n_supernodes(self) -> int:
        return sum(g.count for g in self.supernodes)


# ---------------------------------------------------------------------------------------------
# Readers: (value, key path) -> checked value, or ScenarioError naming the path.

Reader = Callable[[Any, str], Any]
REQUIRED = object()
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _join(path: str, key: str | int) -> str:
    key = str(key)
    key = key if _BARE_KEY.fullmatch(key) else f'"{key}"'
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    """A value as TOML would spell it, shortened for a one-line message."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "an array"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ScenarioError(path, f"must be a non-empty string, not {_show(value)}")
    return value


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(path, f"must be true or false, not {_show(value)}")
    return value


def _integer(low: int) -> Reader:
    def read(value: Any, path: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ScenarioError(path, f"must be an integer >= {low}, not {_show(value)}")
        return value
    return read


def _integer_or_auto(low: int) -> Reader:
    integer = _integer(low)

    def read(value: Any, path: str) -> int | str:
        if value == "auto":
            return value
        if isinstance(value, str):
            raise ScenarioError(path, f"must be an integer >= {low} or \"auto\", not {_show(value)}")
        return integer(value, path)
    return read


def _seconds(low: float, *, inclusive: bool) -> Reader:
    words = f">= {low:g}" if inclusive else f"> {low:g}"

    def read(value: Any, path: str) -> float:
        ok = _is_number(value) and math.isfinite(value) and (
            value >= low if inclusive else value > low)
        if not ok:
            raise ScenarioError(path, f"must be a number of seconds {words}, not {_show(value)}")
        return float(value)
    return read


def _fraction(value: Any, path: str) -> float:
    if not (_is_number(value) and 0 <= value <= 1):
        raise ScenarioError(path, f"must be a number in [0, 1], not {_show(value)}")
    return float(value)


def _choice(*options: str) -> Reader:
    def read(value: Any, path: str) -> str:
        if value not in options:
            allowed = " or ".join(f"'{o}'" for o in options)
            raise ScenarioError(path, f"must be {allowed}, not {_show(value)}")
        return value
    return read


def _size(minimum: int) -> Reader:
    def read(value: Any, path: str) -> int:
        try:
            size = parse_size(value)
        except ValueError as e:
            raise ScenarioError(path, str(e)) from None
        if size < minimum:
            floor = "positive" if minimum == 1 else f"at least {format_bytes(minimum, binary=True)}"
            raise ScenarioError(path, f"must be {floor}, not {_show(value)}")
        return size
    return read


def _rate(value: Any, path: str, *, zero_ok: bool = False) -> float:
    try:
        rate = parse_rate(value)
    except ValueError as e:
        raise ScenarioError(path, str(e)) from None
    if rate < 0 or (rate == 0 and not zero_ok):
        raise ScenarioError(path, f"must be {'>= 0' if zero_ok else 'positive'}, not {_show(value)}")
    return rate


def _rate_or_zero(value: Any, path: str) -> float:
    return _rate(value, path, zero_ok=True)


def _rate_mix(value: Any, path: str) -> RateMix:
    """'100Mbps', or a mix { "100Mbps" = 0.7, "1Gbps" = 0.3 } (keys are rates, values weights)."""
    if isinstance(value, str):
        return RateMix.of(_rate(value, path))
    if not isinstance(value, dict) or not value:
        raise ScenarioError(path, f"must be a rate like '100Mbps' or a mix like "
                                  f"{{ \"100Mbps\" = 0.7, \"1Gbps\" = 0.3 }}, not {_show(value)}")
    seen: dict[float, str] = {}
    for key, weight in value.items():
        rate = _rate(key, path)
        if rate in seen:
            raise ScenarioError(path, f"'{seen[rate]}' and '{key}' are the same rate")
        seen[rate] = key
        if not (_is_number(weight) and math.isfinite(weight) and weight > 0):
            raise ScenarioError(_join(path, key), f"a weight must be a positive number, not {_show(weight)}")
    return RateMix(tuple(seen), tuple(float(w) for w in value.values()))


def _location(value: Any, path: str) -> str:
    if not isinstance(value, str) or (value and any(not part for part in value.split("|"))):
        raise ScenarioError(path, f"must be '|'-separated non-empty parts like 'asia|cn|hz|dc1', "
                                  f"not {_show(value)}")
    return value


def _idc_pair(value: Any, path: str) -> tuple[str, str]:
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, str) and v for v in value)):
        raise ScenarioError(path, f"must be two idc names like [\"hz\", \"sg\"], not {_show(value)}")
    if value[0] == value[1]:
        raise ScenarioError(path, f"a link joins two different idcs, not '{value[0]}' to itself")
    return value[0], value[1]


def _arrival(value: Any, path: str) -> Arrival:
    if value == "simultaneous":
        return Arrival("simultaneous", 0.0)
    if isinstance(value, dict):
        return _read_section(value, path, "arrival")
    raise ScenarioError(path, f"must be \"simultaneous\" or a table like {{ uniform_s = 60 }}, "
                              f"not {_show(value)}")


# ---------------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True, slots=True)
class Key:
    read: Reader
    default: Any = REQUIRED
    section: str | None = None  # the schema of its value (or of its items, for an array of tables)
    array: bool = False         # an array of tables ([[hosts]])


@dataclass(frozen=True, slots=True)
class Section:
    keys: dict[str, Key]
    build: Callable[[dict[str, Any], str], Any]  # (values read, path) -> frozen object


def _table(section: str, default: Any = REQUIRED) -> Key:
    return Key(lambda v, p: _read_section(v, p, section), default, section)


def _array(section: str, default: Any = REQUIRED, min_items: int = 0) -> Key:
    def read(value: Any, path: str) -> tuple:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ScenarioError(path, f"must be an array of tables ([[{path}]]), not {_show(value)}")
        if len(value) < min_items:
            raise ScenarioError(path, f"at least {min_items} [[{path}]] group required")
        return tuple(_read_section(v, _join(path, i), section) for i, v in enumerate(value))
    return Key(read, default, section, array=True)


def _build(cls: type) -> Callable[[dict[str, Any], str], Any]:
    """Build `cls` from values whose keys are its field names; its own checks name the path."""
    def build(values: dict[str, Any], path: str) -> Any:
        try:
            return cls(**values)
        except ValueError as e:
            raise ScenarioError(path, str(e)) from None
    return build


def _build_supernode(v: dict[str, Any], path: str) -> SupernodeGroup:
    return SupernodeGroup(
        count=v["count"], upload_bps=v["upload"],
        download_bps=v["upload"] if v["download"] is None else v["download"],  # symmetric NIC
        idc=v["idc"], location=v["location"], fail_at_s=v["fail_at_s"])


def _build_host(v: dict[str, Any], path: str) -> HostGroup:
    if v["upload"] is None:
        v["upload"] = v["download"]  # a NIC is symmetric unless the file says otherwise
    group = HostGroup(**v)
    if group.joint:
        down = dict(zip(group.download.values, group.download.weights))
        up = dict(zip(group.upload.values, group.upload.weights))
        if any(abs(down[r] - up[r]) > 1e-9 for r in down):
            raise ScenarioError(_join(path, "upload"),
                                "a mix of the same rates as download is drawn jointly with it "
                                "(one NIC per host), so its weights must equal download's")
    return group


SECTIONS: dict[str, Section] = {
    "scenario": Section({
        "name": Key(_string, None),
        "file": _table("file"),
        "source": _table("source"),
        "run": _table("run", RunSpec()),
        "idcs": _array("idc", ()),
        "links": _array("link", ()),
        "supernodes": _array("supernode", ()),
        "hosts": _array("host", min_items=1),
        "scheduler": _table("scheduler", SchedulerSpec(concurrent_pieces="auto")),
        "network": _table("network", NETWORK_PROFILES["datacenter"]),
    }, lambda v, p: v),  # assembled by parse_scenario, which checks across sections
    "file": Section({
        "size": Key(_size(1)),
        "piece_size": Key(_size(MIN_PIECE_SIZE), None),
    }, _build(FileSpec)),
    "source": Section({
        "upload": Key(_rate),
        "idc": Key(_string, None),
    }, lambda v, p: SourceSpec(upload_bps=v["upload"], idc=v["idc"])),
    "run": Section({
        "mode": Key(_choice("p2p", "source"), "p2p"),
        "seed": Key(_integer(0), 1),
        "arrival": Key(_arrival, Arrival("simultaneous"), "arrival"),
        "max_sim_s": Key(_seconds(0, inclusive=False), None),
    }, _build(RunSpec)),
    "arrival": Section({
        "uniform_s": Key(_seconds(0, inclusive=True)),
    }, lambda v, p: Arrival("uniform", v["uniform_s"])),
    "idc": Section({
        "name": Key(_string),
    }, _build(IdcSpec)),
    "link": Section({
        "between": Key(_idc_pair),
        "capacity": Key(_rate),
    }, lambda v, p: LinkSpec(between=v["between"], capacity_bps=v["capacity"])),
    "supernode": Section({
        "count": Key(_integer(0)),
        "upload": Key(_rate),
        "download": Key(_rate, None),  # default: the upload rate
        "idc": Key(_string, None),
        "location": Key(_location, ""),
        "fail_at_s": Key(_seconds(0, inclusive=True), None),
    }, _build_supernode),
    "host": Section({
        "count": Key(_integer(1)),
        "download": Key(_rate_mix),
        "upload": Key(_rate_mix, None),  # default: the download rate (or mix, drawn jointly)
        "idc": Key(_string, None),
        "location": Key(_location, ""),
        "background": _table("background", None),
        "churn": _table("churn", None),
    }, _build_host),
    "background": Section({
        "mean": Key(_rate_or_zero),
        "peak": Key(_rate),
        "on_s": Key(_seconds(0, inclusive=False)),
        "off_s": Key(_seconds(0, inclusive=False)),
    }, lambda v, p: _build(Background)(
        {"mean_bps": v["mean"], "peak_bps": v["peak"], "on_s": v["on_s"], "off_s": v["off_s"]}, p)),
    "churn": Section({
        "leave_fraction": Key(_fraction),
    }, _build(Churn)),
    "network": Section({
        "profile": Key(_choice(*NETWORK_PROFILES), "datacenter"),
        "piece_overhead_s": Key(_seconds(0, inclusive=True), None),   # default: the profile's
        "ramp": Key(_size(0), None),
    }, lambda v, p: replace(NETWORK_PROFILES[v["profile"]], **{k: x for k, x in (
        ("piece_overhead_s", v["piece_overhead_s"]), ("ramp_bytes", v["ramp"])) if x is not None})),
    "scheduler": Section({
        "concurrent_pieces": Key(_integer_or_auto(1), "auto"),
        "upload_slots": Key(_integer(1), None),
        "seed_upload_slots": Key(_integer(1), None),
        "parent_sample": Key(_integer(1), 15),
        "min_upload_rate": Key(_rate, None),
        "link_slots": Key(_boolean, False),
        "end_game": Key(_boolean, False),
    }, lambda v, p: _build(SchedulerSpec)({**{k: x for k, x in v.items() if k != "min_upload_rate"},
                                           "min_upload_bps": v["min_upload_rate"]}, p)),
}


def _unknown_key(path: str, key: str, section: str) -> ScenarioError:
    known = list(SECTIONS[section].keys)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    where = "" if path else "top-level "
    return ScenarioError(path, f"unknown {where}key '{key}' ({hint}known: {', '.join(known)})")


def _read_fields(value: Any, path: str, section: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(path, f"must be a table, not {_show(value)}")
    keys = SECTIONS[section].keys
    for key in value:
        if key not in keys:
            raise _unknown_key(path, key, section)
    out: dict[str, Any] = {}
    for key, spec in keys.items():
        here = _join(path, key)
        if key in value:
            out[key] = spec.read(value[key], here)
        elif spec.default is REQUIRED:
            raise ScenarioError(here, "required")
        else:
            out[key] = spec.default
    return out


def _read_section(value: Any, path: str, section: str) -> Any:
    return SECTIONS[section].build(_read_fields(value, path, section), path)


# ---------------------------------------------------------------------------------------------
# Whole scenarios


def parse_scenario(data: dict, name_hint: str = "") -> Scenario:
    """Validate raw scenario data (as TOML loads it) into a frozen `Scenario`."""
    v = _read_fields(data, "", "scenario")
    idcs: tuple[IdcSpec, ...] = v["idcs"]

    declared: dict[str, int] = {}
    for i, idc in enumerate(idcs):
        if idc.name in declared:
            raise ScenarioError(_join(_join("idcs", i), "name"), f"idc '{idc.name}' declared twice")
        declared[idc.name] = i

    uses = [("source.idc", v["source"].idc)]
    uses += [(f"supernodes.{i}.idc", g.idc) for i, g in enumerate(v["supernodes"])]
    uses += [(f"hosts.{i}.idc", g.idc) for i, g in enumerate(v["hosts"])]
    uses += [(f"links.{i}.between", name) for i, link in enumerate(v["links"]) for name in link.between]
    if idcs:
        for path, name in uses:
            if name is not None and name not in declared:
                raise ScenarioError(path, f"unknown idc '{name}' (declared: {', '.join(declared)})")
    else:
        idcs = tuple(IdcSpec(name) for name in dict.fromkeys(n for _, n in uses if n is not None))

    pairs: dict[frozenset, int] = {}
    for i, link in enumerate(v["links"]):
        pair = frozenset(link.between)
        if pair in pairs:
            raise ScenarioError(f"links.{i}.between", f"idcs {link.between[0]} and "
                                f"{link.between[1]} are already linked by links.{pairs[pair]}")
        pairs[pair] = i

    scheduler = v["scheduler"]
    net = v["network"]
    if scheduler.end_game and (net.piece_overhead_s or net.ramp_bytes):
        # a part starts flowing at once; splitting a piece still in its start-up is not modelled
        raise ScenarioError("scheduler.end_game", "needs a network without per-piece start-up "
                            f"(network profile '{net.profile}' has piece_overhead_s = "
                            f"{net.piece_overhead_s:g}, ramp = {net.ramp_bytes} bytes)")
    if scheduler.concurrent_pieces == "auto":
        hosts = v["hosts"]
        n = sum(g.count for g in hosts) or 1
        scheduler = replace(scheduler, concurrent_pieces=fill_concurrency(
            sum(g.count * g.download.mean for g in hosts) / n, sum(g.count * g.upload.mean for g in hosts) / n))

    return Scenario(
        name=v["name"] or name_hint or "unnamed",
        file=v["file"], source=v["source"], run=v["run"], idcs=idcs, links=v["links"],
        supernodes=v["supernodes"], hosts=v["hosts"], scheduler=scheduler, network=v["network"],
        raw=copy.deepcopy(data),
    )


def _parse_value(text: str) -> Any:
    """An override's VALUE: TOML if it parses as one value (200, true, "x", { uniform_s = 60 },
    [1, 2]), else the bare text (5GB, p2p)."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text.strip()
    return parsed["v"] if list(parsed) == ["v"] else text.strip()


def _set(data: dict, dotted: str, value: Any) -> None:
    """Set `value` at `dotted` in `data`, walking the schema alongside the data."""
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise ScenarioError(dotted, "an override needs a dotted key path like hosts.0.count")
    node: Any = data
    section: str | None = "scenario"  # None: below a free-form value (a rate mix, an array)
    for depth, part in enumerate(parts):
        parent, here, last = ".".join(parts[:depth]), ".".join(parts[:depth + 1]), depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit():
                raise ScenarioError(here, f"{parent} is an array: address its items by index "
                                          f"({parent}.0, {parent}.1, ...)")
            index = int(part)
            if index >= len(node):
                raise ScenarioError(here, f"index {index} out of range ({parent} has "
                                          f"{len(node)} item{'s' if len(node) != 1 else ''})")
            if last:
                node[index] = value
                return
            node = node[index]  # items of an array of tables keep the array's section
            continue
        if not isinstance(node, dict):
            raise ScenarioError(parent, f"is {_show(node)}, not a table, so it has no key '{part}'")
        key = SECTIONS[section].keys.get(part) if section else None
        if section and key is None:
            raise _unknown_key(parent, part, section)
        if last:
            node[part] = value
            return
        if part not in node:
            if key is None or key.section is None or key.array:
                raise ScenarioError(here, f"not in the scenario, so {'.'.join(parts)} cannot be set")
            node[part] = {}  # a known table the file leaves out, e.g. [scheduler]
        node = node[part]
        section = key.section if key else None


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """A copy of `data` with each "dotted.path=VALUE" applied in order."""
    out = copy.deepcopy(data)
    for override in overrides:
        dotted, eq, text = override.partition("=")
        if not eq:
            raise ScenarioError("", f"override '{override}' must be KEY=VALUE, like hosts.0.count=200")
        _set(out, dotted.strip(), _parse_value(text))
    return out


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read a scenario file, apply `--set` overrides, validate."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ScenarioError(str(path), "no such scenario file") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(str(path), f"bad TOML: {e}") from None
    except UnicodeDecodeError:
        raise ScenarioError(str(path), "bad TOML: not UTF-8 text") from None
    except OSError as e:
        raise ScenarioError(str(path), e.strerror or str(e)) from None
    return parse_scenario(apply_overrides(data, overrides), name_hint=path.stem)
