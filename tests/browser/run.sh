#!/usr/bin/env bash
# The browser SDK's unit tests (node) and the real-browser tests (headless Chromium driving pages
# against the real `mps` binary). Installs what is missing: Debian's chromium, the npm packages of
# tests/browser, the server binary. Exits non-zero when any test fails. Under CI=true a missing
# browser is a failure, never a skip.
#
#   tests/browser/run.sh                  # everything
#   TEST_MPS_BIN=path/to/mps tests/browser/run.sh   # test another build of the server
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
export CHROMIUM

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== apt-get install $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

command -v node >/dev/null || apt_install nodejs npm
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "node 20 or newer is needed, found $(node --version)" >&2
  exit 1
fi

browser=1
[ -x "$CHROMIUM" ] || apt_install chromium
if [ ! -x "$CHROMIUM" ]; then
  if [ "${CI:-}" = true ]; then
    echo "no browser at $CHROMIUM: the browser tests cannot run" >&2
    exit 1
  fi
  echo "== no browser at $CHROMIUM: skipping the browser tests (they never skip under CI=true)"
  browser=0
fi

status=0

echo "== SDK unit tests (node --test clients/js/test/)"
nice node --test --test-reporter=spec --test-timeout=60000 clients/js/test/ || status=1

if [ "$browser" = 1 ]; then
  echo "== npm ci (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  if [ -z "${TEST_MPS_BIN:-}" ]; then
    echo "== cargo build -p mps --bin mps"
    nice cargo build --locked -q -p mps --bin mps
  fi
  echo "== browser tests (node --test tests/browser/, $("$CHROMIUM" --version 2>/dev/null))"
  nice node --test --test-reporter=spec --test-concurrency=1 --test-timeout=180000 tests/browser/ || status=1
  for shot in tests/browser/output/*.png; do
    if [ -e "$shot" ]; then echo "screenshot: $ROOT/$shot"; fi
  done
fi

exit $status
