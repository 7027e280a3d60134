"""Policy URIs to policy objects: the one place a name becomes a policy.

Owns: the tables of known policies, URI parsing, and the upload slot defaults a selector brings.

Rules kept here:
- One table per interface (URI -> class); a policy is known exactly when it is in its table.
- Schemes: `heuristic:NAME`, `models:/NAME@ALIAS`, `models:/NAME/VERSION` (MLflow registered
  models) and `file:PATH` (an exported model file). Learned schemes are recognised now and
  loaded by `_load_learned` alone, the function the learned-policy work replaces.
- Every failure is a `PolicyError` with a one-line message that names the URI and the known
  policies, so a CLI can print it as is.
- Imports stay light (numpy only): daemons resolve their policies at start-up.
"""
from __future__ import annotations

import re

from models.heuristics.pieces import PIECE_SELECTORS
from models.heuristics.rates import RATE_CONTROLLERS
from models.interfaces import PieceSelector, RateController

PIECE_SELECTOR_TABLE: dict[str, type] = {cls.name: cls for cls in PIECE_SELECTORS}
RATE_CONTROLLER_TABLE: dict[str, type] = {cls.name: cls for cls in RATE_CONTROLLERS}
KNOWN_PIECE_SELECTORS: tuple[str, ...] = tuple(PIECE_SELECTOR_TABLE)
KNOWN_RATE_CONTROLLERS: tuple[str, ...] = tuple(RATE_CONTROLLER_TABLE)

# Dragonfly 2's upload concurrency limits, for selectors that bring none of their own.
DEFAULT_UPLOAD_SLOTS = 200
DEFAULT_SEED_UPLOAD_SLOTS = 2000

_LEARNED = re.compile(r"models:/[^/@\s]+(@[^/@\s]+|/\d+)|file:.+")


class PolicyError(ValueError):
    """A policy URI that cannot be resolved; the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


def load_piece_selector(uri: str, seed: int = 0) -> PieceSelector:
    """The PieceSelector named by `uri`, with its own generator seeded by `seed`."""
    return _resolve(uri, PIECE_SELECTOR_TABLE, "piece selector", seed)


def load_rate_controller(uri: str, seed: int = 0, **params) -> RateController:
    """The RateController named by `uri`; `params` (e.g. download_bps, upload_bps) go to it."""
    return _resolve(uri, RATE_CONTROLLER_TABLE, "rate controller", seed, **params)


def resolve_upload_slots(selector: object) -> tuple[int, int]:
    """(upload_slots, seed_upload_slots) the selector brings, else Dragonfly 2's defaults."""
    return (
        int(getattr(selector, "upload_slots", DEFAULT_UPLOAD_SLOTS)),
        int(getattr(selector, "seed_upload_slots", DEFAULT_SEED_UPLOAD_SLOTS)),
    )


def _resolve(uri: str, table: dict[str, type], kind: str, seed: int, **params):
    if isinstance(uri, str):
        cls = table.get(uri)
        if cls is not None:
            try:
                return cls(seed=seed, **params)
            except TypeError as error:  # an unknown parameter: the caller's mistake, say so
                raise PolicyError(f"{kind} {uri!r}: {error}") from error
        if _LEARNED.fullmatch(uri):
            return _load_learned(uri, kind, seed, tuple(table), **params)
    known = ", ".join(table)
    if isinstance(uri, str) and uri.startswith("heuristic:"):
        raise PolicyError(f"unknown {kind} {uri!r}; known: {known}")
    raise PolicyError(
        f"cannot resolve {kind} {uri!r}: expected heuristic:NAME, models:/NAME@ALIAS, "
        f"models:/NAME/VERSION or file:PATH; known: {known}"
    )


# --- learned policies --------------------------------------------------------------------
# file:PATH reads an exported model file; models:/NAME@ALIAS and models:/NAME/VERSION ask the
# MLflow registry ($MLFLOW_TRACKING_URI, default sqlite:///mlflow.db), importing mlflow only
# then. The model's kind and feature schema must match the running code's. Any failure (a
# missing or corrupted file, an unknown model, alias or version, another kind, another schema)
# is one PolicyError line. `models.deploy.PolicyHandle` wraps this for nodes that reload.
def _load_learned(uri: str, kind: str, seed: int, known: tuple[str, ...], **params):
    from models.learned import load_learned

    try:
        policy, _version = load_learned(uri, kind, seed, **params)
    except ValueError as error:     # ModelFileError, RegistryError, a bad parameter
        raise PolicyError(f"cannot load {kind} {uri!r}: {error}") from None
    return policy
