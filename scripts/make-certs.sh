#!/usr/bin/env bash
# Self-signed TLS certificates for synthpipe's Redis and PostgreSQL (docker-compose.yml).
#
#   scripts/make-certs.sh [OUT_DIR] [NAME_OR_IP ...]
#
# Writes OUT_DIR (default: certs) with
#   ca.crt      the certificate authority: every client (workers, producers, Flower) trusts it
#   ca.key      the authority's key: keep it on the first machine only
#   server.crt  the certificate Redis and PostgreSQL present, valid for localhost, 127.0.0.1,
#   server.key  ::1, redis, postgres and every NAME_OR_IP given (the first machine's host name
#               and address, as workers on other machines reach it)
# A second machine needs only ca.crt. Existing files are never overwritten: to make new
# certificates, move the old folder away first.
set -euo pipefail

out=${1:-certs}
[ $# -gt 0 ] && shift
if [ -e "$out/ca.crt" ] || [ -e "$out/server.crt" ]; then
    echo "make-certs: $out already holds certificates; move it away to make new ones" >&2
    exit 1
fi
command -v openssl >/dev/null || { echo "make-certs: openssl is needed (apt-get install -y openssl)" >&2; exit 1; }

sans="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:redis,DNS:postgres"
for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then
        sans="$sans,IP:$name"
    else
        sans="$sans,DNS:$name"
    fi
done

mkdir -p "$out"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 -days 3650 \
    -subj "/CN=synthpipe local CA" -keyout "$out/ca.key" -out "$out/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -sha256 \
    -subj "/CN=synthpipe services" -keyout "$out/server.key" -out "$tmp/server.csr" 2>/dev/null
cat > "$tmp/ext.cnf" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=$sans
EXT
openssl x509 -req -in "$tmp/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -sha256 -days 825 -extfile "$tmp/ext.cnf" -out "$out/server.crt" 2>/dev/null
chmod 0644 "$out/ca.crt" "$out/server.crt"
chmod 0600 "$out/ca.key" "$out/server.key"
echo "make-certs: wrote $out/{ca.crt,ca.key,server.crt,server.key} for $sans" >&2
