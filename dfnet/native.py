"""Compiled hot paths: the core's swarm and scheduler and the simulator's network and run loop
(`MODULES`), built with mypyc from their unchanged Python source.

A simulation spends most of its time in these four modules, and a supernode's scheduling in
the first two; mypyc turns their plain, annotated Python into C extensions that run 1,000 x
5 GB about 1.5x as fast (`tests/benchmarks/bench_sim.py --interpreted` measures it), with the
same results bit for bit (`tests/test_native.py`). `./setup.sh` builds them; without mypyc or
a C compiler everything runs from source, only slower.

Rules kept here (the choice itself is made in `dfnet/__init__.py`, before any import):
- The source is the truth. Compiled modules are used only while every one of their sources is
  byte for byte what was compiled (sha256s in `STAMP`, written by `build`). Once one is edited,
  all of them run from source, with one line on stderr saying how to rebuild: all or none,
  because compiled modules reach into each other's classes natively.
- `DFLY_INTERPRETED=1` runs from source (profilers see into the functions; a bug can be
  checked in both forms).
- Compiled classes are closed: their instances take no new attributes and their methods
  cannot be replaced at run time. Code and tests treat them as such.

    python -m dfnet.native build     # compile (./setup.sh does it)
    python -m dfnet.native status    # which form imports would use, and why
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dfnet import GROUP, MODULES, ROOT, STAMP, _digest, source_file, stale, use_compiled

# Only the compiled modules are analysed: what they import (numpy, SimPy, `models`) is taken as
# untyped. Following those imports costs minutes, and mypy has crashed on numpy's stubs.
MYPY_FLAGS = ("--follow-imports=skip", "--ignore-missing-imports", "--no-site-packages")


def build() -> int:
    """Compile `MODULES` in place and write the stamp; one line of outcome. 0 when compiled,
    1 when it could not be (the source runs then)."""
    try:
        import mypyc  # noqa: F401  (only to say clearly that it is missing)
    except ImportError:
        print("dfnet.native: mypyc is not installed (pip install mypy): everything runs from source")
        return 1
    if shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        print("dfnet.native: no C compiler: everything runs from source")
        return 1
    if stale() == []:
        print("dfnet.native: compiled modules are current")
        return 0
    STAMP.unlink(missing_ok=True)            # a failed build leaves the source in use
    paths = [str(source_file(m).relative_to(ROOT)) for m in MODULES]
    # setuptools' build_ext, in a child process, every by-product in a temporary folder
    script = "\n".join([
        "import sys",
        "from setuptools import setup",
        "from mypyc.build import mypycify",
        f"ext = mypycify({[*MYPY_FLAGS, *paths]!r}, group_name={GROUP!r}, target_dir=sys.argv[1], opt_level='3')",
        "setup(name='dfly-native', ext_modules=ext,",
        "      script_args=['build_ext', '--build-temp', sys.argv[1], '--build-lib', sys.argv[1] + '/lib'])",
    ])
    digests = {m: _digest(source_file(m)) for m in MODULES}     # what this build compiles
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dfly-native-") as tmp:
        r = subprocess.run([sys.executable, "-c", script, tmp], cwd=ROOT, capture_output=True, text=True)
        if r.returncode == 0:
            _put_in_place(Path(tmp) / "lib")
    if r.returncode != 0:
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if "error" in ln.lower()] or \
            (r.stdout + r.stderr).splitlines()[-1:]
        print(f"dfnet.native: compiling failed, everything runs from source: {lines[0][:300] if lines else '?'}")
        return 1
    STAMP.write_text(json.dumps({"python": sys.implementation.cache_tag, "sources": digests}, indent=1) + "\n")
    print(f"dfnet.native: compiled {', '.join(MODULES)} with mypyc in {time.monotonic() - t0:.0f} s")
    return 0


def _put_in_place(built: Path) -> None:
    """Move the built extensions beside their sources, each by a rename: a process running
    the old ones keeps its file (overwriting a loaded extension in place can crash it)."""
    for so in built.rglob("*.so"):
        dest = ROOT / so.relative_to(built)
        part = dest.with_name(dest.name + ".part")
        shutil.copyfile(so, part)
        os.replace(part, dest)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["build"]:
        return build()
    if args == ["status"]:
        compiled, why = use_compiled()
        print(f"{'compiled' if compiled else 'source'}: {why}")
        return 0
    print("usage: python -m dfnet.native build|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
