"""Real node processes for the live tests: start, learn the port, stop, read stats.

Every node is a child process (`python -m experiments.cli ...` or the test origin) that prints
one JSON line when it listens; `Node` reads it with a deadline and kills the whole process on
`stop()`. Logs go to files under the test's tmp folder so a failure can show them.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


class Node:
    def __init__(self, name: str, cmd: list[str], log_dir: Path, timeout: float = 20.0):
        self.name = name
        self.cmd = cmd
        self.log_path = log_dir / f"{name}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.info = self._read_announce(timeout)
        self.addr = self.info["listening"]

    def _read_announce(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                line = fd.readline()
                if line.startswith(b"{"):
                    return json.loads(line)
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {self.log_path.read_text()[-2000:]}")

    def get_json(self, path: str, addr: str | None = None) -> dict:
        with urllib.request.urlopen(f"http://{addr or self.addr}{path}", timeout=10) as r:
            return json.loads(r.read())

    def get_text(self, path: str, addr: str | None = None) -> str:
        with urllib.request.urlopen(f"http://{addr or self.addr}{path}", timeout=10) as r:
            return r.read().decode()

    def post_json(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"http://{self.addr}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def origin(root: Path, log_dir: Path) -> Node:
    return Node("origin", [PY, "-m", "experiments.origin", str(root)], log_dir)


def supernode(name: str, data: Path, log_dir: Path, *extra: str) -> Node:
    return Node(name, [PY, "-m", "experiments.cli", "supernode", "--listen", "127.0.0.1:0",
                       "--data", str(data), *extra], log_dir)


def daemon(name: str, data: Path, log_dir: Path, *extra: str) -> Node:
    return Node(name, [PY, "-m", "experiments.cli", "daemon", "--listen", "127.0.0.1:0",
                       "--data", str(data), *extra], log_dir)


def dfget(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "dfnet.dfget", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def dfget_start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "dfnet.dfget", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def subprocess_run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """A one-shot command from the repo root (refusals, usage errors)."""
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
