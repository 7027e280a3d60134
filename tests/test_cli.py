"""`dfly sim run`: the command surface of DESIGN.md (experiments.cli).

One run goes through a real child process (`python -m experiments.cli`, what the `dfly` entry
point calls); the rest call `main(argv)` in-process and read stdout/stderr with capsys. Every
run is a few dozen hosts and 50 MB, well under a second.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from experiments.cli import main
from models.interfaces import FEATURE_SCHEMA_VERSION, FEATURES
from models.loader import KNOWN_PIECE_SELECTORS, KNOWN_RATE_CONTROLLERS

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "experiments" / "scenarios"
FIG9 = str(SCENARIOS / "fig9.toml")
SMALL = ["--set", "hosts.0.count=20", "--set", "file.size=50MB"]      # fig9 shrunk: 20 hosts x 50 MB

# DESIGN.md, "The command surface": every key of the example object
DESIGN_KEYS = {"scenario", "policy", "mode", "hosts", "file_bytes", "piece_bytes", "completion_s",
               "finished_hosts", "source_egress_bytes", "cross_idc_bytes", "lower_bound_s",
               "client_server_s", "events", "wall_s", "peak_rss_bytes"}
COMPLETION_KEYS = {"mean", "p50", "p95", "p99", "max"}


def run_json(capsys, *argv: str) -> dict:
    """`dfly sim run ... --json` in-process: exit code 0, one JSON object on stdout."""
    code = main(["sim", "run", *argv, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return parse_one_object(out)


def parse_one_object(out: str) -> dict:
    text = out.strip()
    assert text, "nothing on stdout"
    assert "\n" not in text, f"more than one line on stdout: {out!r}"
    obj = json.loads(text)                          # fails if anything else shares stdout
    assert isinstance(obj, dict)
    return obj


def assert_design_summary(s: dict) -> None:
    assert DESIGN_KEYS <= set(s), f"missing keys: {sorted(DESIGN_KEYS - set(s))}"
    assert set(s["completion_s"]) >= COMPLETION_KEYS
    for k in ("hosts", "file_bytes", "piece_bytes", "finished_hosts", "source_egress_bytes", "cross_idc_bytes",
              "events", "peak_rss_bytes"):
        assert isinstance(s[k], int) and not isinstance(s[k], bool) and s[k] >= 0, k
    for k in ("lower_bound_s", "client_server_s", "wall_s"):
        assert isinstance(s[k], (int, float)) and s[k] >= 0, k
    for k in COMPLETION_KEYS:
        assert isinstance(s["completion_s"][k], (int, float)), k
    c = s["completion_s"]
    assert c["p50"] <= c["p95"] <= c["p99"] <= c["max"] and c["mean"] <= c["max"]
    assert s["mode"] in ("p2p", "source")
    assert isinstance(s["scenario"], str) and isinstance(s["policy"], str)


def _comparable(s: dict) -> dict:
    return {k: v for k, v in s.items() if k not in ("wall_s", "peak_rss_bytes")}


# ---------------------------------------------------------------------------------- the JSON

def test_installed_command_prints_one_json_object_on_stdout():
    """Through a child process, as a user or a sweep runs it (progress may go to stderr)."""
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "sim", "run", FIG9, *SMALL, "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    s = parse_one_object(proc.stdout)
    assert_design_summary(s)
    assert s["scenario"] == "fig9" and s["policy"] == "heuristic:d2" and s["mode"] == "p2p"
    assert s["hosts"] == s["finished_hosts"] == 20
    assert s["file_bytes"] == 50_000_000
    assert "Traceback" not in proc.stderr


def test_main_prints_the_design_summary(capsys):
    s = run_json(capsys, FIG9, *SMALL)
    assert_design_summary(s)
    assert s["hosts"] == s["finished_hosts"] == 20
    assert s["completion_s"]["max"] >= s["lower_bound_s"]
    assert s["source_egress_bytes"] <= 1.05 * s["file_bytes"]


def test_set_overrides_the_host_count(capsys):
    s = run_json(capsys, FIG9, "--set", "hosts.0.count=20", "--set", "file.size=50MB", "--set", "run.mode=source")
    assert s["hosts"] == s["finished_hosts"] == 20
    assert s["mode"] == "source"
    assert s["source_egress_bytes"] == 20 * 50_000_000


def test_seed_overrides_the_scenario_seed(capsys):
    args = (FIG9, *SMALL, "--policy", "heuristic:random")
    default = run_json(capsys, *args)                             # fig9 says seed = 1
    same = run_json(capsys, *args, "--seed", "1")
    other = run_json(capsys, *args, "--seed", "2")
    again = run_json(capsys, *args, "--seed", "2")
    assert _comparable(default) == _comparable(same)
    assert _comparable(other) == _comparable(again)               # same seed, same JSON
    assert _comparable(other) != _comparable(default)             # a random policy follows the seed


def test_non_constant_rate_policy_runs(capsys):
    s = run_json(capsys, FIG9, *SMALL, "--rate-policy", "heuristic:sampling",
                 "--set", 'hosts.0.background={ mean = "30Mbps", peak = "80Mbps", on_s = 2, off_s = 3 }')
    assert s["finished_hosts"] == 20


def test_human_summary_without_json(capsys):
    assert main(["sim", "run", FIG9, *SMALL, "--no-progress"]) == 0
    out, _ = capsys.readouterr()
    assert "20/20 finished" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


# --------------------------------------------------------------------------------- the trace

def test_trace_one_row_per_piece_transfer(capsys, tmp_path):
    out = tmp_path / "runs" / "trace.parquet"                      # parent dirs are created
    s = run_json(capsys, FIG9, *SMALL, "--seed", "5", "--trace", str(out))
    table = pq.read_table(out)
    cols = set(table.column_names)
    assert {"time_s", "child", "parent", "piece", "bytes", "duration_s", "cross_idc", "outcome"} <= cols
    assert {f"f_{name}" for name in FEATURES} <= cols
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    assert meta["trace_schema_version"] == "1"
    assert meta["feature_schema_version"] == str(FEATURE_SCHEMA_VERSION)
    assert meta.get("seed") == "5"                                 # --seed reached the run
    assert meta.get("policy") == "heuristic:d2"

    t = table.to_pydict()
    n, F = s["hosts"], s["file_bytes"]
    n_pieces = math.ceil(F / s["piece_bytes"])
    assert set(t["outcome"]) <= {"ok", "aborted"}
    to_hosts = [i for i, (c, o) in enumerate(zip(t["child"], t["outcome"])) if o == "ok" and 0 <= c < n]
    assert sum(t["bytes"][i] for i in to_hosts) == n * F
    assert len(to_hosts) == n * n_pieces                           # one row per piece each host got
    assert {(t["child"][i], t["piece"][i]) for i in to_hosts} == {(c, p) for c in range(n) for p in range(n_pieces)}
    assert all(t["duration_s"][i] > 0 and t["time_s"][i] >= 0 for i in to_hosts)
    assert not any(t["cross_idc"])                                 # fig9 has one IDC
    # the origin feeds the seeds; the seeds' fetches add up to the file exactly once
    from_origin = sum(b for p, o, b in zip(t["parent"], t["outcome"], t["bytes"]) if p == -1 and o == "ok")
    assert from_origin == s["source_egress_bytes"] == F
    # a policy chose every peer-to-peer transfer: its feature row is there
    p2p = [i for i in to_hosts if t["parent"][i] >= 0]
    assert p2p
    assert all(not math.isnan(t["f_piece_rarity"][i]) for i in p2p)


# ------------------------------------------------------------------------------- refusals

def refused(capsys, argv: list[str]) -> str:
    """The run is refused: exit 2, nothing on stdout, one line on stderr, no traceback."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dfly: error: ")
    return lines[0]


@pytest.mark.parametrize("override, key_path", [
    ("hosts.0.downlod=1Gbps", "hosts.0"),                       # a key the schema does not know
    ("hosts.0.download=100Mbit", "hosts.0.download"),           # a bad unit
    ("hosts.0.download=100", "hosts.0.download"),               # no unit at all
    ("hosts.0.count=0", "hosts.0.count"),                       # a bad value
    ("hosts.3.count=10", "hosts.3"),                            # past the end of an array
    ("run.mode=torrent", "run.mode"),
    ("file.size=-5MB", "file.size"),
    ("supernodes.0.fail_at_s=-1", "supernodes.0.fail_at_s"),
    ('run.arrival={ uniform = 60 }', "run.arrival"),
])
def test_bad_override_refused_in_one_line_naming_the_key(capsys, override, key_path):
    line = refused(capsys, ["sim", "run", FIG9, "--set", override, "--json"])
    assert key_path in line
    if override.startswith("hosts.0.downlod"):
        assert "downlod" in line


@pytest.mark.parametrize("bad, key_path", [
    ('[[hosts]]\ncount = 10\ndownload = "100Mbps"\nbandwidth = "1Gbps"\n', "hosts.0"),
    ('[[hosts]]\ncount = 10\ndownload = "100 parsecs"\n', "hosts.0.download"),
    ('[[hosts]]\ncount = 10.5\ndownload = "100Mbps"\n', "hosts.0.count"),
    ('[[hosts]]\ncount = 10\ndownload = "100Mbps"\n[run]\nseed = "one"\n', "run.seed"),
], ids=["unknown-key", "bad-unit", "bad-count", "bad-seed"])
def test_bad_scenario_file_refused_in_one_line_naming_the_key(capsys, tmp_path, bad, key_path):
    path = tmp_path / "bad.toml"
    path.write_text('[file]\nsize = "50MB"\n[source]\nupload = "1Gbps"\n' + bad)
    line = refused(capsys, ["sim", "run", str(path), "--json"])
    assert key_path in line
    if "bandwidth" in bad:
        assert "bandwidth" in line


def test_unknown_piece_selector_refused_with_the_known_ones(capsys):
    line = refused(capsys, ["sim", "run", FIG9, *SMALL, "--policy", "heuristic:fastest", "--json"])
    assert "heuristic:fastest" in line
    for name in KNOWN_PIECE_SELECTORS:
        assert name in line
    for name in ("heuristic:random", "heuristic:rarest-first", "heuristic:v1", "heuristic:d2"):
        assert name in KNOWN_PIECE_SELECTORS


def test_unknown_policy_scheme_refused_with_the_known_ones(capsys):
    line = refused(capsys, ["sim", "run", FIG9, *SMALL, "--policy", "bittorrent", "--json"])
    assert "bittorrent" in line and all(name in line for name in KNOWN_PIECE_SELECTORS)


def test_unknown_rate_policy_refused_with_the_known_ones(capsys):
    line = refused(capsys, ["sim", "run", FIG9, *SMALL, "--rate-policy", "heuristic:turbo", "--json"])
    assert "heuristic:turbo" in line
    assert {"heuristic:static", "heuristic:sampling"} <= set(KNOWN_RATE_CONTROLLERS)
    for name in KNOWN_RATE_CONTROLLERS:
        assert name in line


def test_missing_scenario_file_refused_in_one_line(capsys, tmp_path):
    missing = tmp_path / "nope.toml"
    line = refused(capsys, ["sim", "run", str(missing), "--json"])
    assert str(missing) in line


def test_malformed_toml_refused_in_one_line(capsys, tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('[file]\nsize = "50MB\n')
    line = refused(capsys, ["sim", "run", str(path), "--json"])
    assert str(path) in line
