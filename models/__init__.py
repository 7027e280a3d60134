"""Policies for the scheduling brain: which piece a peer fetches from whom (`PieceSelector`) and
how fast a host's P2P traffic may go (`RateController`). The interfaces and the observations they
consume live in `models.interfaces`; hand-written baselines in `models.heuristics`; a policy URI
(`heuristic:d2`, `models:/NAME@ALIAS`, `file:PATH`) becomes a policy through `models.loader`
alone. This package imports neither `dfnet` nor `dfsim`, and its top level needs only numpy, so a
daemon can load a policy without paying for torch or mlflow.
"""
from models.interfaces import (
    COL,
    FEATURE_SCHEMA_VERSION,
    FEATURES,
    N_FEATURES,
    CandidateBatch,
    HostLoad,
    Limits,
    PeerView,
    PieceSelector,
    RateController,
    TaskLoad,
)
from models.loader import PolicyError, load_piece_selector, load_rate_controller

__all__ = [
    "COL",
    "FEATURE_SCHEMA_VERSION",
    "FEATURES",
    "N_FEATURES",
    "CandidateBatch",
    "HostLoad",
    "Limits",
    "PeerView",
    "PieceSelector",
    "RateController",
    "TaskLoad",
    "PolicyError",
    "load_piece_selector",
    "load_rate_controller",
]
