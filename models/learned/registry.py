"""The MLflow model registry, seen from the policies: resolve, fetch, list, promote.

Owns: where the registry is (`tracking_uri`: an explicit URI, else `MLFLOW_TRACKING_URI`, else
`sqlite:///mlflow.db` in the current directory), `models:/NAME@ALIAS` and `models:/NAME/VERSION`
resolution to a version number and that version's exported model file, and the alias
operations behind `dfly models`.

Rules kept here:
- mlflow is imported inside the functions, never at module import: it takes seconds, and only
  `models:/` URIs and the training and registry commands need it.
- Aliases, never stages (stages are deprecated in MLflow 3).
- Reading never creates a store: resolving against a SQLite store whose file does not exist is
  an error, not a new empty database.
- Every failure is a `RegistryError` with one line that names the model, alias or version and
  what does exist.
- A registered version carries the exported `.npz` as its artifact `artifacts/<file>.npz`
  (logged by `models.learned.train` as an MLflow pyfunc model); fetching reads only that file's
  bytes and deletes the download.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_MODELS_URI = re.compile(r"models:/(?P<name>[^/@\s]+)(?:@(?P<alias>[^/@\s]+)|/(?P<version>\d+))")


class RegistryError(ValueError):
    """A registry operation that failed; the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def tracking_uri(explicit: str | None = None) -> str:
    """The registry to use: `explicit`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    alias: str | None
    version: str | None


def parse_models_uri(uri: str) -> ModelRef:
    m = _MODELS_URI.fullmatch(uri)
    if not m:
        raise RegistryError(f"{uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    return ModelRef(m["name"], m["alias"], m["version"])


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        return Path(rest) if rest and rest != ":memory:" else None
    return None


def _quiet() -> None:
    # alembic announces every migration of a new SQLite store at INFO; mlflow chats at INFO too
    for name in ("alembic", "mlflow", "mlflow.store", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def client(uri: str | None = None, must_exist: bool = True):
    """An MlflowClient on the registry `uri` (see `tracking_uri`)."""
    uri = tracking_uri(uri)
    path = _sqlite_path(uri)
    if must_exist and path is not None and not path.is_file():
        raise RegistryError(f"no MLflow store at {uri} ({path} does not exist)")
    _quiet()
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RegistryError(f"models:/ URIs need mlflow (pip install 'dragonfly-lab[ml]'): {e}") from None
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _one_line(e: Exception) -> str:
    msg = getattr(e, "message", None) or str(e)
    return " ".join(str(msg).split())[:300]


def _not_found(e: Exception) -> bool:
    code = getattr(e, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND") or "not found" in str(e).lower()


def _versions(c, name: str) -> list:
    safe = name.replace("'", "\\'")
    return sorted(c.search_model_versions(f"name='{safe}'"), key=lambda v: int(v.version))


def resolve(uri: str, registry_uri: str | None = None) -> str:
    """The version number (a string) that a models:/ URI names now."""
    ref = parse_models_uri(uri)
    c = client(registry_uri)
    where = tracking_uri(registry_uri)
    from mlflow.exceptions import MlflowException

    try:
        model = c.get_registered_model(ref.name)
    except MlflowException as e:
        if _not_found(e):
            raise RegistryError(f"unknown model '{ref.name}' in {where}") from None
        raise RegistryError(f"registry {where}: {_one_line(e)}") from None
    except Exception as e:   # a store that is not a store, a server that does not answer
        raise RegistryError(f"registry {where}: {type(e).__name__}: {_one_line(e)}") from None
    if ref.alias is not None:
        aliases = dict(getattr(model, "aliases", {}) or {})
        if ref.alias not in aliases:
            known = ", ".join(f"{a}->{v}" for a, v in sorted(aliases.items())) or "none"
            raise RegistryError(f"model '{ref.name}' has no alias '{ref.alias}' (aliases: {known})")
        return str(aliases[ref.alias])
    try:
        c.get_model_version(ref.name, ref.version)
    except MlflowException as e:
        if _not_found(e):
            known = ", ".join(str(v.version) for v in _versions(c, ref.name)) or "none"
            raise RegistryError(f"model '{ref.name}' has no version {ref.version} (versions: {known})") from None
        raise RegistryError(f"registry {where}: {_one_line(e)}") from None
    return str(ref.version)


def fetch_npz(name: str, version: str, registry_uri: str | None = None) -> bytes:
    """The exported model file that version `version` of `name` carries, as bytes."""
    c = client(registry_uri)
    from mlflow.exceptions import MlflowException

    try:
        mv = c.get_model_version(name, str(version))
        import mlflow.artifacts

        with tempfile.TemporaryDirectory(prefix="dfly-model-") as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=tmp,
                tracking_uri=tracking_uri(registry_uri))
            found = sorted(Path(local).rglob("*.npz"))
            if not found:
                raise RegistryError(f"model '{name}' version {version}: no exported .npz artifact "
                                    f"(source {mv.source})")
            return found[0].read_bytes()
    except RegistryError:
        raise
    except MlflowException as e:
        raise RegistryError(f"model '{name}' version {version}: {_one_line(e)}") from None
    except OSError as e:
        raise RegistryError(f"model '{name}' version {version}: artifact missing or unreadable: "
                            f"{_one_line(e)}") from None
    except Exception as e:
        raise RegistryError(f"model '{name}' version {version}: {type(e).__name__}: {_one_line(e)}") from None


def list_models(registry_uri: str | None = None) -> list[dict]:
    """Every registered model: name, versions (number, run, created), aliases."""
    c = client(registry_uri)
    out = []
    for m in sorted(c.search_registered_models(), key=lambda m: m.name):
        aliases = dict(getattr(m, "aliases", {}) or {})
        versions = []
        for v in _versions(c, m.name):
            versions.append({"version": str(v.version), "run_id": v.run_id,
                             "created_ms": v.creation_timestamp,
                             "aliases": sorted(a for a, n in aliases.items() if str(n) == str(v.version)),
                             "kind": (v.tags or {}).get("dfly.kind", "")})
        out.append({"name": m.name, "aliases": {a: str(n) for a, n in sorted(aliases.items())},
                    "versions": versions})
    return out


def promote(name: str, version: str, alias: str, registry_uri: str | None = None) -> str | None:
    """Point `alias` of `name` at `version`; returns the version it pointed at before (or None)."""
    if not re.fullmatch(r"\d+", str(version)):
        raise RegistryError(f"version must be a number, got {version!r}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", alias) or re.fullmatch(r"[vV]\d+", alias) \
            or alias.lower() == "latest":
        raise RegistryError(f"bad alias {alias!r}: letters, digits, '_' and '-', not 'latest' or v<number>")
    before = None
    try:
        before = resolve(f"models:/{name}@{alias}", registry_uri)
    except RegistryError as e:
        if "unknown model" in str(e):
            raise
    resolve(f"models:/{name}/{version}", registry_uri)     # the version exists
    c = client(registry_uri)
    try:
        c.set_registered_model_alias(name, alias, str(version))
    except Exception as e:
        raise RegistryError(f"cannot set alias '{alias}' of '{name}': {_one_line(e)}") from None
    return before
