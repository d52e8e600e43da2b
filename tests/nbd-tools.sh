#!/usr/bin/env bash
# nbd-tools.sh — altpathd's NBD server with real clients: nbdinfo (list,
# size, block sizes, map), nbdcopy round trips (one and four connections),
# qemu-img convert/compare, qemu-io (patterns, zero, discard, FUA, aio
# flush), and a read-only export.
. "$(dirname "$0")/nbd/functions.sh"
requires nbdinfo nbdcopy qemu-img qemu-io sha256sum

P=$(free_port)
LISTEN="address = unix:$tmp/nbd.sock|address = 127.0.0.1:$P;tls = off"
write_conf "$tmp/a.conf"
start_daemon "$tmp/a.conf"
U=$(unix_uri "$DISK")
RO=$(unix_uri "$RODISK")
fd0=$(fd_count)

# ---- nbdinfo
nbdinfo --list "$(unix_uri "")" > "$tmp/list" || fail "nbdinfo --list"
grep -qF "export=\"$DISK\"" "$tmp/list" || fail "list lacks $DISK"
grep -qF "export=\"$RODISK\"" "$tmp/list" || fail "list lacks $RODISK"
[ "$(nbdinfo --size "$U")" = 67108864 ] || fail "size of $DISK"
nbdinfo --json "$U" > "$tmp/info.json" || fail "nbdinfo --json"
$PY - "$tmp/info.json" <<'EOF' || fail "nbdinfo --json content"
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
assert e["block_size_minimum"] in (512, 4096), e
assert e["block_size_preferred"] >= 4096, e
assert e["block_size_maximum"] == 32 * 1024 * 1024, e
for k in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero",
          "can_multi_conn", "can_cache", "can_df"):
    assert e[k] is True, (k, e)
assert e["is_read_only"] is False
assert "base:allocation" in e["contexts"]
EOF
nbdinfo --map "$U" > "$tmp/map" || fail "nbdinfo --map"
# One extent covering the disk, reported as data (flags 0).
[ "$(awk '{print $1, $2, $3}' "$tmp/map")" = "0 67108864 0" ] \
  || fail "map: $(cat "$tmp/map")"
nbdinfo --json "$RO" | grep -q '"is_read_only": true' || fail "A101 not read-only"
# The same over TCP (loopback, plaintext).
[ "$(nbdinfo --size "nbd://127.0.0.1:$P/$(printf %s "$DISK" | sed 's/\$/%24/')")" = 67108864 ] \
  || fail "nbdinfo over TCP"

# ---- nbdcopy round trips, checked by checksum
head -c 64M /dev/urandom > "$tmp/src"
want=$(sha256sum < "$tmp/src")
nbdcopy "$tmp/src" "$U" || fail "nbdcopy file -> nbd"
nbdcopy "$U" "$tmp/back" || fail "nbdcopy nbd -> file"
[ "$(sha256sum < "$tmp/back")" = "$want" ] || fail "nbdcopy round trip differs"
nbdcopy "$U" null: || fail "nbdcopy nbd -> null:"
nbdcopy "nbd://127.0.0.1:$P/$(printf %s "$DISK" | sed 's/\$/%24/')" "$tmp/tcp" \
  || fail "nbdcopy over TCP"
cmp -s "$tmp/src" "$tmp/tcp" || fail "nbdcopy over TCP differs"
# Four connections (we advertise multi-conn), small requests, many in flight.
head -c 64M /dev/urandom > "$tmp/src2"
nbdcopy --connections=4 --requests=64 --request-size=65536 "$tmp/src2" "$U" \
  || fail "nbdcopy 4 connections"
rm -f "$tmp/back"
nbdcopy --connections=4 "$U" "$tmp/back" || fail "nbdcopy 4 connections back"
cmp -s "$tmp/src2" "$tmp/back" || fail "nbdcopy 4-connection round trip differs"

# ---- qemu-img
qemu-img convert -n -f raw -O raw "$tmp/src" "$U" || fail "qemu-img convert to nbd"
qemu-img compare -f raw -F raw "$tmp/src" "$U" || fail "qemu-img compare"
qemu-img convert -f raw -O raw "$U" "$tmp/q.img" || fail "qemu-img convert from nbd"
cmp -s "$tmp/src" "$tmp/q.img" || fail "qemu-img round trip differs"

# ---- qemu-io: patterns, write zeroes, discard, FUA, aio + flush
qemu-io -f raw \
  -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' \
  -c 'write -z 1M 1M' -c 'read -P 0 1M 1M' \
  -c 'write -P 0x5a 2M 1M' -c 'discard 2M 1M' \
  -c 'write -f -P 0xcd 3M 64k' -c 'read -P 0xcd 3M 64k' \
  -c 'aio_write -P 0x11 4M 64k' -c 'aio_write -P 0x22 5M 64k' -c 'aio_flush' \
  -c 'read -P 0x11 4M 64k' -c 'read -P 0x22 5M 64k' \
  -c 'write -z -u 6M 1M' -c 'read -P 0 6M 1M' \
  "$U" > "$tmp/qio" 2>&1 || { cat "$tmp/qio"; fail "qemu-io"; }
grep -qi "fail\|error\|mismatch" "$tmp/qio" && { cat "$tmp/qio"; fail "qemu-io reported a problem"; }
# And the bytes are on the disk image itself (O_DIRECT: nothing cached).
cmp -s <(head -c 1M "$tmp/disk.img") <(head -c 1M /dev/zero | tr '\0' '\253') \
  || fail "pattern 0xab not in the image"

# ---- read-only export: reads work, writes are refused
qemu-io -r -f raw -c 'read 0 64k' "$RO" > /dev/null || fail "read of read-only export"
if qemu-io -f raw -c 'write -P 1 0 64k' "$RO" > "$tmp/ro.out" 2>&1 \
   && ! grep -qi "denied\|not permitted\|read-only\|error" "$tmp/ro.out"; then
  cat "$tmp/ro.out"; fail "write to a read-only export succeeded"
fi

alive || fail "altpathd died"
fd1=$(fd_count_settled "$fd0")
[ "$fd1" -le "$fd0" ] || fail "descriptors leaked: $fd0 before, $fd1 after"
stop_daemon
echo "PASS"
