#!/usr/bin/env bash
# Everything CI checks, in order; pytest runs last so its summary line closes the output.
#   bash scripts/test.sh          the CI set (`make test`): every test but the `long` ones
#   bash scripts/test.sh --long   the long target (`make test-long`): the `long` tests, and the lessons' slow cells
#                                 with the assertions that check what their text says
# Each part prints its seconds; pytest lists its slowest tests above its summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# pytest with the plugins of requirements.lock alone (not whatever else the machine has installed), on two workers
# (pytest-xdist) that each take whole files, so a module's fixtures are made once; the demo's tests share one file
pytest_() { PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -p xdist.plugin -p pytest_timeout tests -n 2 --dist loadfile "$@"; }

t0=$SECONDS
took() { echo "   ($(( SECONDS - t0 )) s)"; t0=$SECONDS; }
echo "== machine: $(python3 -c 'import platform, torch; from rmsecrets.scale import matmul_peak
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"{cpu}, {torch.get_num_threads()} threads, fp32 matmul peak {matmul_peak() / 1e9:.0f} GFLOP/s (rmsecrets.scale.matmul_peak)")')"

if [ "${1:-}" = "--long" ]; then   # both parts run whatever the first gives; either failing fails it
  echo "== 1. the lessons' slow cells (nbdev_test --flags slow; their assertions check what the lessons say)"
  status=0
  # each lesson in a process of its own (one long-lived worker would carry every lesson's memory), two at a time
  ls nbs/*.ipynb | OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 xargs -P 2 -I{} nbdev_test --flags slow --n_workers 0 --timing \
    --path {} || status=$?
  took
  echo "== 2. pytest -m long (the benchmarks' quick runs, the default pipeline, the real-model track at full size)"
  pytest_ -m long -ra --durations=10 || status=$?
  exit $status
fi

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
echo "== 2. notebooks run (nbdev_test; slow and real-model cells skipped, one torch thread per worker)"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nbdev_test --n_workers 2 --timing

took
echo "== 3. no undefined names in the package"
ruff check --select F821,F822,F823 rmsecrets/

took
echo "== 4. pytest (no long tests; two workers, one torch thread each; the slowest are listed above the summary line)"
pytest_ -q -ra --durations=12
