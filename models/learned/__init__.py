"""Learned policies: exported MLPs run as numpy forward passes behind the policy interfaces.

- `export`: the versioned `.npz` model file (numpy only).
- `policies`: `LearnedPieceSelector`, `LearnedRateController` and their input tables.
- `registry`: MLflow lookups (`models:/NAME@ALIAS`, `models:/NAME/VERSION`), imported lazily.
- `explore`: an epsilon-random selector wrapper for data generation.
- `traffic`: synthetic business-traffic traces and the rate-controller evaluation.
- `train`: torch training, scikit-learn baselines, MLflow logging (needs the `ml` extra).

`load_learned` is what `models.loader` and `models.deploy.PolicyHandle` call.
"""
from __future__ import annotations

import hashlib

from .export import ModelFileError, load_mlp, loads_mlp
from .policies import build_policy

KIND_NAMES = {"piece selector": "piece-selector", "rate controller": "rate-controller",
              "piece-selector": "piece-selector", "rate-controller": "rate-controller"}


def file_version(data: bytes) -> str:
    """A file: model's version: the first 12 hex digits of its sha256."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:12]


def load_learned(uri: str, kind: str, seed: int = 0, registry_uri: str | None = None, **params):
    """(policy, version) for a `file:PATH` or `models:/...` URI of `kind`.

    Raises `ModelFileError` or `registry.RegistryError` (both ValueErrors, one line).
    """
    kind = KIND_NAMES.get(kind, kind)
    if uri.startswith("file:"):
        path = uri[len("file:"):]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ModelFileError(f"{path}: no such model file") from None
        except IsADirectoryError:
            raise ModelFileError(f"{path}: is a directory, not a model file") from None
        except OSError as e:
            raise ModelFileError(f"{path}: {e.strerror or e}") from None
        version = file_version(data)
        mlp = loads_mlp(data, path)
    else:
        from . import registry

        ref = registry.parse_models_uri(uri)
        version = registry.resolve(uri, registry_uri)
        data = registry.fetch_npz(ref.name, version, registry_uri)
        mlp = loads_mlp(data, f"model '{ref.name}' version {version}")
    return build_policy(mlp, kind, uri, seed=seed, version=version, **params), version


__all__ = ["load_learned", "load_mlp", "loads_mlp", "ModelFileError", "file_version", "KIND_NAMES"]
