#!/usr/bin/env bash
# Set up .venv with the project and its training tools (torch CPU, scikit-learn, MLflow),
# and compile the hot paths (dfnet/native.py); `./setup.sh test` adds the test tools. Safe
# to re-run.
set -euo pipefail
cd "$(dirname "$0")"
extras="[ml,native]"
[ "${1:-}" = test ] && extras="[ml,native,test]"
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  else
    echo "setup.sh: Python's venv module is missing; install it with: sudo apt-get install python3-venv" >&2
    exit 1
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt pins torch to the CPU build kept on the project's machines
.venv/bin/python -m pip install -q -c constraints.txt -e ".$extras"
# the simulator's and the scheduler's hot modules, compiled with mypyc (about 30 s); where
# that cannot be done it says why in one line and everything runs from source
.venv/bin/python -m dfnet.native build || true
