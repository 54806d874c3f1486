#!/usr/bin/env bash
# Checks what TLS a pigeond offers: TLS 1.2 and 1.3 only, and only AEAD
# suites with ECDHE key exchange. With no argument it builds pigeond, starts
# it on a free loopback port (temporary data dir, admin off) and stops it at
# the end; with HOST:PORT it checks a running server instead.
#
#   scripts/check-tls.sh                 # a fresh pigeond (dev certificate)
#   scripts/check-tls.sh chat.example.com:7443
#
# 1. openssl s_client: TLS 1.3 and 1.2 connect; TLS 1.0 and 1.1, CBC,
#    static-RSA, NULL, export, RC4, 3DES and CCM suites are refused by the
#    server (openssl is told SECLEVEL=0 so it really offers them).
# 2. testssl.sh (Debian package testssl.sh), when installed: every protocol
#    and every suite the server accepts, from its JSON report.
# Needs openssl (installed with apt-get when missing and possible); testssl
# is optional: without it step 2 is skipped with a message. Exit 0 = pass.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*" >&2; exit 1; }

if ! command -v openssl >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
  fi
  command -v openssl >/dev/null || fail "openssl is needed (apt-get install openssl)"
fi

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ $# -ge 1 ]; then
  target=$1
  ca_args=()
else
  cargo build --quiet --bin pigeond
  bin=${CARGO_TARGET_DIR:-target}/debug/pigeond
  "$bin" serve --listen 127.0.0.1:0 --admin off --log-json --data "$work/data" 2>"$work/log" &
  pid=$!
  target=
  for _ in $(seq 1 100); do
    target=$(sed -n 's/.*"message":"serving","addr":"\([^"]*\)".*/\1/p' "$work/log" | head -n1)
    [ -n "$target" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/log" >&2; fail "pigeond exited"; }
    sleep 0.1
  done
  [ -n "$target" ] || fail "pigeond did not report its address"
  ca_args=(-CAfile certs/ca.pem -verify_return_error)
fi
host=${target%:*}
echo "checking $target"

# s_client ARGS...: prints the output; exit 0 if a session was established.
s_client() {
  local out
  out=$(openssl s_client -connect "$target" -servername "$host" "${ca_args[@]}" "$@" </dev/null 2>&1) || true
  printf '%s\n' "$out" >"$work/last"
  grep -q "Cipher is " <<<"$out" && ! grep -q "Cipher is (NONE)" <<<"$out"
}

expect_ok() {
  s_client "$@" || { cat "$work/last" >&2; fail "refused: openssl s_client $*"; }
  echo "ok   accepted: $* ($(grep -m1 -o 'Cipher is .*' "$work/last"))"
}

expect_refused() {
  if s_client "$@"; then cat "$work/last" >&2; fail "accepted: openssl s_client $*"; fi
  if grep -qE "no protocols available|no ciphers available|no cipher match" "$work/last"; then
    fail "openssl could not offer $* at all; the check proves nothing"
  fi
  echo "ok   refused:  $*"
}

expect_ok -tls1_3
expect_ok -tls1_2
expect_refused -tls1_1 -cipher 'ALL:@SECLEVEL=0'
expect_refused -tls1 -cipher 'ALL:@SECLEVEL=0'
expect_refused -tls1_2 -cipher 'ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:@SECLEVEL=0'
expect_refused -tls1_2 -cipher 'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384'
expect_refused -tls1_2 -cipher 'kRSA:aNULL:eNULL:EXP:RC4:3DES:DHE:@SECLEVEL=0'
expect_refused -tls1_2 -cipher 'ECDHE-ECDSA-AES128-CCM:ECDHE-ECDSA-AES256-CCM8:@SECLEVEL=0'
expect_refused -tls1_3 -ciphersuites 'TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256'

testssl=$(command -v testssl || command -v testssl.sh || true)
if [ -z "$testssl" ]; then
  echo "SKIPPED testssl: not installed (Debian: apt-get install testssl.sh); the openssl checks above passed"
  exit 0
fi
echo "running testssl (protocols and every suite, ~15 s)"
"$testssl" --quiet --color 0 --warnings off --protocols --each-cipher \
  --jsonfile "$work/testssl.json" "$target" >"$work/testssl.txt" 2>&1 \
  || { cat "$work/testssl.txt" >&2; fail "testssl did not run"; }
python3 - "$work/testssl.json" <<'PY'
import json, sys
findings = {r["id"]: r["finding"] for r in json.load(open(sys.argv[1]))}
problems = []
for proto in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"]:
    if not findings.get(proto, "").startswith("not offered"):
        problems.append(f"{proto}: {findings.get(proto)}")
for proto in ["TLS1_2", "TLS1_3"]:
    if not findings.get(proto, "").startswith("offered"):
        problems.append(f"{proto}: {findings.get(proto)}")
suites = [f for i, f in findings.items() if i.startswith("cipher-") or i.startswith("cipher_x")]
if not suites:
    problems.append("testssl listed no accepted suite")
for finding in suites:
    if "ECDH" not in finding or not ("GCM" in finding or "POLY1305" in finding):
        problems.append(f"weak suite accepted: {finding}")
for finding in suites:
    print("ok   testssl:", " ".join(finding.split()[:3]))
if problems:
    sys.exit("FAIL: " + "; ".join(problems))
PY
echo "pass: TLS 1.2 and 1.3 only, AEAD suites with ECDHE only"
