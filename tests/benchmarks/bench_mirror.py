"""Registry mirror benchmark (issue 4): 8 pulls of one image at once, through daemons vs direct.

    .venv/bin/python tests/benchmarks/bench_mirror.py [--layers 5] [--layer-mib 100] [--hosts 8]
                                                      [--registry-mbps 0]

Builds a single-platform OCI image (`--layers` gzip layers of `--layer-mib` MiB of random
data), pushes it to Debian's docker-registry on loopback, and puts the counting front of
tests/live/registry.py before it. Then, in the same run:
1. `direct`: `--hosts` concurrent `skopeo copy docker://FRONT/repo:v1 dir:OUT` from the registry;
2. `mirror`: a supernode and `--hosts` daemons, one concurrent `skopeo copy` through each
   daemon's mirror (registries.conf forces it).
Reports the wall time until the last copy finished and the registry's egress (bytes the
front sent) in each case, as one JSON object. Every process shares this machine's cores, and
loopback has no bandwidth limit of its own; `--registry-mbps` caps the registry's uplink (the
front paces everything it sends), as a registry's NIC or a cloud registry's quota would.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.live import nodes  # noqa: E402
from tests.live import registry as R  # noqa: E402


def copies(front: str, outs: list[Path], confs: list[Path | None]) -> float:
    t0 = time.monotonic()
    procs = []
    for out, conf in zip(outs, confs):
        flags = ["--insecure-policy"] + (["--registries-conf", str(conf)] if conf else [])
        procs.append(subprocess.Popen([R.SKOPEO, *flags, "copy", "--src-tls-verify=false", "--override-os", "linux",
                                       "--override-arch", "amd64", f"docker://{front}/repo:v1", f"dir:{out}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode:
            raise SystemExit(f"skopeo failed: {err.strip()[-500:]}")
    return time.monotonic() - t0


def egress(front: nodes.Node, since: int) -> int:
    return sum(r["bytes"] for r in R.front_stats(front)["requests"][since:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--layer-mib", type=int, default=100)
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--registry-mbps", type=float, default=0.0, help="registry uplink in Mbit/s; 0: no cap")
    a = ap.parse_args()
    if R.MISSING:
        raise SystemExit(f"not installed: {', '.join(R.MISSING)}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    logs = tmp / "logs"
    logs.mkdir()
    started: list = []
    reg = None
    try:
        t0 = time.monotonic()
        image = R.build_image(tmp / "image", layer_sizes=[a.layer_mib << 20] * a.layers, platforms=("linux/amd64",))
        blobs = image["manifests"]["linux/amd64"]["blobs"]
        size = sum(blobs.values())
        reg = R.Registry(tmp / "registry")
        r = R.skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{tmp / 'image'}:v1",
                     f"docker://{reg.addr}/repo:v1", timeout=3600)
        if r.returncode:
            raise SystemExit(f"push failed: {r.stderr.strip()[-500:]}")
        shutil.rmtree(tmp / "image")
        front = R.front(reg.addr, logs, rate=a.registry_mbps * 1e6 / 8)
        started.append(front)
        setup_s = time.monotonic() - t0

        mark = len(R.front_stats(front)["requests"])
        outs = [tmp / f"direct{i}" for i in range(a.hosts)]
        direct_s = copies(front.addr, outs, [None] * a.hosts)
        direct_egress = egress(front, mark)
        for o in outs:
            shutil.rmtree(o)

        sn = nodes.supernode("sn", tmp / "sn", logs)
        started.append(sn)
        daemons = []
        for i in range(a.hosts):
            d = nodes.daemon(f"d{i}", tmp / f"d{i}", logs, "--supernode", sn.addr, "--registry-mirror",
                             f"http://{front.addr}", "--proxy-listen", "127.0.0.1:0")
            started.append(d)
            daemons.append(d)
        confs = [R.registries_conf(tmp / f"d{i}.conf", {front.addr: d.info["proxy"]}) for i, d in enumerate(daemons)]
        mark = len(R.front_stats(front)["requests"])
        outs = [tmp / f"mirror{i}" for i in range(a.hosts)]
        mirror_s = copies(front.addr, outs, confs)
        mirror_egress = egress(front, mark)
        print(json.dumps({
            "image_bytes": size, "layers": a.layers, "hosts": a.hosts, "registry_mbps": a.registry_mbps or None, "setup_s": round(setup_s, 1),
            "direct": {"seconds": round(direct_s, 2), "registry_egress_bytes": direct_egress,
                       "egress_x_image": round(direct_egress / size, 3)},
            "mirror": {"seconds": round(mirror_s, 2), "registry_egress_bytes": mirror_egress,
                       "egress_x_image": round(mirror_egress / size, 3)},
            "mirror_over_direct_time": round(mirror_s / direct_s, 3)}))
    finally:
        for n in reversed(started):
            n.stop()
        if reg is not None:
            reg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
