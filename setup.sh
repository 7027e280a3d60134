#!/usr/bin/env bash
# Set up .venv with the project and its training tools (torch CPU, scikit-learn, MLflow);
# `./setup.sh test` adds the test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"
extras="[ml]"
[ "${1:-}" = test ] && extras="[ml,test]"
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
