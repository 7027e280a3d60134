"""Policies on running nodes: load once at start-up, follow the registry alias while running.

Owns: `PolicyHandle`, the one object a supernode or daemon keeps for its piece selector or
rate controller. It resolves any policy URI through `models.loader`, and for
`models:/NAME@ALIAS` it can re-resolve the alias and swap in a new version without a restart.

Usage on a live node::

    from models.deploy import PolicyHandle
    from models.loader import PolicyError

    try:
        handle = PolicyHandle(args.policy, "piece-selector", seed=0)   # refuses to start on error
    except PolicyError as e:
        sys.exit(f"dfly supernode: {e}")
    log.info("piece selector %s version %s", handle.uri, handle.version)
    scheduler = Scheduler(swarm, handle.policy, ...)     # or read handle.policy per decision

    async def follow(interval_s: float):                  # e.g. every 30 s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            message = await loop.run_in_executor(None, handle.maybe_reload)   # blocks: registry I/O
            if message:
                log.info(message)                        # one line: switched, or kept and why
                scheduler.selector = handle.policy       # wherever the node holds the policy

Contract:
- `PolicyHandle(uri, kind, seed=0, tracking_uri=None, **params)`: `kind` is `piece-selector`
  or `rate-controller` (`piece selector` / `rate controller` also accepted); `params` go to a
  rate controller (`download_bps`, `upload_bps`). Loads at once; any failure raises
  `models.loader.PolicyError` (one line), so a starting node refuses to start.
- `.policy`: the current policy object (a `PieceSelector` or `RateController`). Replaced by a
  new object on a successful reload, never mutated, so a reader never sees half a swap.
- `.version`: the current version, a string: the registered version number for `models:/`
  URIs ("3"), `sha256:<12 hex>` of the file for `file:` URIs, "" for heuristics.
- `.uri`, `.kind`, `.last_error` (the last failure's line, or None once a reload succeeds).
- `.follows`: True when `maybe_reload` can ever switch (a models:/NAME@ALIAS URI or a file:
  URI); a pinned `models:/NAME/VERSION` or a heuristic never changes.
- `maybe_reload() -> str | None`: re-resolves the alias (or re-reads the file). Same version:
  None. A new version that loads: swaps it in and returns e.g. "piece-selector
  models:/piece-selector@production: version 1 -> 2". A failure (registry unreachable,
  alias gone, new version corrupted or of another feature schema): keeps the current policy and
  returns "piece-selector models:/...: keeping version 1: <reason>"; the same failure is
  reported once, not at every poll (it is reported again if it changes or after a success).
  It blocks on registry I/O (a second or more the first time, as mlflow is imported): call it
  off the event loop. It never raises for registry or model problems.
"""
from __future__ import annotations

import os

from models.learned import KIND_NAMES, ModelFileError, file_version
from models.loader import PolicyError, load_piece_selector, load_rate_controller

__all__ = ["PolicyHandle"]


class PolicyHandle:
    """A node's policy, following its registry alias. See the module docstring for the contract."""

    def __init__(self, uri: str, kind: str, seed: int = 0, tracking_uri: str | None = None, **params):
        if kind not in KIND_NAMES:
            raise PolicyError(f"unknown policy kind {kind!r}; expected piece-selector or rate-controller")
        self.uri = uri
        self.kind = KIND_NAMES[kind]
        self.seed = seed
        self.tracking_uri = tracking_uri
        self.params = params
        self.last_error: str | None = None
        self._reported: str | None = None
        self._file_stat: tuple | None = None
        self.follows = isinstance(uri, str) and (
            (uri.startswith("models:/") and "@" in uri) or uri.startswith("file:"))
        self.policy, self.version = self._load(uri)

    # ---- loading ------------------------------------------------------------------------
    def _load(self, uri: str):
        if isinstance(uri, str) and (uri.startswith("models:/") or uri.startswith("file:")):
            from models.learned import load_learned

            loader_kind = self.kind.replace("-", " ")
            stat = _stat(uri[len("file:"):]) if uri.startswith("file:") else None
            try:
                loaded = load_learned(uri, self.kind, self.seed, self.tracking_uri, **self.params)
            except ValueError as e:
                raise PolicyError(f"cannot load {loader_kind} {uri!r}: {e}") from None
            self._file_stat = stat          # only a file that loaded counts as seen
            return loaded
        if self.kind == "piece-selector":
            return load_piece_selector(uri, seed=self.seed), ""
        return load_rate_controller(uri, seed=self.seed, **self.params), ""

    def _current_target(self) -> str:
        """The version the URI names now (may raise ValueError)."""
        if self.uri.startswith("file:"):
            path = self.uri[len("file:"):]
            if _stat(path) == self._file_stat:
                return self.version
            try:
                with open(path, "rb") as f:
                    return file_version(f.read())
            except FileNotFoundError:
                raise ModelFileError(f"{path}: no such model file") from None
            except OSError as e:
                raise ModelFileError(f"{path}: {e.strerror or e}") from None
        from models.learned import registry

        return registry.resolve(self.uri, self.tracking_uri)

    # ---- following ----------------------------------------------------------------------
    def maybe_reload(self) -> str | None:
        """Switch to the version the alias names now, if it changed; see the module docstring."""
        if not self.follows:
            return None
        label = f"{self.kind} {self.uri}"
        try:
            target = self._current_target()
        except (ValueError, OSError) as e:
            return self._failed(label, _line(e))
        if target == self.version:
            self.last_error = None
            return None
        try:
            policy, version = self._load(self.uri)
        except PolicyError as e:
            reason = str(e).removeprefix(f"cannot load {self.kind.replace('-', ' ')} {self.uri!r}: ")
            return self._failed(label, reason)
        old, self.policy, self.version = self.version, policy, version
        self.last_error = self._reported = None
        return f"{label}: version {old} -> {version}"

    def _failed(self, label: str, reason: str) -> str | None:
        self.last_error = reason
        if reason == self._reported:
            return None
        self._reported = reason
        return f"{label}: keeping version {self.version}: {reason}"

    def __repr__(self) -> str:
        return f"<PolicyHandle {self.kind} {self.uri} version={self.version!r}>"


def _stat(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__
