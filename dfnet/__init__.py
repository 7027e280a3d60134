"""dfnet: the live runtime, and the sans-IO core (`dfnet.core`) it shares with the simulator.

Importing the package first decides, once per process, whether the hot modules run compiled
or from source (`dfnet.native` builds them; its docstring has the rules). It happens here
because it must come before any of them is imported: `dfsim` imports this package first too.
"""
from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("dfnet.core.swarm", "dfnet.core.scheduler", "dfsim.network", "dfsim.sim")
GROUP = "dfnet._compiled"            # the extension holding the compiled code (`<GROUP>__mypyc`)
STAMP = ROOT / "dfnet" / "native-stamp.json"


def source_file(module: str, root: Path = ROOT) -> Path:
    """A module's .py file. (Not named `source`: importing `dfnet.source` sets that name.)"""
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stale(root: Path = ROOT, stamp: Path = STAMP) -> list[str] | None:
    """The compiled modules whose source changed since the build (empty: all current), or
    None when nothing was built for this Python."""
    try:
        built = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(built, dict) or built.get("python") != sys.implementation.cache_tag:
        return None
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    if not all(source_file(m, root).with_suffix(suffix).exists() for m in (*MODULES, GROUP + "__mypyc")):
        return None
    sources = built.get("sources", {})
    return [m for m in MODULES if sources.get(m) != _digest(source_file(m, root))]


class _FromSource(importlib.abc.MetaPathFinder):
    """Imports the compiled modules from their `.py` files (an extension next to a source
    otherwise wins)."""

    def __init__(self, root: Path, note: str = ""):
        self.root = root
        self.note = note            # said on stderr at the first import it serves

    def find_spec(self, name, path=None, target=None):
        if name not in MODULES:
            return None
        if self.note:
            print(f"dfnet.native: running from source: {self.note}", file=sys.stderr)
            self.note = ""
        return importlib.util.spec_from_file_location(name, source_file(name, self.root))


def use_compiled(root: Path = ROOT, stamp: Path = STAMP, env: dict | None = None) -> tuple[bool, str]:
    """Whether imports take the compiled modules, and why, in a few words."""
    env = os.environ if env is None else env
    if env.get("DFLY_INTERPRETED"):
        return False, "DFLY_INTERPRETED is set"
    changed = stale(root, stamp)
    if changed is None:
        return False, "not compiled for this Python (python -m dfnet.native build)"
    if changed:
        return False, (f"{source_file(changed[0], root).relative_to(root)} changed since it was compiled "
                       f"(./setup.sh or python -m dfnet.native build compiles it again)")
    return True, "compiled and current"


def install() -> None:
    """Choose compiled or source for this process, before any of `MODULES` is imported."""
    if any(isinstance(f, _FromSource) for f in sys.meta_path):
        return
    compiled, why = use_compiled()
    if compiled:
        return
    # built, then edited: say so (once); no build, or DFLY_INTERPRETED: quietly from source
    sys.meta_path.insert(0, _FromSource(ROOT, why if "changed since" in why else ""))


install()
