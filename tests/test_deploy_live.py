"""A learned piece selector from training to a live supernode, and a version switch while it runs.

Tiny dataset, seconds of training, a real MLflow store in a temporary folder, real processes.
"""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from experiments.cli import main as dfly
from tests.live import nodes

MiB = 1 << 20


@pytest.fixture
def registry(tmp_path, monkeypatch):
    from experiments.datagen import generate_pieces

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "pieces"
    generate_pieces(data, scenarios=4, seed=5, max_hosts=20, epsilon=0.2, log=lambda m: None)
    for seed in (0, 1):          # version 1 @production, version 2 unaliased
        args = ["train", "piece-selector", "--data", str(data), "--epochs", "2", "--seed", str(seed),
                "--register", "piece-selector", "--out", str(tmp_path / f"ps{seed}.npz"), "-q", "--no-baselines"]
        if seed == 0:
            args += ["--alias", "production"]
        assert dfly(args) == 0
    return uri


def test_live_supernode_runs_a_registered_model_and_follows_its_alias(registry, tmp_path):
    files, logs = tmp_path / "files", tmp_path / "logs"
    files.mkdir()
    logs.mkdir()
    data = os.urandom(24 * MiB)
    (files / "f.bin").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    origin = nodes.origin(files, logs)
    started = [origin]
    try:
        sn = nodes.supernode("sn", tmp_path / "sn", logs, "--policy", "models:/piece-selector@production",
                             "--policy-poll-s", "1", "--upload-limit", "16M")
        started.append(sn)
        ds = [nodes.daemon(f"d{i}", tmp_path / f"d{i}", logs, "--supernode", sn.addr) for i in range(2)]
        started += ds
        assert '"version": "1"' in sn.logs()
        url = f"http://{origin.addr}/f.bin"
        procs = [nodes.dfget_start(url, "-O", str(tmp_path / f"o{i}.bin"), "--daemon", d.addr) for i, d in enumerate(ds)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        assert all(hashlib.sha256((tmp_path / f"o{i}.bin").read_bytes()).hexdigest() == sha for i in range(2))
        # promote version 2: the running supernode switches within its poll interval, no restart
        assert dfly(["models", "promote", "piece-selector", "2", "production"]) == 0
        deadline = time.monotonic() + 60
        while "version 1 -> 2" not in sn.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "version 1 -> 2" in sn.logs()
        assert sn.proc.poll() is None
        # and it still serves: a third daemon downloads under version 2
        d3 = nodes.daemon("d3", tmp_path / "d3", logs, "--supernode", sn.addr)
        started.append(d3)
        r = nodes.dfget(url, "-O", str(tmp_path / "o3.bin"), "--daemon", d3.addr)
        assert r.returncode == 0, r.stderr
        assert hashlib.sha256((tmp_path / "o3.bin").read_bytes()).hexdigest() == sha
    finally:
        for n in reversed(started):
            n.stop()


def test_a_node_refuses_to_start_on_a_policy_it_cannot_load(registry, tmp_path):
    for cmd in (["supernode", "--policy", "models:/piece-selector@nope"],
                ["daemon", "--rate-policy", "models:/no-such-model@production", "--supernode", "127.0.0.1:9"]):
        r = nodes.subprocess_run([nodes.PY, "-m", "experiments.cli", *cmd, "--listen", "127.0.0.1:0",
                                  "--data", str(tmp_path / "x")])
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
