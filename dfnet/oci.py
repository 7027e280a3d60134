"""OCI / Docker registry vocabulary: image references, manifests, indexes, registry auth.

Owns what the mirror and preheat need to know about the distribution API and nothing more:
parsing `docker://REGISTRY/REPO:TAG` references, the media types a client accepts, walking
an index to the manifest of one platform, the blobs an image is made of, and answering a
registry's auth challenge (Basic, or Bearer from its token service) for a pull.

Rules kept here:
- A blob is named by its digest alone (`sha256:<64 hex>`); only sha256 digests are accepted,
  because the digest is what makes a blob the same task in every repository.
- A manifest fetched by digest is checked against it; one fetched by tag is trusted as the
  registry sent it (its digest is reported, from the bytes).
- Credentials are used for the registry (and its token service) only, and never logged.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp

BLOB_PATH = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join(INDEX_TYPES + MANIFEST_TYPES)
_REPO = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)


class OCIError(Exception):
    """A reference, manifest or registry answer we cannot use; the text is one line."""


@dataclass(frozen=True)
class ImageRef:
    registry: str          # host[:port]
    repo: str
    reference: str         # a tag or a sha256 digest
    scheme: str = "https"

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.registry}"

    def blob_url(self, digest: str) -> str:
        return f"{self.base}/v2/{self.repo}/blobs/{digest}"

    def manifest_url(self, reference: str | None = None) -> str:
        return f"{self.base}/v2/{self.repo}/manifests/{reference or self.reference}"


def parse_image_ref(text: str, plain_http: bool = False) -> ImageRef:
    """`docker://REGISTRY/REPO[:TAG|@sha256:HEX]` -> ImageRef (tag `latest` when none).

    The registry is plain HTTP with `plain_http`, or when it is a loopback host (as Docker
    treats `localhost` registries); otherwise HTTPS.
    """
    if not text.startswith("docker://"):
        raise OCIError(f"not an image reference: {text[:80]!r} (expected docker://REGISTRY/REPO:TAG)")
    rest = text[len("docker://"):]
    registry, sep, path = rest.partition("/")
    if not sep or not registry or not path:
        raise OCIError(f"image reference {text[:80]!r} names no repository (docker://REGISTRY/REPO:TAG)")
    if "@" in path:
        repo, _, reference = path.partition("@")
        if not DIGEST.fullmatch(reference):
            raise OCIError(f"bad digest in {text[:80]!r}: expected sha256:<64 hex>")
    else:
        repo, _, tag = path.rpartition(":") if ":" in path else (path, "", "latest")
        reference = tag
        if not _TAG.fullmatch(reference):
            raise OCIError(f"bad tag in {text[:80]!r}")
    if not _REPO.fullmatch(repo):
        raise OCIError(f"bad repository name {repo[:80]!r}: lower-case letters, digits, separators")
    host = registry.rsplit(":", 1)[0].strip("[]")
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    return ImageRef(registry, repo, reference, "http" if plain_http or loopback else "https")


def platform_matches(entry: dict, want: str) -> bool:
    """Does an index entry's `platform` match `os/arch[/variant]`?"""
    parts = want.split("/")
    p = entry.get("platform") or {}
    if p.get("os") != parts[0] or p.get("architecture") != (parts[1] if len(parts) > 1 else None):
        return False
    return len(parts) < 3 or p.get("variant") == parts[2]


def pick_platform(index: dict, want: str) -> dict:
    """The index entry for platform `want`; OCIError naming the platforms it has otherwise."""
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    for m in entries:
        if platform_matches(m, want):
            return m
    have = sorted({"/".join(filter(None, (p.get("os"), p.get("architecture"), p.get("variant"))))
                   for p in (m.get("platform") or {} for m in entries)} - {""})
    raise OCIError(f"the image has no {want} manifest (it has: {', '.join(have) or 'none'})")


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str


def image_blobs(manifest: dict) -> list[Blob]:
    """The config blob, then the layers, of an image manifest."""
    out = []
    for d in [manifest.get("config")] + list(manifest.get("layers") or []):
        if not isinstance(d, dict) or not DIGEST.fullmatch(str(d.get("digest", ""))):
            raise OCIError("the manifest has a blob without a sha256 digest")
        out.append(Blob(d["digest"], int(d.get("size", 0)), str(d.get("mediaType", ""))))
    return out


class RegistryClient:
    """A minimal pull-side client: GETs with the registry's auth challenge answered."""

    def __init__(self, session: aiohttp.ClientSession, ref: ImageRef, creds: tuple[str, str] | None = None):
        self.session, self.ref, self.creds = session, ref, creds
        self.auth: str | None = None          # the Authorization header that works, once known

    async def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        h = dict(headers or {})
        for attempt in range(2):
            if self.auth:
                h["Authorization"] = self.auth
            try:
                async with self.session.get(url, headers=h, timeout=TIMEOUT) as r:
                    body = await r.read()
                    if r.status == 401 and attempt == 0 and await self._answer(r.headers.get("WWW-Authenticate", "")):
                        continue
                    return r.status, dict(r.headers), body
            except (aiohttp.ClientError, TimeoutError) as e:
                raise OCIError(f"cannot reach the registry {self.ref.registry}: {type(e).__name__} {e}".strip()) from None
        return r.status, dict(r.headers), body

    async def _answer(self, challenge: str) -> bool:
        """Turn a 401 challenge into an Authorization header; False if we cannot."""
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic" and self.creds:
            self.auth = basic_auth(*self.creds)
            return True
        if scheme.lower() != "bearer":
            return False
        p = dict(_CHALLENGE.findall(params))
        if "realm" not in p:
            return False
        query = {"service": p.get("service", ""), "scope": p.get("scope") or f"repository:{self.ref.repo}:pull"}
        headers = {"Authorization": basic_auth(*self.creds)} if self.creds else {}
        try:
            async with self.session.get(f"{p['realm']}?{urlencode(query)}", headers=headers, timeout=TIMEOUT) as r:
                if r.status != 200:
                    raise OCIError(f"the registry's token service answered {r.status}")
                data = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise OCIError(f"cannot get a registry token: {type(e).__name__}") from None
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not token:
            raise OCIError("the registry's token service sent no token")
        self.auth = f"Bearer {token}"
        return True

    async def manifest(self, reference: str | None = None) -> tuple[str, str, dict]:
        """(media type, digest, parsed JSON) of a manifest or index."""
        ref = reference or self.ref.reference
        status, headers, body = await self.get(self.ref.manifest_url(ref), {"Accept": ACCEPT})
        if status != 200:
            raise OCIError(f"the registry answered {status} for {self.ref.repo}:{ref}: {registry_error(body)}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if DIGEST.fullmatch(ref) and digest != ref:
            raise OCIError(f"manifest {ref} does not match its digest (got {digest})")
        try:
            doc = json.loads(body)
        except ValueError:
            raise OCIError(f"the manifest of {self.ref.repo}:{ref} is not JSON") from None
        media = doc.get("mediaType") or headers.get("Content-Type", "").split(";")[0]
        return media, digest, doc

    async def resolve(self, platform: str) -> tuple[str, list[Blob]]:
        """(manifest digest, blobs) of the image for `platform`; an index picks the platform."""
        media, digest, doc = await self.manifest()
        if media in INDEX_TYPES or "manifests" in doc:
            entry = pick_platform(doc, platform)
            media, digest, doc = await self.manifest(entry["digest"])
        if media not in MANIFEST_TYPES and "layers" not in doc:
            raise OCIError(f"unsupported manifest type {media!r}")
        return digest, image_blobs(doc)


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def registry_error(body: bytes) -> str:
    """The registry's own error text (`{"errors": [{"code", "message"}]}`), one line."""
    try:
        errors = json.loads(body).get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, AttributeError):
        text = body.decode(errors="replace")
    return " ".join(text.split())[:300] or "no details"
