#!/usr/bin/env bash
# Measure `make up` from a fresh clone with an empty pip cache to the first answered API
# request, then a second `make up` in the same clone (which must reuse the virtualenv and
# its llama.cpp build). Prints both times; stops every process it started.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d "${TMPDIR:-/tmp}/inferbatch-cold.XXXXXX")
port=${PORT:-18765}
export PIP_CACHE_DIR="$work/pip-cache" INFERBATCH_PORT="$port"
git clone --quiet --no-hardlinks "$repo" "$work/inferbatch"
cd "$work/inferbatch"

up_pid=""
stop_up() {  # Ctrl-C as a user would, then wait until every process of the clone is gone
  if [[ -n $up_pid ]] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT -- "-$up_pid" 2>/dev/null || kill -INT "$up_pid" || true
  fi
  up_pid=""
  # the roles run in sessions of their own and drain before they exit
  for _ in $(seq 90); do
    pgrep -f "$work/inferbatch/.venv/" >/dev/null || break
    sleep 1
  done
  pkill -KILL -f "$work/inferbatch/.venv/" 2>/dev/null || true
  while curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null; do sleep 1; done
}
trap 'stop_up; rm -rf "$work"' EXIT

# seconds from `make up` to the first 200 from GET /v1/models, in $answered (not printed
# for a $(...) to read: make up must start in this shell, so that stop_up knows its pid)
answered=""
first_answer() {
  local log=$1 start
  start=$(date +%s)
  setsid make up >"$log" 2>&1 &
  up_pid=$!
  while true; do
    if ! kill -0 "$up_pid" 2>/dev/null; then
      echo "cold-up: make up exited early; see $log" >&2; tail -30 "$log" >&2; exit 1
    fi
    if [[ -s .inferbatch/admin_api_key ]] && curl -fsS -o /dev/null \
        -H "Authorization: Bearer $(cat .inferbatch/admin_api_key)" \
        "http://127.0.0.1:$port/v1/models" 2>/dev/null; then
      break
    fi
    sleep 1
  done
  answered=$(( $(date +%s) - start ))
}

first_answer "$work/up-cold.log"
echo "cold-up: first make up (fresh clone, empty pip cache): ${answered}s to the first answered request"
stop_up
grep -q "inferbatch: stopped" "$work/up-cold.log" || echo "cold-up: make up did not stop on Ctrl-C" >&2
first_answer "$work/up-warm.log"
echo "cold-up: second make up (same clone): ${answered}s to the first answered request"
stop_up
grep -q "inferbatch: stopped" "$work/up-warm.log" || echo "cold-up: make up did not stop on Ctrl-C" >&2
