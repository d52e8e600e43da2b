#!/usr/bin/env bash
# nbd-tls.sh — TLS on altpathd's NBD server: PSK (psktool) and X.509
# (certtool) with nbdinfo, nbdcopy and qemu-img; a wrong key, a missing or
# foreign client certificate, and plaintext on a tls=require listener are
# refused; exports with an allow list open only to the listed peer; and
# nothing negotiated before STARTTLS survives it.
. "$(dirname "$0")/nbd/functions.sh"
requires psktool certtool nbdinfo nbdcopy qemu-img
requires_pynbd

# ---- credentials
mkdir -p "$tmp/psk" "$tmp/pskbad" "$tmp/x509" "$tmp/alice" "$tmp/noclient" \
         "$tmp/mallory" "$tmp/other-ca"
psktool -u alice -p "$tmp/psk/keys.psk" > /dev/null
psktool -u bob -p "$tmp/psk/keys.psk" > /dev/null
psktool -u alice -p "$tmp/pskbad/keys.psk" > /dev/null   # another key

gen_key () { certtool --generate-privkey --key-type=ecdsa --outfile "$1" 2>/dev/null; }
cat > "$tmp/ca.info" <<EOF
cn = altpath test CA
ca
cert_signing_key
expiration_days = 30
EOF
cat > "$tmp/server.info" <<EOF
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
encryption_key
signing_key
expiration_days = 30
EOF
client_info () {
  printf 'cn = %s\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n' "$1"
}
make_ca () {                    # make_ca DIR
  gen_key "$1/ca-key.pem"
  certtool --generate-self-signed --load-privkey "$1/ca-key.pem" \
    --template "$tmp/ca.info" --outfile "$1/ca-cert.pem" 2>/dev/null
}
make_cert () {                  # make_cert CADIR KEY CERT TEMPLATE
  gen_key "$2"
  certtool --generate-certificate --load-privkey "$2" \
    --load-ca-certificate "$1/ca-cert.pem" --load-ca-privkey "$1/ca-key.pem" \
    --template "$4" --outfile "$3" 2>/dev/null
}
make_ca "$tmp/x509" || fail "certtool: CA"
make_cert "$tmp/x509" "$tmp/x509/server-key.pem" "$tmp/x509/server-cert.pem" \
  "$tmp/server.info" || fail "certtool: server certificate"
client_info alice > "$tmp/alice.info"
make_cert "$tmp/x509" "$tmp/alice/client-key.pem" "$tmp/alice/client-cert.pem" \
  "$tmp/alice.info" || fail "certtool: client certificate"
cp "$tmp/x509/ca-cert.pem" "$tmp/alice/"
cp "$tmp/x509/ca-cert.pem" "$tmp/noclient/"
# mallory: CN=alice, but signed by another CA.
make_ca "$tmp/other-ca"
make_cert "$tmp/other-ca" "$tmp/mallory/client-key.pem" \
  "$tmp/mallory/client-cert.pem" "$tmp/alice.info"
cp "$tmp/x509/ca-cert.pem" "$tmp/mallory/"

# ---- the daemon: require on TCP, on (optional) on a Unix socket
P=$(free_port)
LISTEN="address = 127.0.0.1:$P;tls = require|address = unix:$tmp/nbd.sock;tls = on"
TLSCONF="psk-file = $tmp/psk/keys.psk;cert-dir = $tmp/x509;verify-peer = yes"
DISK_OPTS=", allow=alice"
write_conf "$tmp/a.conf"
ALTPATH_DEBUG=control start_daemon "$tmp/a.conf"   # logs each TLS session
fd0=$(fd_count)
E=$(printf %s "$DISK" | sed 's/\$/%24/g')        # URI-escaped export names
ERO=$(printf %s "$RODISK" | sed 's/\$/%24/g')
PSK="tls-psk-file=$tmp/psk/keys.psk"

# ---- PSK
[ "$(nbdinfo --size "nbds://alice@127.0.0.1:$P/$E?$PSK")" = 67108864 ] \
  || fail "PSK alice: nbdinfo"
head -c 16M /dev/urandom > "$tmp/src"
nbdcopy "$tmp/src" "nbds://alice@127.0.0.1:$P/$E?$PSK" || fail "PSK nbdcopy in"
nbdcopy "nbds://alice@127.0.0.1:$P/$E?$PSK" "$tmp/back" || fail "PSK nbdcopy out"
cmp -s "$tmp/src" <(head -c 16M "$tmp/back") || fail "PSK round trip differs"
# bob: not on A100's allow list; A101 (no list) is open to him.
nbdinfo --size "nbds://bob@127.0.0.1:$P/$E?$PSK" > /dev/null 2>&1 \
  && fail "PSK bob opened $DISK (allow=alice)"
nbdinfo --size "nbds://bob@127.0.0.1:$P/$ERO?$PSK" > /dev/null \
  || fail "PSK bob: $RODISK"
nbdinfo --list "nbds://bob@127.0.0.1:$P/?$PSK" > "$tmp/bob.list" || fail "bob --list"
grep -qF "$DISK\"" "$tmp/bob.list" && fail "bob's LIST shows $DISK"
grep -qF "$RODISK\"" "$tmp/bob.list" || fail "bob's LIST lacks $RODISK"
# A wrong key.
nbdinfo --size "nbds://alice@127.0.0.1:$P/$E?tls-psk-file=$tmp/pskbad/keys.psk" \
  > /dev/null 2>&1 && fail "a wrong PSK was accepted"

# ---- plaintext on the require listener
nbdinfo --size "nbd://127.0.0.1:$P/$ERO" > /dev/null 2>&1 \
  && fail "plaintext accepted on tls=require"
$PY "$SRCDIR/tests/nbd/tlsraw.py" require 127.0.0.1 "$P" "$RODISK" \
  || fail "FORCEDTLS behaviour"

# ---- X.509
[ "$(nbdinfo --size "nbds://127.0.0.1:$P/$E?tls-certificates=$tmp/alice")" = 67108864 ] \
  || fail "X.509 alice: nbdinfo"
nbdinfo --size "nbds://127.0.0.1:$P/$ERO?tls-certificates=$tmp/noclient" \
  > /dev/null 2>&1 && fail "no client certificate accepted (verify-peer)"
nbdinfo --size "nbds://127.0.0.1:$P/$ERO?tls-certificates=$tmp/mallory" \
  > /dev/null 2>&1 && fail "a certificate of another CA was accepted"

# ---- qemu-img over PSK and X.509
# qemu reads the PSK file as keys.psk in dir=.
mkdir -p "$tmp/qpsk"
cp "$tmp/psk/keys.psk" "$tmp/qpsk/keys.psk"
qopts="driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$P,export=$DISK,tls-creds=t0"
qemu-img convert -n --object "tls-creds-psk,id=t0,endpoint=client,dir=$tmp/qpsk,username=alice" \
  -f raw "$tmp/src" --target-image-opts "$qopts" || fail "qemu-img convert over PSK"
qemu-img convert --object "tls-creds-x509,id=t0,endpoint=client,dir=$tmp/alice" \
  --image-opts "$qopts" -O raw "$tmp/q.img" || fail "qemu-img convert over X.509"
cmp -s "$tmp/src" <(head -c 16M "$tmp/q.img") || fail "qemu-img TLS round trip differs"

# ---- tls = on (Unix socket): plaintext for the open export, TLS for the
# restricted one, and STARTTLS resets what was negotiated before it.
[ "$(nbdinfo --size "$(unix_uri "$RODISK")")" = 8388608 ] || fail "plaintext on tls=on"
nbdinfo --size "$(unix_uri "$DISK")" > /dev/null 2>&1 \
  && fail "plaintext opened the restricted export on tls=on"
[ "$(nbdinfo --size "nbds+unix://alice@/$E?socket=$tmp/nbd.sock&$PSK")" = 67108864 ] \
  || fail "PSK over the Unix socket"
alive || fail "altpathd died"
fd1=$(fd_count_settled "$fd0")
[ "$fd1" -le "$fd0" ] || fail "descriptors leaked: $fd0 before, $fd1 after"
grep -q "TLS handshake failed\|certificate not accepted" "$tmp/altpathd.log" \
  || fail "no TLS refusal logged"
# The server picks the cipher: AES-GCM where the CPU has AES instructions
# (libnbd alone would settle on ChaCha20 with a PSK, at a fraction of the
# speed), ChaCha20-Poly1305 where it has not.
if grep -qw aes /proc/cpuinfo && grep -qw pclmulqdq /proc/cpuinfo; then want=AES-128-GCM
elif grep -q '^flags' /proc/cpuinfo; then want=CHACHA20-POLY1305
else want=; fi
grep "TLS up, peer 'alice'" "$tmp/altpathd.log" | head -1
if [ -n "$want" ]; then
  grep "TLS up, peer 'alice', (TLS1.3)" "$tmp/altpathd.log" | grep -q -- "($want)" \
    || fail "PSK sessions did not use $want"
fi
cp "$tmp/altpathd.log" "$tmp/first.log"
P2=$(free_port)
stop_daemon
LISTEN="address = 127.0.0.1:$P2;tls = on"
# [tls] priority replaces the server's choice: ChaCha20 only, TLS 1.3 only;
# the PSK key exchanges are still added, or alice could not connect.
TLSCONF="$TLSCONF;priority = NORMAL:-CIPHER-ALL:+CHACHA20-POLY1305:-VERS-ALL:+VERS-TLS1.3"
write_conf "$tmp/b.conf"
ALTPATH_DEBUG=control start_daemon "$tmp/b.conf"
$PY "$SRCDIR/tests/nbd/tlsraw.py" reset 127.0.0.1 "$P2" "$RODISK" "$tmp/alice" \
  || fail "state reset after STARTTLS"
[ "$(nbdinfo --size "nbds://alice@127.0.0.1:$P2/$E?$PSK")" = 67108864 ] \
  || fail "PSK alice under [tls] priority"
grep "TLS up, peer 'alice', (TLS1.3)" "$tmp/altpathd.log" \
  | grep -q -- "(CHACHA20-POLY1305)" \
  || fail "[tls] priority did not put the session on ChaCha20"

alive || fail "altpathd died"
stop_daemon
grep "closing" "$tmp/first.log"
echo "PASS"
