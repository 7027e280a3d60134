"""Node processes inside namespaces: start, wait for the announce line, measure, stop.

Owns the testbed's child processes (origin, supernodes, daemons).

Rules kept here:
- Each node runs as `ip netns exec NS python -m ...`; `ip netns exec` execs the command, so
  the pid we hold is the node's own and /proc/<pid> is its CPU and memory.
- Nodes run in their own session: a Ctrl-C on the terminal reaches the orchestrator only, which
  then stops them in order (and the namespace sweep kills anything that survived).
- Every node prints one JSON line when it listens; `wait_ready` reads it with a deadline, and a
  node that dies first is an error quoting the end of its log (logs are files in the run dir).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class NodeError(RuntimeError):
    pass


class NodeProcess:
    def __init__(self, name: str, ns: str, argv: list[str], log_dir: Path):
        self.name = name
        self.ns = ns
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *argv], stdout=subprocess.PIPE,
                                     stderr=self._log, stdin=subprocess.DEVNULL, env=env,
                                     start_new_session=True)
        self.info: dict = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, deadline: float) -> dict:
        out = self.proc.stdout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([out], [], [], 0.2)
            if ready:
                line = out.readline()
                if line.startswith(b"{"):
                    self.info = json.loads(line)
                    return self.info
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        raise NodeError(f"{self.name} did not start: {self.log_tail()}")

    def log_tail(self, n: int = 600) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace")[-n:].splitlines())
        except OSError:
            return "(no log)"

    def cpu_s(self) -> float:
        """User + system CPU seconds so far (0 once the process is gone)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def peak_rss_bytes(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a host that crashes or leaves, with no goodbye to anyone."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()
