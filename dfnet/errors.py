"""How a failed download is told to the user: one line and a wget exit code.

wget's codes (ANCHORS): 0 ok, 1 generic, 2 usage, 3 file I/O, 4 network, 5 TLS, 6 auth,
7 protocol, 8 server error response; and ours: 9 for a digest mismatch (the bytes arrived but
are not the ones asked for, which no wget code says).
"""
from __future__ import annotations

OK, GENERIC, USAGE, FILE_IO, NETWORK, TLS, AUTH, PROTOCOL, SERVER_ERROR, DIGEST_MISMATCH = range(10)

# SourceError kinds (dfnet.source) to exit codes
SOURCE_KIND_CODES = {"url": USAGE, "network": NETWORK, "status": SERVER_ERROR,
                     "protocol": PROTOCOL, "changed": SERVER_ERROR}


class DownloadError(Exception):
    """A download that cannot finish; `code` is the exit code dfget returns for it."""

    def __init__(self, message: str, code: int = GENERIC):
        super().__init__(" ".join(str(message).split()))
        self.code = code


def status_code(status: int | None) -> int:
    """The exit code for an origin's HTTP error status."""
    return AUTH if status in (401, 403, 407) else SERVER_ERROR
