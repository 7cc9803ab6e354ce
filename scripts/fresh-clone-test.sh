#!/usr/bin/env bash
# Prove that `make test` needs nothing but the repository: clone HEAD into a temporary
# folder (no virtualenv, no .inferbatch, nothing untracked), run `make test` there, and
# print how long it took. FRESH_PIP_CACHE=1 also starts pip with an empty cache, so
# llama-cpp-python is built from source as on a new machine.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d "${TMPDIR:-/tmp}/inferbatch-fresh.XXXXXX")
trap 'rm -rf "$work"' EXIT

git clone --quiet --no-hardlinks "$repo" "$work/inferbatch"
if [[ ${FRESH_PIP_CACHE:-0} == 1 ]]; then
  export PIP_CACHE_DIR="$work/pip-cache"
fi
# the clone must not see this checkout's test database or services
unset INFERBATCH_TEST_DATABASE_URL
cd "$work/inferbatch"
echo "fresh-clone-test: $(git rev-parse --short HEAD) in $work/inferbatch"
start=$(date +%s)
status=0
make test || status=$?
elapsed=$(( $(date +%s) - start ))
echo "fresh-clone-test: make test exited $status after ${elapsed}s"
exit "$status"
