#!/usr/bin/env bash
# Line coverage of rmsecrets/ over the CI set (`make coverage`): the lessons' fast paths (nbdev_test) and pytest as
# scripts/test.sh runs them, with every Python process they start or fork measured too (coverage's
# `patch = subprocess, fork, _exit`), combined into one report; the data and an HTML report go to _docs/coverage/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=$PWD/_docs/coverage
rm -rf "$out" && mkdir -p "$out"
cat > "$out/coveragerc" <<RC
[run]
source_pkgs = rmsecrets
parallel = true
patch = subprocess, fork, _exit
concurrency = thread, multiprocessing
data_file = $out/.coverage
RC
export COVERAGE_RCFILE=$out/coveragerc
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python3 -m coverage run "$scripts/nbdev_test" --n_workers 2
status=0
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m coverage run -m pytest -p pytest_timeout tests -q -p no:cacheprovider || status=$?
python3 -m coverage combine -q
python3 -m coverage html -q -d "$out/html"
python3 -m coverage report --precision 1 | tail -n 25
exit $status
