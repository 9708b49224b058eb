#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn test cases (sections 1-11; 12-13 need
# permessage-deflate, which mps does not offer) against mps's WebSocket stack through the
# conformance echo endpoint, checks every verdict and writes a summary.
#
#   tests/autobahn/run.sh            run, check, write target/autobahn/summary.json
#   tests/autobahn/run.sh --update   also store the summary as tests/autobahn/summary.json
#
# The cases are run by `kosoku` (PyPI), which plays Autobahn's case files on Python 3; it is
# installed once into a virtualenv under ~/.cache/mps and reused.
set -euo pipefail
cd "$(dirname "$0")/../.."

KOSOKU_VERSION=0.1.0
venv="${MPS_KOSOKU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mps/kosoku-$KOSOKU_VERSION}"
if ! "$venv/bin/kosoku" --help >/dev/null 2>&1; then
  echo "installing kosoku $KOSOKU_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "kosoku==$KOSOKU_VERSION"
fi

cargo build --quiet --locked -p mps --bin mps
out=target/autobahn
rm -rf "$out"
mkdir -p "$out"

# The suite's section 9 sends messages of up to 16 MiB: the run raises the frame limit to
# that; every other setting is the default, and the echo endpoint is the same WebSocket stack
# as /ws.
cat >"$out/mps.toml" <<TOML
listen = "127.0.0.1:0"
admin_key = "autobahn-admin-key"
[auth]
jwt_secret = "autobahn-jwt-secret"
[connection]
conformance_echo = true
max_frame = 16777216
TOML

server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true' EXIT
target/debug/mps serve --config "$out/mps.toml" --data-dir "$out/data" \
  >"$out/server.out" 2>"$out/server.log" &
server=$!
addr=
for _ in $(seq 1 100); do
  addr=$(sed -n 's#^mps listening on http://##p' "$out/server.out")
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "mps did not start" >&2; exit 1; }

status=0
"$venv/bin/kosoku" "ws://$addr/conformance/echo" -x '12.*' -x '13.*' -p 2 \
  -o "$out/report" >"$out/kosoku.log" 2>&1 || status=$?

# A case passes when its verdict is OK, NON-STRICT (a SHOULD not followed) or INFORMATIONAL,
# and its closing handshake is OK or INFORMATIONAL: the suite's own rules.
python3 - "$out/report/index.json" "$out/summary.json" <<'PY' || status=1
import collections, json, sys

index = json.load(open(sys.argv[1]))
cases = {case_id: result for results in index.values() for case_id, result in results.items()}
key = lambda case_id: [int(part) for part in case_id.split(".")]
passing = {"OK", "NON-STRICT", "INFORMATIONAL"}
closing = {"OK", "INFORMATIONAL"}
summary = {
    "suite": "Autobahn test cases (kosoku), sections 1-11",
    "endpoint": "/conformance/echo (the /ws WebSocket stack)",
    "cases": len(cases),
    "behavior": dict(sorted(collections.Counter(r["behavior"] for r in cases.values()).items())),
    "behaviorClose": dict(sorted(collections.Counter(r["behaviorClose"] for r in cases.values()).items())),
    "not_ok": {
        case_id: {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"],
                  "remoteCloseCode": r.get("remoteCloseCode")}
        for case_id, r in sorted(cases.items(), key=lambda item: key(item[0]))
        if r["behavior"] != "OK" or r["behaviorClose"] != "OK"
    },
}
failed = sorted((c for c, r in cases.items()
                 if r["behavior"] not in passing or r["behaviorClose"] not in closing), key=key)
summary["failed"] = failed
with open(sys.argv[2], "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
for case_id in failed:
    r = cases[case_id]
    print(f"case {case_id}: behavior={r['behavior']} close={r['behaviorClose']}", file=sys.stderr)
counts = ", ".join(f"{n} {b}" for b, n in summary["behavior"].items())
print(f"autobahn: {len(cases) - len(failed)} passed, {len(failed)} failed ({counts})")
sys.exit(1 if failed or not cases else 0)
PY

if [ "${1:-}" = "--update" ]; then
  cp "$out/summary.json" tests/autobahn/summary.json
fi
if [ "$status" -ne 0 ]; then
  tail -n 40 "$out/kosoku.log" >&2
  echo "autobahn: conformance failures (report in $out/report/index.html)" >&2
fi
exit "$status"
