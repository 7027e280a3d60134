"""`dfget`: the wget-like client of the live runtime.

The live runtime (daemon, supernode, local API) is not built yet; until it is, dfget says so
in one line and exits non-zero instead of pretending to download.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("dfget: the live runtime (daemon and supernode) is not available yet; "
          "use 'dfly sim run' to simulate a distribution", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
