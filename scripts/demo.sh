#!/usr/bin/env bash
# A signed-release round trip: create a repository, sign two versions of a model, serve it over
# HTTP on loopback, verify and download the new version as a device would, show the delta a
# device would fetch, then prove that a tampered model is refused.
set -euo pipefail
cd "$(dirname "$0")/.."
ef=.venv/bin/edgefleet
py=.venv/bin/python
out=demo-out
rm -rf "$out" && mkdir -p "$out"
models=edgefleet/models

step() { printf '\n== %s\n' "$*"; }

step "operator: create keys and a repository"
$ef keys init --repo "$out/repo"

step "operator: sign kws v1 and a head-only fine-tune as v2"
$ef release add --repo "$out/repo" "$models/kws_int8_v1.tflite" --name kws --version 1 2>/dev/null
$ef release add --repo "$out/repo" "$models/kws_int8_v2_head.tflite" --name kws --version 2 2>/dev/null
$ef release list --repo "$out/repo"

port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$py -m http.server --bind 127.0.0.1 --directory "$out/repo" "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do $py -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port"

step "device: verify and download kws v2 from $url with only root.json trusted"
cp "$out/repo/metadata/root.json" "$out/provisioned-root.json"
$ef verify kws/2.tflite --repo "$url" --root "$out/provisioned-root.json" \
  --metadata-dir "$out/device/tuf" --download "$out/device/kws-2.tflite"

step "transport: the delta from v1 to v2"
$py - "$models" <<'PY'
import sys
from pathlib import Path
from protocol.delta import apply_delta, make_delta
old = Path(sys.argv[1], "kws_int8_v1.tflite").read_bytes()
new = Path(sys.argv[1], "kws_int8_v2_head.tflite").read_bytes()
delta = make_delta(old, new)
assert apply_delta(old, delta) == new
print(f"full model {len(new)} bytes, delta {len(delta)} bytes ({len(delta) / len(new):.1%})")
PY

step "attack: a byte of the served model is flipped"
blob=$(ls "$out"/repo/targets/kws/*.2.tflite)
$py - "$blob" <<'PY'
import sys
from pathlib import Path
path = Path(sys.argv[1]); data = bytearray(path.read_bytes()); data[4000] ^= 0xFF
path.write_bytes(bytes(data))
PY
if $ef verify kws/2.tflite --repo "$url" --metadata-dir "$out/device/tuf" \
     --download "$out/device/tampered.tflite"; then
  echo "demo failed: a tampered model was accepted" >&2
  exit 1
fi
echo
echo "demo passed: the signed model was accepted, the tampered one refused (files in $out/)"
