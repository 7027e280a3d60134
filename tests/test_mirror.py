"""The registry mirror end to end: a real registry, real skopeo, real daemons and supernodes.

Debian's docker-registry serves a multi-platform OCI image the test builds and pushes with
skopeo; a counting front (tests/live/registry.py) sits between the registry and everyone,
so the tests see every byte that left the registry. skopeo pulls through daemons' mirrors,
forced by a registries.conf `[[registry]]` entry (ANCHORS: a plain mirror falls back
silently). Skipped, with the reason, only when skopeo or docker-registry is not installed
(`.ci/run` installs both).
"""
from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dfnet.daemon.mirror import parse_range, source_headers
from dfnet.oci import OCIError, parse_image_ref, pick_platform
from tests.live import nodes
from tests.live import registry as R

needs_tools = pytest.mark.skipif(bool(R.MISSING), reason=f"not installed: {', '.join(R.MISSING)} "
                                "(apt-get install --no-install-recommends docker-registry skopeo)")
PLAT = "linux/amd64"
ALICE, BOB = ("alice", "alice-pw-Q7x"), ("bob", "bob-pw-Z9k")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The image (built once), an open registry with it pushed as repo:v1, repo2:v1 and
    repo-broken:v1 (one layer's link deleted), and the counting front."""
    root = tmp_path_factory.mktemp("mirror")
    logs = root / "logs"
    logs.mkdir()
    image = R.build_image(root / "image")
    reg = R.Registry(root / "registry")
    front = None
    try:
        for repo in ("repo", "repo2", "repo-broken"):
            r = R.skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{root / 'image'}:v1",
                         f"docker://{reg.addr}/{repo}:v1")
            assert r.returncode == 0, r.stderr
        broken = _own_layer(image)
        req = urllib.request.Request(f"http://{reg.addr}/v2/repo-broken/blobs/{broken}", method="DELETE")
        assert urllib.request.urlopen(req, timeout=10).status == 202
        front = R.front(reg.addr, logs)
        yield {"root": root, "logs": logs, "image": image, "registry": reg, "front": front, "broken": broken,
               "blobs": R.layout_blobs(root / "image")}
    finally:
        if front is not None:
            front.stop()
        reg.stop()


@pytest.fixture
def nodeset(world, tmp_path):
    """Start supernodes and daemons for one test; all stopped at the end."""
    started: list[nodes.Node] = []

    class Nodes:
        def supernode(self, name="sn"):
            n = nodes.supernode(name, tmp_path / name, world["logs"])
            started.append(n)
            return n

        def daemon(self, name, sn, upstream):
            n = nodes.daemon(name, tmp_path / name, world["logs"], "--log-level", "debug", "--supernode", sn.addr,
                             "--registry-mirror", f"http://{upstream}", "--proxy-listen", "127.0.0.1:0")
            started.append(n)
            return n

    yield Nodes()
    for n in reversed(started):
        n.stop()


def _own_layer(image) -> str:
    """A layer only the amd64 image has (not the shared base)."""
    m = image["manifests"][PLAT]
    return [d for d in m["blobs"] if d != m["config"]][-1]


def _pull(registry: str, daemon: nodes.Node, out: Path, repo: str = "repo", creds=None, start=False):
    """skopeo copy of REGISTRY/REPO:v1 through `daemon`'s mirror, forced by registries.conf.

    With `creds`, skopeo is pointed at the mirror itself instead (`docker://MIRROR/REPO:v1`,
    the mirror's default upstream being the registry): skopeo 1.9 does not send `--src-creds`
    to a location that registries.conf rewrote (it sends empty Basic credentials there)."""
    conf = None
    if creds:
        registry = daemon.info["proxy"]
    else:
        conf = R.registries_conf(out.parent / f"{out.name}.conf", {registry: daemon.info["proxy"]})
    args = ["copy", "--src-tls-verify=false", "--override-os", "linux", "--override-arch", "amd64",
            *(["--src-creds", f"{creds[0]}:{creds[1]}"] if creds else []),
            f"docker://{registry}/{repo}:v1", f"oci:{out}:v1"]
    if start:
        return subprocess.Popen([R.SKOPEO, "--insecure-policy", "--registries-conf", str(conf), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return R.skopeo(*args, conf=conf)


def _assert_same_image(world, out: Path) -> None:
    m = world["image"]["manifests"][PLAT]
    got = R.layout_blobs(out)
    for digest in [m["digest"], *m["blobs"]]:
        assert got.get(digest) == world["blobs"][digest], f"{digest} differs from the pushed image"
    assert json.loads((out / "index.json").read_text())["manifests"][0]["digest"] == m["digest"]


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else "")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _get(url: str, headers=None, method="GET", proxy=None):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://{proxy}"} if proxy else {}))
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@needs_tools
def test_two_daemons_one_registry_fetch_per_blob(world, nodeset, tmp_path):
    front, image = world["front"], world["image"]
    amd = image["manifests"][PLAT]
    sn = nodeset.supernode()
    d1, d2 = nodeset.daemon("d1", sn, front.addr), nodeset.daemon("d2", sn, front.addr)
    before = R.front_stats(front)["requests"][:]
    pulls = [_pull(front.addr, d, tmp_path / f"out{i}", start=True) for i, d in enumerate((d1, d2), 1)]
    for p in pulls:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for i in (1, 2):
        _assert_same_image(world, tmp_path / f"out{i}")
    reqs = R.front_stats(front)["requests"][len(before):]
    for digest, size in amd["blobs"].items():
        gets = [r for r in reqs if r["method"] == "GET" and r["path"].endswith(digest)]
        assert sum(r["bytes"] for r in gets) == size, f"{digest}: the registry sent it {len(gets)} times"
    manifest_gets = [r for r in reqs if "/manifests/" in r["path"]]
    assert manifest_gets and all(sum(1 for k, _ in r["headers"] if k.lower() == "accept") >= 2
                                 for r in manifest_gets), "every Accept line reaches the registry"
    for d in (d1, d2):
        m = d.get_text("/metrics")
        assert _metric(m, "dragonfly_dfdaemon_proxy_request_total", type="p2p") >= len(amd["blobs"])
        assert _metric(m, "dragonfly_dfdaemon_proxy_request_total", type="passthrough") >= 2
        assert _metric(m, "dragonfly_dfdaemon_proxy_request_bytes_total", type="p2p") >= sum(amd["blobs"].values())
        assert _metric(m, "dragonfly_dfdaemon_proxy_request_failure_total") == 0

    # the same layers through another repository: one task per digest, nothing from the registry
    d3 = nodeset.daemon("d3", sn, front.addr)
    mark = len(R.front_stats(front)["requests"])
    r = _pull(front.addr, d3, tmp_path / "out3", repo="repo2")
    assert r.returncode == 0, r.stderr
    _assert_same_image(world, tmp_path / "out3")
    assert R.blob_bytes({"requests": R.front_stats(front)["requests"][mark:]}, amd["blobs"]) == 0

    # ranges, HEAD, the per-request registry header, and plain-proxy requests
    proxy = d1.info["proxy"]
    layer = _own_layer(image)
    body = world["blobs"][layer]
    url = f"http://{proxy}/v2/repo/blobs/{layer}"
    status, headers, got = _get(url, {"Range": "bytes=10-19"})
    assert (status, headers["Content-Range"], got) == (206, f"bytes 10-19/{len(body)}", body[10:20])
    assert headers["Docker-Content-Digest"] == layer
    status, _, got = _get(url, {"Range": "bytes=0-1,5-6"})
    assert status == 200 and got == body                 # several ranges: the whole blob
    status, headers, _ = _get(url, {"Range": f"bytes={len(body)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(body)}"
    accept = "application/vnd.oci.image.manifest.v1+json"
    status, headers, got = _get(f"http://{proxy}/v2/repo/manifests/{amd['digest']}", {"Accept": accept}, "HEAD")
    assert status == 200 and got == b"" and headers["Docker-Content-Digest"] == amd["digest"]
    assert int(headers["Content-Length"]) == len(world["blobs"][amd["digest"]])
    mark = len(R.front_stats(front)["requests"])
    status, headers, got = _get(f"http://{proxy}/v2/repo/manifests/{amd['digest']}",
                                {"Accept": accept, "X-Dragonfly-Registry": f"http://{world['registry'].addr}"})
    assert status == 200 and got == world["blobs"][amd["digest"]]
    assert len(R.front_stats(front)["requests"]) == mark      # went to the registry named, not the front
    status, _, got = _get(f"http://{front.addr}/v2/repo/manifests/{amd['digest']}", {"Accept": accept}, proxy=proxy)
    assert status == 200 and got == world["blobs"][amd["digest"]]


@needs_tools
def test_preheat_makes_the_first_pull_p2p(world, nodeset, tmp_path):
    front, amd = world["front"], world["image"]["manifests"][PLAT]
    sn = nodeset.supernode()
    cmd = [nodes.PY, "-m", "experiments.cli", "preheat", f"docker://{front.addr}/repo:v1", "--supernode", sn.addr]
    r = subprocess.run(cmd, cwd=nodes.ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["manifest"] == amd["digest"]
    assert {b["digest"]: b["bytes"] for b in summary["blobs"]} == amd["blobs"]
    assert summary["bytes"] == sum(amd["blobs"].values()) and "warmed" in r.stderr
    d1 = nodeset.daemon("d1", sn, front.addr)
    mark = len(R.front_stats(front)["requests"])
    r = _pull(front.addr, d1, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    _assert_same_image(world, tmp_path / "out")
    assert R.blob_bytes({"requests": R.front_stats(front)["requests"][mark:]}, amd["blobs"]) == 0
    # bad input: one line and a code
    bad = subprocess.run(cmd[:4] + ["docker://nohost"], cwd=nodes.ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    missing = subprocess.run(cmd[:4] + [f"docker://{front.addr}/repo:nope", "--supernode", sn.addr],
                             cwd=nodes.ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 8 and "MANIFEST_UNKNOWN" in missing.stderr, missing.stderr


@needs_tools
def test_blob_redirects_are_followed_by_the_fetcher(world, nodeset, tmp_path):
    """A registry that redirects a blob GET to storage (here its own address, another origin):
    whoever goes back to source follows it, the blob is fetched once for both daemons, and
    skopeo sees only the blob."""
    amd, layer = world["image"]["manifests"][PLAT], _own_layer(world["image"])
    front = R.front(world["registry"].addr, world["logs"], "front-redirect")
    try:
        front.post_json("/_front/faults", {"redirect": [layer]})
        sn = nodeset.supernode()
        d1, d2 = nodeset.daemon("d1", sn, front.addr), nodeset.daemon("d2", sn, front.addr)
        for i, d in enumerate((d1, d2)):
            r = _pull(front.addr, d, tmp_path / f"out{i}")
            assert r.returncode == 0, r.stderr
            _assert_same_image(world, tmp_path / f"out{i}")
        gets = [r for r in R.front_stats(front)["requests"] if r["method"] == "GET" and r["path"].endswith(layer)]
        assert [(r["status"], r["bytes"]) for r in gets] == [(307, 0)], gets
        for d in (d1, d2):
            m = d.get_text("/metrics")
            assert _metric(m, "dragonfly_dfdaemon_proxy_request_total", type="p2p") >= len(amd["blobs"])
            assert _metric(m, "dragonfly_dfdaemon_proxy_request_failure_total") == 0
    finally:
        front.stop()


@needs_tools
def test_auth_registry_credentials_stay_with_their_owner(world, nodeset, tmp_path):
    reg = R.Registry(tmp_path / "authreg", users=dict([ALICE, BOB]))
    try:
        r = R.skopeo("copy", "--all", "--dest-tls-verify=false", "--dest-creds", ":".join(ALICE),
                     f"oci:{world['root'] / 'image'}:v1", f"docker://{reg.addr}/repo:v1")
        assert r.returncode == 0, r.stderr
        sn = nodeset.supernode()
        d1, d2, d3 = (nodeset.daemon(n, sn, reg.addr) for n in ("d1", "d2", "d3"))
        r = _pull(reg.addr, d1, tmp_path / "out1", creds=ALICE)
        assert r.returncode == 0, r.stderr
        r = _pull(reg.addr, d2, tmp_path / "out2", creds=BOB)
        assert r.returncode == 0, r.stderr
        for out in ("out1", "out2"):
            _assert_same_image(world, tmp_path / out)
        assert _metric(d2.get_text("/metrics"), "dragonfly_dfdaemon_proxy_request_total", type="p2p") >= 4
        # without credentials: the registry's 401 (and its challenge) come back, from a daemon
        # that never saw the blob and from the one that holds it
        r = _pull(reg.addr, d3, tmp_path / "out3")
        assert r.returncode != 0
        layer = _own_layer(world["image"])
        for d in (d3, d1):
            status, headers, _ = _get(f"http://{d.info['proxy']}/v2/repo/blobs/{layer}")
            assert status == 401 and "Basic" in headers.get("WWW-Authenticate", ""), (d.name, status)
        secrets = {name: (pw, base64.b64encode(f"{name}:{pw}".encode()).decode()) for name, pw in (ALICE, BOB)}
        for d, foreign in ((d1, "bob"), (d2, "alice"), (d3, "alice"), (d3, "bob")):
            text = d.logs() + d.get_text("/metrics")
            assert not any(s in text for s in secrets[foreign]), f"{foreign}'s credentials reached {d.name}"
        text = sn.logs() + sn.get_text("/metrics")
        assert not any(s in text for pair in secrets.values() for s in pair)
    finally:
        reg.stop()


@needs_tools
def test_failures_pass_errors_and_cache_nothing_wrong(world, nodeset, tmp_path):
    image, amd = world["image"], world["image"]["manifests"][PLAT]
    front = R.front(world["registry"].addr, world["logs"], "front-faulty")
    try:
        sn = nodeset.supernode()
        d1 = nodeset.daemon("d1", sn, front.addr)
        layer = _own_layer(image)
        front.post_json("/_front/faults", {"tamper": [layer]})
        r = _pull(front.addr, d1, tmp_path / "bad")
        # skopeo prints only the status of a failed blob GET; the daemon says why
        assert r.returncode != 0 and "502" in r.stderr, r.stderr
        # the supernode's check ("the origin's content does not match") or, when its pieces
        # were out first, the daemon's own ("digest mismatch: expected ..."): a race, both right
        assert re.search("does not match|digest mismatch: expected", d1.logs()), d1.logs()[-3000:]
        assert "failed blob removed" in d1.logs()
        assert "digest mismatch" in sn.logs()
        status, _, body = _get(f"http://{d1.info['proxy']}/v2/repo/blobs/{layer}")
        # the daemon's own check ("the registry's bytes do not match") or the supernode's,
        # relayed ("the origin's content does not match"): the same race as above
        assert status == 502 and re.search(rb"(does|do) not match", body), body
        assert _metric(d1.get_text("/metrics"), "dragonfly_dfdaemon_proxy_request_failure_total", type="p2p") >= 1
        # nothing wrong was cached: the honest registry's blob is fetched again, and served right
        front.post_json("/_front/faults", {"tamper": []})
        mark = len(R.front_stats(front)["requests"])
        r = _pull(front.addr, d1, tmp_path / "good")
        assert r.returncode == 0, r.stderr
        _assert_same_image(world, tmp_path / "good")
        assert R.blob_bytes({"requests": R.front_stats(front)["requests"][mark:]}, [layer]) == amd["blobs"][layer]
        # a blob the registry does not have: its own error reaches skopeo (a fresh supernode and
        # daemon: those above hold the blob by digest, and would serve it, as Dragonfly does)
        sn2 = nodeset.supernode("sn2")
        d2 = nodeset.daemon("d2", sn2, front.addr)
        r = _pull(front.addr, d2, tmp_path / "broken", repo="repo-broken")
        assert r.returncode != 0 and "404" in r.stderr, r.stderr
        status, _, body = _get(f"http://{d2.info['proxy']}/v2/repo-broken/blobs/{world['broken']}")
        assert status == 404 and json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
        # the registry down: a one-line 502 from the mirror; the daemon keeps serving
        front.stop()
        r = _pull(front.addr, d1, tmp_path / "down")
        assert r.returncode != 0 and "502" in r.stderr, r.stderr
        status, _, body = _get(f"http://{d1.info['proxy']}/v2/")
        assert status == 502 and "cannot reach" in json.loads(body)["errors"][0]["message"]
        status, _, got = _get(f"http://{d1.info['proxy']}/v2/repo/blobs/{layer}",
                              {"X-Dragonfly-Registry": f"http://{world['front'].addr}"})
        assert status == 200 and got == world["blobs"][layer]
        assert d1.get_json("/healthz")["ok"]
    finally:
        front.stop()


def test_ranges_references_and_headers():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=10-19", 100) == (10, 19)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-5", 100) == (95, 99)
    assert parse_range("bytes=50-500", 100) == (50, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None          # several: the whole blob
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("items=1-2", 100) is None
    ref = parse_image_ref("docker://127.0.0.1:5000/a/b:v1")
    assert (ref.registry, ref.repo, ref.reference, ref.scheme) == ("127.0.0.1:5000", "a/b", "v1", "http")
    assert parse_image_ref("docker://reg.example/x").reference == "latest"
    assert parse_image_ref("docker://reg.example/x").scheme == "https"
    for bad in ("reg/x:v1", "docker://reg", "docker://reg/UPPER:v1", "docker://reg/x@sha256:12"):
        with pytest.raises(OCIError):
            parse_image_ref(bad)
    index = {"manifests": [{"digest": "a", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                           {"digest": "b", "platform": {"os": "linux", "architecture": "amd64"}}]}
    assert pick_platform(index, "linux/amd64")["digest"] == "b"
    assert pick_platform(index, "linux/arm64/v8")["digest"] == "a"
    with pytest.raises(OCIError, match="linux/amd64, linux/arm64/v8"):
        pick_platform(index, "windows/amd64")
    from multidict import CIMultiDict
    h = source_headers(CIMultiDict([("Accept", "a"), ("accept", "b"), ("Authorization", "x"), ("Range", "bytes=0-1"),
                                    ("Connection", "keep-alive"), ("X-Dragonfly-Registry", "http://r")]))
    assert h == {"Accept": "a, b", "Authorization": "x"}
