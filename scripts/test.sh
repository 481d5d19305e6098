#!/usr/bin/env bash
# Everything CI checks, in order; pytest runs last so its summary line closes the output.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

t0=$SECONDS
took() { echo "   ($(( SECONDS - t0 )) s)"; t0=$SECONDS; }

echo "== 1. notebooks and package in sync (nbdev_clean, nbdev_export)"
before=$(git status --porcelain; git diff)
nbdev_clean
nbdev_export
after=$(git status --porcelain; git diff)
if [ "$before" != "$after" ]; then
  git status --porcelain
  echo "nbdev_clean/nbdev_export changed files: run them and commit the result" >&2
  exit 1
fi
if [ "${CI:-}" = "true" ] && [ -n "$after" ]; then
  git status --porcelain
  echo "the clone is not clean after nbdev_clean/nbdev_export" >&2
  exit 1
fi

took
echo "== 2. notebooks run (nbdev_test; slow cells skipped, one torch thread per worker)"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nbdev_test --n_workers 2 --timing

took
echo "== 3. no undefined names in the package"
ruff check --select F821,F822,F823 rmsecrets/

took
echo "== 4. pytest (the slowest tests are listed above the summary line)"
python3 -m pytest tests -q -ra --durations=8
