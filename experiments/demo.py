"""`dfly demo`: the whole platform in one command, in a few minutes on two cores.

Steps, each a real run of the project's own commands in a child process (so the demo proves
what a user would type works), each with a banner and a one-line failure that names it:
1. simulate a scaled Double 11 (two IDCs), the traditional way and P2P;
2. generate training traces (randomized simulated scenarios, synthetic business traffic);
3. train the piece selector and the rate controller, register both in the local MLflow store
   with the alias `production`;
4. start a live origin, a supernode running `models:/piece-selector@production` and daemons
   running `models:/rate-controller@production` on loopback, distribute a real file, verify it;
5. write `reports/demo/report.md` and print a summary table and the MLflow UI command.
Everything it writes goes under `runs/demo/` (and the MLflow store, `mlflow.db` by default).
"""
from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
SIM_SETS = ["--set", "hosts.0.count=700", "--set", "hosts.1.count=300", "--set", "file.size=1GB"]
LIVE_DAEMONS = 4
LIVE_SIZE = 64 << 20


class StepFailed(Exception):
    pass


class Demo:
    def __init__(self, root: Path, tracking_uri: str, quick: bool = False):
        self.root = root
        self.tracking_uri = tracking_uri
        self.quick = quick
        self.env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, PYTHONUNBUFFERED="1")
        self.results: dict = {}
        self.step_no = 0
        self.procs: list[subprocess.Popen] = []

    # ---- plumbing ----------------------------------------------------------------------
    def banner(self, title: str) -> None:
        self.step_no += 1
        self.t0 = time.monotonic()
        print(f"\n== step {self.step_no}/5: {title}", file=sys.stderr, flush=True)

    def done(self) -> None:
        print(f"   done in {time.monotonic() - self.t0:.1f} s", file=sys.stderr, flush=True)

    def run(self, args: list[str], what: str) -> str:
        print(f"   $ {' '.join(a if ' ' not in a else repr(a) for a in args)}", file=sys.stderr, flush=True)
        proc = subprocess.run(args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
            raise StepFailed(f"{what}: exit {proc.returncode}: {last}")
        return proc.stdout

    def start(self, args: list[str], name: str) -> dict:
        log = open(self.root / "logs" / f"{name}.log", "ab")
        p = subprocess.Popen(args, env=self.env, stdout=subprocess.PIPE, stderr=log)
        self.procs.append(p)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([p.stdout], [], [], 0.2)
            if ready:
                line = p.stdout.readline()
                if line.startswith(b"{"):
                    return json.loads(line)
                if not line:
                    break
            if p.poll() is not None:
                break
        raise StepFailed(f"{name} did not start; see {self.root / 'logs' / (name + '.log')}")

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()

    # ---- steps -------------------------------------------------------------------------
    def simulate(self) -> None:
        self.banner("simulate a scaled Double 11: 1,000 hosts in two IDCs, 1 GB, traditional vs P2P")
        scenario = str(Path(__file__).parent / "scenarios" / "double11.toml")
        for mode in ("source", "p2p"):
            out = self.run([PY, "-m", "experiments.cli", "sim", "run", scenario, *SIM_SETS, "--set", f"run.mode={mode}",
                            "--json", "--no-progress"], f"dfly sim run ({mode})")
            self.results[f"sim_{mode}"] = json.loads(out)
            s = self.results[f"sim_{mode}"]
            print(f"   {mode:6s}: every host done in {s['completion_s']['max']:.1f} s "
                  f"(bound {s['lower_bound_s']:.1f} s), origin sent {s['source_egress_bytes'] / 1e9:.2f} GB",
                  file=sys.stderr)
        self.done()

    def traces(self) -> None:
        self.banner("generate training traces (randomized scenarios with exploration, business traffic)")
        n = "4" if self.quick else "8"
        self.run([PY, "-m", "experiments.datagen", "pieces", "--out", str(self.root / "data" / "pieces"),
                  "--scenarios", n, "--max-hosts", "60", "--workers", "2"], "trace generation")
        self.run([PY, "-m", "experiments.datagen", "traffic", "--out", str(self.root / "data" / "traffic"),
                  "--files", "4", "--hosts", "8", "--intervals", "900"], "traffic generation")
        self.done()

    def train(self) -> None:
        self.banner("train both policies by gradient descent, register them as @production in MLflow")
        epochs = "3" if self.quick else "10"
        for kind, data in (("piece-selector", "pieces"), ("rate-controller", "traffic")):
            out = self.run([PY, "-m", "experiments.cli", "train", kind, "--data", str(self.root / "data" / data),
                            "--register", kind, "--alias", "production", "--epochs", epochs,
                            "--out", str(self.root / "models" / f"{kind}.npz"), "--json"], f"dfly train {kind}")
            self.results[f"train_{kind}"] = json.loads(out.strip().splitlines()[-1])
        self.done()

    def live(self) -> None:
        self.banner(f"live: origin, a supernode and {LIVE_DAEMONS} daemons on loopback, running the registered models")
        files = self.root / "files"
        files.mkdir(parents=True, exist_ok=True)
        data = os.urandom(LIVE_SIZE)
        (files / "payload.bin").write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        try:
            origin = self.start([PY, "-m", "experiments.origin", str(files), "--listen", "127.0.0.1:0"], "origin")
            sn = self.start([PY, "-m", "experiments.cli", "supernode", "--listen", "127.0.0.1:0",
                             "--data", str(self.root / "supernode"), "--policy", "models:/piece-selector@production",
                             "--upload-limit", "32M"], "supernode")
            daemons = [self.start([PY, "-m", "experiments.cli", "daemon", "--listen", "127.0.0.1:0",
                                   "--data", str(self.root / f"daemon{i}"), "--supernode", sn["listening"],
                                   "--rate-policy", "models:/rate-controller@production"], f"daemon{i}")
                       for i in range(LIVE_DAEMONS)]
            url = f"http://{origin['listening']}/payload.bin"
            t0 = time.monotonic()
            procs = [subprocess.Popen([PY, "-m", "dfnet.dfget", url, "-O", str(self.root / f"out{i}.bin"),
                                       "--daemon", d["listening"], "--digest", f"sha256:{sha}", "-q"],
                                      env=self.env, stderr=subprocess.PIPE, text=True)
                     for i, d in enumerate(daemons)]
            for p in procs:
                _, err = p.communicate(timeout=300)
                if p.returncode:
                    raise StepFailed(f"dfget: exit {p.returncode}: {err.strip()}")
            took = time.monotonic() - t0
            import urllib.request
            with urllib.request.urlopen(f"http://{origin['listening']}/_stats", timeout=10) as r:
                sent = json.loads(r.read())["bytes_sent"]
            ok = all(hashlib.sha256((self.root / f"out{i}.bin").read_bytes()).hexdigest() == sha
                     for i in range(LIVE_DAEMONS))
            if not ok:
                raise StepFailed("a live output does not match the origin's sha256")
            self.results["live"] = {"daemons": LIVE_DAEMONS, "bytes": LIVE_SIZE, "seconds": round(took, 2),
                                    "origin_x_file": round(sent / LIVE_SIZE, 3), "verified": ok}
            print(f"   {LIVE_DAEMONS} daemons got {LIVE_SIZE >> 20} MiB in {took:.1f} s, every copy verified; "
                  f"origin sent {sent / LIVE_SIZE:.2f} x the file", file=sys.stderr)
        finally:
            self.stop_all()
        self.done()

    def report(self) -> Path:
        self.banner("report")
        src, p2p = self.results["sim_source"], self.results["sim_p2p"]
        ps = self.results["train_piece-selector"]
        rc = self.results["train_rate-controller"]
        live = self.results["live"]
        rows = [
            ("simulated Double 11 (1,000 hosts, 1 GB), traditional", f"{src['completion_s']['max']:.1f} s",
             f"origin {src['source_egress_bytes'] / 1e9:.1f} GB"),
            ("simulated Double 11, P2P (heuristic:d2)", f"{p2p['completion_s']['max']:.1f} s",
             f"origin {p2p['source_egress_bytes'] / 1e9:.2f} GB, bound {p2p['lower_bound_s']:.1f} s"),
            ("piece-selector, registered", f"version {ps.get('version', '?')}", _metrics(ps)),
            ("rate-controller, registered", f"version {rc.get('version', '?')}", _metrics(rc)),
            (f"live: {live['daemons']} daemons, {live['bytes'] >> 20} MiB", f"{live['seconds']} s",
             f"verified, origin {live['origin_x_file']} x the file"),
        ]
        lines = ["# dfly demo", "", "| step | result | detail |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        out = Path("reports") / "demo"
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text("\n".join(lines) + "\n")
        width = max(len(r[0]) for r in rows)
        print("", file=sys.stderr)
        for a, b, c in rows:
            print(f"{a:<{width}}  {b:>14}  {c}")
        print(f"\nreport: {out / 'report.md'}")
        print(f"MLflow: mlflow ui --backend-store-uri {self.tracking_uri}")
        self.done()
        return out / "report.md"


def _metrics(result: dict) -> str:
    """The validation line of each model in the training result's table (MLP first)."""
    parts = []
    for row in result.get("table") or []:
        vals = [f"{k[4:]} {v:.3g}" for k, v in row.items() if k.startswith("val_") and isinstance(v, (int, float))]
        if vals:
            parts.append(f"{row.get('model', '?')}: {', '.join(vals[:2])}")
    return "; ".join(parts[:3]) or "trained"


def main(quick: bool = False) -> int:
    from models.learned.registry import tracking_uri
    root = Path("runs") / "demo"
    (root / "logs").mkdir(parents=True, exist_ok=True)
    demo = Demo(root, tracking_uri(), quick=quick)
    steps = (demo.simulate, demo.traces, demo.train, demo.live, demo.report)
    try:
        for step in steps:
            step()
    except StepFailed as e:
        print(f"dfly demo: step {demo.step_no} failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dfly demo: interrupted", file=sys.stderr)
        return 130
    finally:
        demo.stop_all()
    return 0
