"""Units, scenario files, `--set` overrides and validation errors (dfsim.units, dfsim.scenario)."""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import numpy as np
import pytest

from dfsim.scenario import (
    NETWORK_PROFILES, SECTIONS, Arrival, Background, HostGroup, RateMix, Scenario, ScenarioError,
    apply_overrides, load_scenario, parse_scenario,
)
from dfsim.units import format_bytes, format_rate, parse_rate, parse_size

SCENARIOS = Path(__file__).resolve().parents[1] / "experiments" / "scenarios"
SCENARIO_FILES = sorted(SCENARIOS.glob("*.toml"))

MINIMAL = """
[file]
size = "200MB"
[source]
upload = "1Gbps"
[run]
mode = "p2p"
[[supernodes]]
count = 2
upload = "1Gbps"
[[hosts]]
count = 1000
download = "100Mbps"
upload = "100Mbps"
"""


def minimal() -> dict:
    return tomllib.loads(MINIMAL)


# ------------------------------------------------------------------------------------------ units

@pytest.mark.parametrize("text, expected", [
    ("1B", 1), ("1KB", 10**3), ("1MB", 10**6), ("1GB", 10**9), ("1TB", 10**12),
    ("1KiB", 2**10), ("1MiB", 2**20), ("1GiB", 2**30), ("1TiB", 2**40),
    (1234, 1234), ("1234", 1234), ("200MB", 200_000_000), ("4 MiB", 4 * 2**20),
    ("4.2MB", 4_200_000), ("1.5KiB", 1536), ("0.5GiB", 2**29), ("  5GB ", 5 * 10**9),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected
    assert isinstance(parse_size(text), int)


@pytest.mark.parametrize("text, bits_per_s", [
    ("1bps", 1), ("1Kbps", 1e3), ("1Mbps", 1e6), ("1Gbps", 1e9), ("1Tbps", 1e12),
    ("100Mbps", 100e6), ("100 Mbps", 100e6), ("1.5Gbps", 1.5e9), (".5Gbps", 0.5e9),
])
def test_parse_rate_bits(text, bits_per_s):
    assert parse_rate(text) == pytest.approx(bits_per_s / 8)


@pytest.mark.parametrize("text, bytes_per_s", [
    ("1B/s", 1), ("1KB/s", 1e3), ("1MB/s", 1e6), ("1GB/s", 1e9), ("1TB/s", 1e12),
    ("1KiB/s", 2**10), ("1MiB/s", 2**20), ("1GiB/s", 2**30), ("1TiB/s", 2**40),
    ("12.5MB/s", 12.5e6), ("12.5 MB/s", 12.5e6),
])
def test_parse_rate_bytes(text, bytes_per_s):
    assert parse_rate(text) == pytest.approx(bytes_per_s)


def test_bits_and_bytes_differ_by_eight():
    assert parse_rate("100MB/s") == 8 * parse_rate("100Mbps")
    assert parse_rate("100Mbps") == parse_rate("12.5MB/s")


@pytest.mark.parametrize("bad", [
    "12XB", "5gb", "5Gb", "1.5B", "0.1KB/s", "100Mbps", "MB", "", "5 G B", "1e9", 1.5, True, None,
])
def test_parse_size_errors(bad):
    with pytest.raises(ValueError) as info:
        parse_size(bad)
    message = str(info.value)
    assert "\n" not in message and "not a size" in message and repr(bad) in message


@pytest.mark.parametrize("bad", [
    "200Mbs", "100mbps", "1kbps", "1MBps", "2 Mb/s", "100", 100, 12.5, "100MB", "Gbps", "",
])
def test_parse_rate_errors(bad):
    with pytest.raises(ValueError) as info:
        parse_rate(bad)
    message = str(info.value)
    assert "\n" not in message and "not a rate" in message and repr(bad) in message


def test_unit_errors_say_what_to_write():
    with pytest.raises(ValueError, match="did you mean 'Mbps'"):
        parse_rate("100mbps")  # only the case is wrong: bits either way
    with pytest.raises(ValueError, match="'b' is bits and 'B' is bytes.*'Mbps' or 'MB/s'"):
        parse_rate("100MBps")  # bits or bytes? refused, never guessed
    with pytest.raises(ValueError, match="did you mean '100MB/s'|did you mean 'MB/s'"):
        parse_rate("100MB")
    with pytest.raises(ValueError, match=r"use B, KB, MB, GB"):
        parse_size("12XB")


def test_format():
    assert format_bytes(200_000_000) == "200 MB"
    assert format_bytes(4 * 2**20, binary=True) == "4 MiB"
    assert format_bytes(4 * 2**20) == "4.19 MB"
    assert format_bytes(999_700_000) == "1 GB"
    assert format_bytes(0) == "0 B"
    assert format_bytes(512) == "512 B"
    assert format_rate(parse_rate("100Mbps")) == "100 Mbps"
    assert format_rate(parse_rate("15Gbps")) == "15 Gbps"
    assert format_rate(12.5e6, bits=False) == "12.5 MB/s"


@pytest.mark.parametrize("n", [1, 999, 1000, 123_456, 5 * 10**9, 4 * 2**20])
def test_format_parses_back(n):
    assert parse_size(format_bytes(n)) == pytest.approx(n, rel=5e-3)
    assert parse_rate(format_rate(n)) == pytest.approx(n, rel=5e-3)
    assert parse_rate(format_rate(n, bits=False)) == pytest.approx(n, rel=5e-3)


# ------------------------------------------------------------------------------- scenario files

def test_there_are_scenario_files():
    names = {p.stem for p in SCENARIO_FILES}
    assert {"fig3", "fig3-d1readme", "fig7", "fig8-15g", "fig8-2g", "fig9", "double11",
            "heterogeneous-2idc"} <= names


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_every_scenario_file_loads(path):
    text = path.read_text()
    assert text.startswith("#"), "each scenario opens with a comment saying what it reproduces"
    assert "Numbers:" in text.split("\nname")[0], "the header names where its numbers come from"
    scenario = load_scenario(path)
    assert isinstance(scenario, Scenario)
    assert scenario.n_hosts >= 1 and scenario.file.size > 0 and scenario.source.upload_bps > 0


def test_scenario_names_are_distinct():
    names = [load_scenario(p).name for p in SCENARIO_FILES]
    assert len(names) == len(set(names))


def test_seed_figures_numbers():
    mbps = parse_rate("1Mbps")
    fig3 = load_scenario(SCENARIOS / "fig3.toml")
    assert fig3.file.size == 200_000_000 and fig3.n_hosts == 1000 and fig3.n_supernodes == 2
    assert fig3.hosts[0].download.values == (100 * mbps,) == fig3.hosts[0].upload.values
    assert fig3.source.upload_bps == 1000 * mbps

    fig8 = load_scenario(SCENARIOS / "fig8-15g.toml")
    assert fig8.name == "fig8-5GB-1000" and fig8.file.size == 5 * 10**9
    assert fig8.hosts[0].download.values == (200 * mbps,) and fig8.hosts[0].upload.values == (100 * mbps,)
    fig8_2g = load_scenario(SCENARIOS / "fig8-2g.toml")
    assert fig8_2g.source.upload_bps == 2000 * mbps
    assert fig8_2g.hosts == fig8.hosts and fig8_2g.supernodes == fig8.supernodes

    d11 = load_scenario(SCENARIOS / "double11.toml")
    assert d11.n_hosts == 10_000 and [g.count for g in d11.hosts] == [7000, 3000]
    assert [i.name for i in d11.idcs] == ["hz", "sg"] and d11.file.piece_size is None
    assert d11.source.idc == "hz" and all(g.joint for g in d11.hosts)


def test_heterogeneous_scenario_uses_every_key():
    """The small scenario exercises every key of the schema, so each has an end-to-end case."""
    raw = tomllib.loads((SCENARIOS / "heterogeneous-2idc.toml").read_text())
    used: dict[str, set[str]] = {}

    def walk(value, section):
        if section is None or not isinstance(value, dict):
            return
        used.setdefault(section, set()).update(value)
        for key, child in value.items():
            sub = SECTIONS[section].keys[key].section
            for item in child if isinstance(child, list) else [child]:
                walk(item, sub)

    walk(raw, "scenario")
    for section, spec in SECTIONS.items():
        assert set(spec.keys) == used.get(section, set()), section
    s = load_scenario(SCENARIOS / "heterogeneous-2idc.toml")
    assert s.run.arrival == Arrival("uniform", 30.0)
    assert s.supernodes[1].fail_at_s == 20.0 and s.hosts[1].churn.leave_fraction == 0.05
    assert s.hosts[0].background.base_bps > 0 and s.hosts[0].joint and not s.hosts[1].joint


# ------------------------------------------------------------------------------------ overrides

def test_override_list_item_by_index():
    s = load_scenario(SCENARIOS / "fig3.toml", ["hosts.0.count=200"])
    assert s.n_hosts == 200


def test_override_size_as_bare_string():
    s = parse_scenario(apply_overrides(minimal(), ["file.size=50MB"]))
    assert s.file.size == 50_000_000


def test_override_inline_table():
    s = parse_scenario(apply_overrides(minimal(), ["run.arrival={ uniform_s = 60 }"]))
    assert s.run.arrival == Arrival("uniform", 60.0)


def test_override_values_are_toml_when_they_parse():
    data = apply_overrides(minimal(), [
        "run.seed=7", "run.mode=source", 'name="x y"', "hosts.0.download={ \"1Gbps\" = 1 }",
        "run.max_sim_s = 1.5e3",
    ])
    assert data["run"]["seed"] == 7 and data["run"]["mode"] == "source" and data["name"] == "x y"
    assert data["hosts"][0]["download"] == {"1Gbps": 1} and data["run"]["max_sim_s"] == 1500.0


def test_override_may_add_a_known_key_and_table():
    data = apply_overrides(minimal(), ["file.piece_size=4MiB", "scheduler.concurrent_pieces=8",
                                       "hosts.0.churn.leave_fraction=0.1"])
    s = parse_scenario(data)
    assert s.file.piece_size == 4 * 2**20 and s.scheduler.concurrent_pieces == 8
    assert s.hosts[0].churn.leave_fraction == 0.1


def test_override_is_validated_like_the_file():
    with pytest.raises(ScenarioError, match=r"^hosts\.0\.count: must be an integer >= 1"):
        parse_scenario(apply_overrides(minimal(), ["hosts.0.count=0"]))


def test_overrides_leave_the_input_alone():
    data = minimal()
    before = copy.deepcopy(data)
    apply_overrides(data, ["hosts.0.count=5", "scheduler.parent_sample=3"])
    assert data == before


@pytest.mark.parametrize("override, path, words", [
    ("hosts.1.count=200", "hosts.1", "out of range"),
    ("supernodes.5.upload=1Gbps", "supernodes.5", "out of range"),
    ("hosts.0.cout=200", "hosts.0", "unknown key 'cout'"),
    ("hosts.first.count=200", "hosts.first", "by index"),
    ("links.0.capacity=1Gbps", "links", "not in the scenario"),
    ("file.size.unit=MB", "file.size", "not a table"),
    ("bogus=1", "", "unknown top-level key 'bogus'"),
    ("hosts.0.count", "", "KEY=VALUE"),
    ("hosts..count=1", "hosts..count", "dotted key path"),
])
def test_bad_overrides(override, path, words):
    with pytest.raises(ScenarioError) as info:
        apply_overrides(minimal(), [override])
    error = info.value
    assert error.path == path and words in str(error) and "\n" not in str(error)
    if path:
        assert str(error).startswith(f"{path}: ")


# ------------------------------------------------------------------------------ bad scenarios

def _set(data: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()
BAD = [
    # (what, dotted key to change, value, error's path, words in the reason)
    ("unknown key", "hosts.0.cout", 5, "hosts.0", "unknown key 'cout' (did you mean 'count'?"),
    ("unknown top key", "hostz", [], "", "unknown top-level key 'hostz'"),
    ("unknown nested key", "run.arrival", {"uniform": 60}, "run.arrival", "unknown key 'uniform'"),
    ("bad rate unit", "hosts.0.download", "200Mbs", "hosts.0.download", "'200Mbs' is not a rate"),
    ("bits or bytes", "source.upload", "1GBps", "source.upload", "'b' is bits"),
    ("bare rate", "source.upload", 1000, "source.upload", "bits or bytes"),
    ("bad size unit", "file.size", "12XB", "file.size", "'12XB' is not a size"),
    ("zero size", "file.size", "0MB", "file.size", "must be positive"),
    ("tiny piece", "file.piece_size", "1KiB", "file.piece_size", "at least 16 KiB"),
    ("negative count", "hosts.0.count", -5, "hosts.0.count", "must be an integer >= 1, not -5"),
    ("count as string", "hosts.0.count", "200", "hosts.0.count", "must be an integer"),
    ("count as bool", "supernodes.0.count", True, "supernodes.0.count", "not true"),
    ("bad mode", "run.mode", "x", "run.mode", "must be 'p2p' or 'source', not 'x'"),
    ("bad arrival", "run.arrival", "later", "run.arrival", "simultaneous"),
    ("negative seed", "run.seed", -1, "run.seed", ">= 0"),
    ("missing file.size", "file.size", DELETE, "file.size", "required"),
    ("missing source", "source", DELETE, "source", "required"),
    ("missing hosts", "hosts", DELETE, "hosts", "required"),
    ("no host groups", "hosts", [], "hosts", "at least 1"),
    ("zero rate", "supernodes.0.upload", "0Gbps", "supernodes.0.upload", "must be positive"),
    ("mix weight", "hosts.0.download", {"1Gbps": 0}, 'hosts.0.download.1Gbps', "positive"),
    ("mix duplicate", "hosts.0.download", {"200Mbps": 1, "25MB/s": 1}, "hosts.0.download",
     "same rate"),
    ("joint weights differ", "hosts.0.upload", {"100Mbps": 0.5, "1Gbps": 0.5}, "hosts.0.upload",
     "weights must equal download's"),
    ("mean above peak", "hosts.0.background",
     {"mean": "90Mbps", "peak": "80Mbps", "on_s": 5, "off_s": 20}, "hosts.0.background", "mean"),
    ("zero on_s", "hosts.0.background",
     {"mean": "9Mbps", "peak": "80Mbps", "on_s": 0, "off_s": 20}, "hosts.0.background.on_s", "> 0"),
    ("churn fraction", "hosts.0.churn", {"leave_fraction": 1.5}, "hosts.0.churn.leave_fraction",
     "[0, 1]"),
    ("location", "hosts.0.location", "asia||hz", "hosts.0.location", "non-empty parts"),
    ("undeclared idc", "hosts.0.idc", "xx", "hosts.0.idc", "unknown idc 'xx' (declared: hz, sg)"),
    ("undeclared source idc", "source.idc", "xx", "source.idc", "unknown idc 'xx'"),
    ("self link", "links", [{"between": ["hz", "hz"], "capacity": "1Gbps"}], "links.0.between",
     "itself"),
    ("undeclared link idc", "links", [{"between": ["hz", "bj"], "capacity": "1Gbps"}],
     "links.0.between", "unknown idc 'bj'"),
    ("twice declared idc", "idcs", [{"name": "hz"}, {"name": "hz"}], "idcs.1.name", "twice"),
    ("scheduler", "scheduler", {"concurrent_pieces": 0}, "scheduler.concurrent_pieces", ">= 1"),
    ("link slots", "scheduler", {"link_slots": "yes"}, "scheduler.link_slots", "true or false, not 'yes'"),
    ("end game", "scheduler", {"end_game": "on"}, "scheduler.end_game", "true or false, not 'on'"),
    ("negative overhead", "network", {"piece_overhead_s": -0.1}, "network.piece_overhead_s", ">= 0"),
    ("ramp unit", "network", {"ramp": "64Kb"}, "network.ramp", "is not a size"),
    ("network key", "network", {"rtt": 0.1}, "network", "unknown key 'rtt'"),
    ("network profile", "network", {"profile": "lan"}, "network.profile", "'datacenter' or 'testbed'"),
    ("table expected", "file", "200MB", "file", "must be a table"),
]


def with_idcs() -> dict:
    data = minimal()
    data["idcs"] = [{"name": "hz"}, {"name": "sg"}]
    data["hosts"][0]["idc"] = "hz"
    data["hosts"][0]["download"] = {"100Mbps": 0.7, "1Gbps": 0.3}
    data["hosts"][0]["upload"] = {"100Mbps": 0.7, "1Gbps": 0.3}
    return data


@pytest.mark.parametrize("what, key, value, path, words", BAD, ids=[b[0] for b in BAD])
def test_bad_scenarios_name_the_key(what, key, value, path, words):
    data = _set(with_idcs(), key, value)
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.path == path
    assert message.startswith(f"{path}: " if path else words.split("'")[0])
    assert words in message


def test_the_good_base_of_the_bad_table_is_good():
    assert parse_scenario(with_idcs()).n_hosts == 1000


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[file]\nsize = \n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert "\n" not in message and "broken.toml" in message and "bad TOML" in message
    assert "line 2" in message  # TOML's own message, with its position


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ScenarioError, match=r"nope\.toml: no such scenario file"):
        load_scenario(tmp_path / "nope.toml")


def test_name_defaults_to_file_stem(tmp_path):
    path = tmp_path / "my-study.toml"
    path.write_text(MINIMAL)
    assert load_scenario(path).name == "my-study"
    assert load_scenario(path, ['name="other"']).name == "other"


def test_defaults():
    s = parse_scenario(tomllib.loads("""
        [file]
        size = 1000000
        [source]
        upload = "1Gbps"
        [[hosts]]
        count = 3
        download = "100Mbps"
    """))
    assert s.file.size == 1_000_000 and s.file.piece_size is None
    assert (s.run.mode, s.run.seed, s.run.arrival, s.run.max_sim_s) == (
        "p2p", 1, Arrival("simultaneous", 0.0), None)
    assert s.supernodes == () and s.links == () and s.idcs == ()
    assert s.hosts[0].upload == s.hosts[0].download  # a NIC is symmetric unless said otherwise
    assert s.hosts[0].location == "" and s.hosts[0].background is None
    # symmetric NICs: one piece at a time fills a child's downlink from a typical parent
    assert (s.scheduler.concurrent_pieces, s.scheduler.parent_sample) == (1, 15)
    assert (s.network.profile, s.network.piece_overhead_s, s.network.ramp_bytes) == ("datacenter", 0.0, 0)
    assert s.raw["hosts"][0]["count"] == 3


def test_network_profile_gives_the_defaults_and_keys_override_them():
    testbed = NETWORK_PROFILES["testbed"]
    assert testbed.piece_overhead_s > 0 and testbed.ramp_bytes > 0          # measured, not zero
    base = minimal()
    base["network"] = {"profile": "testbed"}
    assert parse_scenario(base).network == testbed
    base["network"]["ramp"] = "1KB"
    got = parse_scenario(base).network
    assert (got.profile, got.piece_overhead_s, got.ramp_bytes) == ("testbed", testbed.piece_overhead_s, 1000)


@pytest.mark.parametrize("nics, expected", [
    ('download = "200Mbps"\nupload = "100Mbps"', 2),        # Fig. 8's clients: two parents fill one
    ('download = "1Gbps"\nupload = "100Mbps"', 4),          # capped at Dragonfly 1's 4
    ('download = { "100Mbps" = 0.5, "1Gbps" = 0.5 }\nupload = "50Mbps"', 4),
    ('download = "100Mbps"\nupload = "1Gbps"', 1),
])
def test_concurrent_pieces_auto_fills_the_downlink_from_typical_parents(nics, expected):
    text = f"""
        [file]
        size = 1000000
        [source]
        upload = "1Gbps"
        [[hosts]]
        count = 3
        {nics}
    """
    assert parse_scenario(tomllib.loads(text)).scheduler.concurrent_pieces == expected
    explicit = parse_scenario(tomllib.loads(text + "\n[scheduler]\nconcurrent_pieces = 3\n"))
    assert explicit.scheduler.concurrent_pieces == 3


def test_concurrent_pieces_refuses_other_words():
    data = apply_overrides(minimal(), ["scheduler.concurrent_pieces=many"])
    with pytest.raises(ScenarioError, match=r"scheduler.concurrent_pieces.*integer >= 1 or \"auto\""):
        parse_scenario(data)


def test_supernode_download_defaults_to_upload_and_zero_count_is_allowed():
    data = minimal()
    data["supernodes"][0]["count"] = 0
    sn = parse_scenario(data).supernodes[0]
    assert sn.count == 0 and sn.download_bps == sn.upload_bps == parse_rate("1Gbps")


def test_idcs_are_implicit_when_none_are_declared():
    data = minimal()
    data["source"]["idc"] = "hz"
    data["hosts"].append({"count": 1, "download": "1Gbps", "idc": "sg"})
    data["links"] = [{"between": ["sg", "bj"], "capacity": "1Gbps"}]
    assert [i.name for i in parse_scenario(data).idcs] == ["hz", "sg", "bj"]


def test_scenario_is_frozen_and_hashable():
    s = parse_scenario(minimal())
    with pytest.raises(AttributeError):
        s.name = "x"  # type: ignore[misc]
    hash(s)


# ------------------------------------------------------------------------------ NICs and traffic

def test_mix_weights_are_normalised():
    mix = RateMix((1.0, 2.0), (7, 3))
    assert mix.weights == pytest.approx((0.7, 0.3)) and mix.mean == pytest.approx(1.3)
    with pytest.raises(ValueError):
        RateMix((1.0,), (0.0,))


def _mixed_group(**kw) -> HostGroup:
    mix = {"100Mbps": 0.7, "1Gbps": 0.3}
    return parse_scenario({**minimal(), "hosts": [
        {"count": 10, "download": mix, "upload": kw.get("upload", mix)}]}).hosts[0]


def test_draw_nics_joint():
    group = _mixed_group()
    assert group.joint
    down, up = group.draw_nics(np.random.default_rng(3), 20_000)
    assert down.shape == up.shape == (20_000,)
    assert np.array_equal(down, up)  # one category per host, used both ways
    fast = np.mean(down == parse_rate("1Gbps"))
    assert fast == pytest.approx(0.3, abs=0.02)
    assert set(np.unique(down)) == {parse_rate("100Mbps"), parse_rate("1Gbps")}


def test_draw_nics_independent_when_keys_differ():
    group = _mixed_group(upload={"50Mbps": 0.5, "500Mbps": 0.5})
    assert not group.joint
    down, up = group.draw_nics(np.random.default_rng(3), 20_000)
    slow_down, slow_up = down == parse_rate("100Mbps"), up == parse_rate("50Mbps")
    assert np.mean(slow_up) == pytest.approx(0.5, abs=0.02)
    # independent: P(slow up | slow down) ~ P(slow up)
    assert np.mean(slow_up[slow_down]) == pytest.approx(0.5, abs=0.03)


def test_draw_nics_fixed_upload():
    group = _mixed_group(upload="20Mbps")
    down, up = group.draw_nics(np.random.default_rng(0), 100)
    assert np.all(up == parse_rate("20Mbps")) and len(np.unique(down)) == 2


def test_draw_nics_is_deterministic_for_a_seed():
    group = _mixed_group()
    a = group.draw_nics(np.random.default_rng(42), 500)
    b = group.draw_nics(np.random.default_rng(42), 500)
    c = group.draw_nics(np.random.default_rng(43), 500)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_background_base_level():
    bg = Background(parse_rate("30Mbps"), parse_rate("80Mbps"), 5, 20)
    # the average over a period is the mean
    assert (bg.peak_bps * 5 + bg.base_bps * 20) / 25 == pytest.approx(bg.mean_bps)
    assert bg.base_bps == pytest.approx(parse_rate("17.5Mbps"))
    assert Background(1.0, 100.0, 5, 1).base_bps == 0.0  # bursts alone exceed the mean
    with pytest.raises(ValueError):
        Background(2.0, 1.0, 5, 20)


def test_end_game_on_a_network_with_per_piece_start_up_is_refused():
    """A part starts flowing at once: a piece still in its start-up cannot be split, so the
    simulator refuses the pair rather than run something it does not model."""
    data = minimal()
    data["scheduler"] = {"end_game": True}
    assert parse_scenario(copy.deepcopy(data)).scheduler.end_game
    data["network"] = {"profile": "testbed"}
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data)
    assert info.value.path == "scheduler.end_game" and "per-piece start-up" in str(info.value)
