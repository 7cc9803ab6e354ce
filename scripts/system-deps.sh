#!/usr/bin/env bash
# Check, one by one, the system programs the test suite starts, and install the missing ones.
#
# Each entry is "program|Debian package(s)". A missing program is installed with apt-get when
# this shell may (root, or passwordless sudo); otherwise the script stops before any test
# runs and prints the exact command to run. Python packages are not handled here: they come
# from pyproject.toml into the project's virtualenv.
set -euo pipefail

REQUIRED=(
  "/usr/bin/chromium|chromium fonts-dejavu-core"   # the portal's browser tests (Playwright)
  "promtool|prometheus"                            # alert-rule unit tests
  "prometheus|prometheus"                          # live alert evaluation test
  "amtool|prometheus-alertmanager"                 # Alertmanager config check
  "pgbouncer|pgbouncer"                            # transaction-pooling tests
)

found() {
  local program=$1
  if [[ $program == /* ]]; then
    test -x "$program"
  else
    command -v "$program" >/dev/null 2>&1 || test -x "/usr/bin/$program" || test -x "/usr/sbin/$program"
  fi
}

missing_packages=()
for entry in "${REQUIRED[@]}"; do
  program=${entry%%|*}
  packages=${entry#*|}
  if found "$program"; then
    echo "system-deps: $program: ok"
  else
    echo "system-deps: $program: missing (Debian: $packages)"
    for package in $packages; do
      [[ " ${missing_packages[*]-} " == *" $package "* ]] || missing_packages+=("$package")
    done
  fi
done

if [[ ${#missing_packages[@]} -eq 0 ]]; then
  exit 0
fi

install="apt-get install -y --no-install-recommends ${missing_packages[*]}"
if [[ $(id -u) -eq 0 ]]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo="sudo"
else
  echo "system-deps: cannot install as $(id -un); run this, then 'make test' again:" >&2
  echo "    sudo apt-get update && sudo $install" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no apt-get here; install the programs above (${missing_packages[*]} on Debian)" >&2
  exit 1
fi

echo "system-deps: installing ${missing_packages[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  "${missing_packages[@]}"

for entry in "${REQUIRED[@]}"; do
  program=${entry%%|*}
  if ! found "$program"; then
    echo "system-deps: $program is still missing after installing ${entry#*|}" >&2
    exit 1
  fi
done
