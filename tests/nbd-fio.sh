#!/usr/bin/env bash
# nbd-fio.sh — fio's nbd engine against altpathd with data verification:
# random writes at queue depth 64 and 128 with crc32c verification, mixed
# block sizes, and four jobs (four connections) on one export at once.
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
echo "PASS"
