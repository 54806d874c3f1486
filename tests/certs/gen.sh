#!/usr/bin/env bash
# Regenerates the TEST-ONLY certificate that tests/tls.rs swaps in while
# pigeond serves: an RSA-2048 certificate for localhost and 127.0.0.1,
# signed by the dev CA in certs/ (so clients trusting certs/ca.pem accept
# it), with a subject different from the dev certificate's. RSA, so the
# TLS 1.2 ECDHE-RSA suites can be tested too (the dev certificate is ECDSA).
set -euo pipefail
cd "$(dirname "$0")"
ca=../../certs
openssl req -newkey rsa:2048 -nodes -keyout rotated.key -out rotated.csr \
  -subj "/CN=localhost/O=pigeon rotated test certificate"
cat > rotated.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in rotated.csr -CA "$ca/ca.pem" -CAkey "$ca/ca.key" -CAcreateserial \
  -out rotated.pem -days 3650 -extfile rotated.ext
rm -f rotated.csr rotated.ext "$ca/ca.srl" ca.srl
