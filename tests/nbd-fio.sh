#!/usr/bin/env bash
# nbd-fio.sh — fio's nbd engine against altpathd with data verification:
# random writes at queue depth 64 and 128 with crc32c verification, mixed
# block sizes, and four jobs (four connections) on one export at once.
# Then the same daemon restarted with a 1 MiB buffer budget
# (nbd-buffer-mib = 1, nbd-bufpool.c): four connections of large requests,
# and maximal 32 MiB ones, must still complete and verify — readers wait
# for buffers, never deadlock, never mix up data.
. "$(dirname "$0")/nbd/functions.sh"
requires fio
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "SKIP: fio has no nbd engine"; exit 77; }

DISK_SIZE=256M write_conf "$tmp/a.conf"
start_daemon "$tmp/a.conf"
U=$(unix_uri "$DISK")
fd0=$(fd_count)

run_fio () {
  local name=$1; shift
  fio --name="$name" --ioengine=nbd --uri="$U" --output-format=terse \
      --verify_fatal=1 --verify_state_save=0 "$@" > "$tmp/$name.out" 2> "$tmp/$name.err" \
    || { cat "$tmp/$name.err"; fail "fio $name"; }
  # terse v3: field 5 is the job's error code.
  awk -F';' '/^3;/ && $5 != 0 { exit 1 }' "$tmp/$name.out" \
    || { cat "$tmp/$name.out"; fail "fio $name reported errors"; }
  grep -qi "verify" "$tmp/$name.err" && { cat "$tmp/$name.err"; fail "fio $name: verify"; }
  return 0
}

run_fio qd64 --rw=randwrite --bs=4k --iodepth=64 --size=64M \
  --verify=crc32c --do_verify=1
run_fio qd128 --rw=randwrite --bsrange=4k-1m --iodepth=128 --size=128M \
  --verify=crc32c --do_verify=1
run_fio jobs4 --rw=randwrite --bs=64k --iodepth=32 --size=32M --numjobs=4 \
  --offset_increment=64M --verify=crc32c --do_verify=1 --group_reporting
run_fio mixed --rw=randrw --bs=16k --iodepth=64 --size=64M --time_based \
  --runtime=3 --numjobs=2 --offset_increment=128M

alive || fail "altpathd died"
fd1=$(fd_count_settled "$fd0")
[ "$fd1" -le "$fd0" ] || fail "descriptors leaked: $fd0 before, $fd1 after"
stop_daemon

# A budget far below what the clients keep in flight.
sed -i 's/^name = ALPHA$/name = ALPHA\nnbd-buffer-mib = 1/' "$tmp/a.conf"
grep -q '^nbd-buffer-mib = 1$' "$tmp/a.conf" || fail "could not set the budget"
start_daemon "$tmp/a.conf"
run_fio small-budget --rw=randwrite --bsrange=64k-4m --iodepth=32 --size=32M \
  --numjobs=4 --offset_increment=64M --verify=crc32c --do_verify=1 \
  --group_reporting
run_fio max-request --rw=write --bs=32m --iodepth=4 --size=128M \
  --numjobs=2 --offset_increment=128M --verify=crc32c --do_verify=1 \
  --group_reporting
alive || fail "altpathd died with a 1 MiB buffer budget"
stop_daemon
# The budget did hold the clients back (else this tested nothing).
w=$(sed -n 's/.*NBD buffers: budget 1 MiB; \([0-9]*\) requests waited.*/\1/p' "$tmp/altpathd.log")
[ "${w:-0}" -gt 0 ] || { tail -n 5 "$tmp/altpathd.log"; fail "no request waited for the 1 MiB budget"; }
echo "requests that waited for the 1 MiB buffer budget: $w"
echo "PASS"
