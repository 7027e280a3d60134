"""The compiled hot paths (`dfnet.native`): same results as the source, used only while current.

Runs real `dfly sim run` processes in both forms; the choice rules are checked on a folder
laid out like the project, with its own stamp.
"""
from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dfnet
from dfnet import GROUP, MODULES, _FromSource, stale, use_compiled

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "experiments" / "scenarios"


def sim(path: Path, sets: list[str], interpreted: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DFLY_INTERPRETED"}
    if interpreted:
        env["DFLY_INTERPRETED"] = "1"
    cmd = [sys.executable, "-m", "experiments.cli", "sim", "run", str(path), "--json", "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = json.loads(r.stdout)
    out.pop("wall_s")
    out.pop("peak_rss_bytes")
    return out


def can_compile() -> bool:
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return False
    return shutil.which("cc") is not None or shutil.which("gcc") is not None


@pytest.mark.parametrize("scenario, sets", [
    # one IDC with the end game; two IDCs with link slots, mixed NICs and churn
    ("fig8-2g.toml", ["hosts.0.count=200", "file.size=100MB"]),
    ("heterogeneous-2idc.toml", ["scheduler.link_slots=true"]),
])
def test_compiled_and_source_give_the_same_run(scenario, sets):
    compiled = sim(SCENARIOS / scenario, sets, interpreted=False)
    source = sim(SCENARIOS / scenario, sets, interpreted=True)
    assert compiled["finished_hosts"] > 0
    assert compiled == source


def test_setup_compiled_the_hot_modules_where_it_can():
    if not can_compile():
        pytest.skip("no mypyc or no C compiler here: everything runs from source")
    code = "import importlib; print(*(importlib.import_module(m).__file__ for m in %r))" % (MODULES,)
    env = {k: v for k, v in os.environ.items() if k != "DFLY_INTERPRETED"}
    files = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert all(f.endswith(importlib.machinery.EXTENSION_SUFFIXES[0]) for f in files), files
    env["DFLY_INTERPRETED"] = "1"
    files = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert all(f.endswith(".py") for f in files), files


def fake_build(root: Path) -> Path:
    """A project folder with the compiled modules' sources, extension files and a stamp."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for m in (*MODULES, GROUP + "__mypyc"):
        src = root.joinpath(*m.split(".")).with_suffix(".py")
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(f"# {m}\nX = 1\n")
        src.with_suffix(suffix).write_bytes(b"")
    stamp = root / "stamp.json"
    stamp.write_text(json.dumps({"python": sys.implementation.cache_tag, "sources": {
        m: dfnet._digest(root.joinpath(*m.split(".")).with_suffix(".py")) for m in MODULES}}))
    return stamp


def test_an_edited_source_turns_every_compiled_module_off(tmp_path):
    stamp = fake_build(tmp_path)
    assert stale(tmp_path, stamp) == []
    assert use_compiled(tmp_path, stamp, env={}) == (True, "compiled and current")
    assert use_compiled(tmp_path, stamp, env={"DFLY_INTERPRETED": "1"})[0] is False
    edited = tmp_path / "dfnet" / "core" / "scheduler.py"
    edited.write_text(edited.read_text() + "Y = 2\n")
    assert stale(tmp_path, stamp) == ["dfnet.core.scheduler"]
    compiled, why = use_compiled(tmp_path, stamp, env={})
    assert not compiled and "dfnet/core/scheduler.py changed since it was compiled" in why
    # all or none: the finder sends every compiled module to its source, edited or not
    finder = _FromSource(tmp_path)
    for m in MODULES:
        assert finder.find_spec(m).origin == str(tmp_path.joinpath(*m.split(".")).with_suffix(".py"))
    assert finder.find_spec("dfnet.core.task") is None


def test_a_missing_extension_or_another_python_means_source(tmp_path):
    stamp = fake_build(tmp_path)
    (tmp_path / "dfsim" / ("network" + importlib.machinery.EXTENSION_SUFFIXES[0])).unlink()
    assert stale(tmp_path, stamp) is None
    stamp = fake_build(tmp_path)
    stamp.write_text(json.dumps({"python": "cpython-39", "sources": {}}))
    assert use_compiled(tmp_path, stamp, env={})[0] is False
    stamp.write_text("{not json")
    assert use_compiled(tmp_path, stamp, env={})[0] is False


def test_running_an_edited_source_is_said_once_at_the_first_import(tmp_path, capsys):
    fake_build(tmp_path)
    finder = _FromSource(tmp_path, "dfnet/core/scheduler.py changed since it was compiled")
    finder.find_spec("dfnet.core.task")             # not a compiled module: nothing said
    assert capsys.readouterr().err == ""
    for m in MODULES:
        finder.find_spec(m)
    err = capsys.readouterr().err
    assert err == "dfnet.native: running from source: dfnet/core/scheduler.py changed since it was compiled\n"


def test_from_source_after_the_runtime_modules_are_imported():
    """The choice is made in `dfnet/__init__.py`, whose namespace the package's submodules
    share: importing `dfnet.source` first must not break it."""
    code = "import dfnet.source, dfnet.storage, dfnet.core.scheduler as m; print(m.__file__)"
    env = {**os.environ, "DFLY_INTERPRETED": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("dfnet/core/scheduler.py")
