#!/usr/bin/env bash
# install-deps.sh — install the Debian 12 packages altpath needs to build,
# test, benchmark and run its demo.
#
# `make check` and `make demo` call this first.  It is idempotent and says
# nothing when everything is already installed: one dpkg-query decides, and
# only when something is missing does it run `apt-get update` and
# `apt-get install`.  As root it installs; as anyone else it prints what is
# missing and the command to run, and exits 1.
#
#   scripts/install-deps.sh           install what is missing (quiet if none)
#   scripts/install-deps.sh --check   only report what is missing (exit 1 if any)
#   scripts/install-deps.sh --list    print every package, one a line
#
# The package list lives here and nowhere else: add a package to the group it
# belongs to (or a new group with its comment), and add the group to ALL.
set -euo pipefail

# --- build: compiler, make, and pkg-config (which the Makefile asks for
#     every library's flags).
build_tools=(gcc make pkg-config)

# --- libraries (headers + .so to link against):
#     liburing   io_uring for direct paths (libaltpath)
#     cmocka     unit tests (tests/*.c)
#     json-c     --json output, registry entries, counters (libaltpath, CLI)
#     inih       altpathd's configuration file (daemon)
#     libnbd     the served path's NBD client (libaltpath)
#     gnutls     TLS for the NBD server and client (daemon, libaltpath)
#     fuse3      device files exposing units (daemon)
#     curl       etcd's v3 JSON gateway, the cluster registry (daemon)
libraries=(liburing-dev libcmocka-dev libjson-c-dev libinih-dev libnbd-dev
           libgnutls28-dev libfuse3-dev libcurl4-openssl-dev)

# --- real peers and load for tests, bench and demo:
#     fio (load, has nbd and io_uring engines), nbdkit (reference NBD
#     server, fault-injection filters), libnbd-bin (nbdinfo, nbdcopy, nbdsh,
#     nbdfuse), qemu-utils (qemu-img, qemu-io, qemu-nbd), nbd-server (a
#     third NBD server), python3-libnbd (scripted NBD edge cases, run with
#     /usr/bin/python3), gnutls-bin (psktool, certtool for TLS tests).
peer_tools=(fio nbdkit libnbd-bin qemu-utils nbd-server python3-libnbd
            gnutls-bin)

# --- the cluster registry for real clusters (etcd, its v3 JSON gateway),
#     started by the tests on loopback; fuse3 for fusermount3 (device
#     files).
cluster_tools=(etcd-server etcd-client fuse3)

# --- system tools for tests, soak and demo: losetup/mount (util-linux),
#     mkfs.ext4 (e2fsprogs), ip netns and veth (iproute2), valgrind (leak
#     checks), curl (etcd health in the tests and the soak), openssl (a
#     test CA and certificates for etcd over TLS).
system_tools=(util-linux e2fsprogs iproute2 valgrind curl openssl)

# --- fuzzing: clang with libFuzzer (fuzzing/run.sh).
fuzz_tools=(clang)

# --- the benchmark report's plots (bench/report/*.png; gnuplot's pngcairo
#     terminal, without X).
report_tools=(gnuplot-nox)

ALL=("${build_tools[@]}" "${libraries[@]}" "${peer_tools[@]}" "${system_tools[@]}"
     "${fuzz_tools[@]}" "${cluster_tools[@]}" "${report_tools[@]}")

mode=install
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --list) printf '%s\n' "${ALL[@]}"; exit 0 ;;
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  *) echo "install-deps.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
esac

# One dpkg-query for all: it prints "name status" for each known package
# (and complains on stderr about unknown ones, which count as missing).
declare -A have=()
while read -r name status; do
  [ "$status" = installed ] && have[$name]=1
done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${ALL[@]}" 2>/dev/null || true)

missing=()
for p in "${ALL[@]}"; do
  [ -n "${have[$p]:-}" ] || missing+=("$p")
done

((${#missing[@]} == 0)) && exit 0

if [ "$mode" = check ]; then
  echo "install-deps.sh: missing packages: ${missing[*]}" >&2
  exit 1
fi

if [ "$(id -u)" != 0 ]; then
  {
    echo "install-deps.sh: these Debian packages are missing: ${missing[*]}"
    echo "Install them as root with:"
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
  } >&2
  exit 1
fi

echo "install-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp /tmp/altpath-install-deps.XXXXXX)
trap 'rm -f "$log"' EXIT
# Wait for a dpkg lock held by someone else rather than failing at once.
apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)
if ! { apt-get "${apt_opts[@]}" update -q &&
       apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}"; } \
     >"$log" 2>&1 </dev/null; then
  tail -n 40 "$log" >&2
  echo "install-deps.sh: apt-get failed installing: ${missing[*]} (output above)" >&2
  exit 1
fi

# Check again: apt-get can succeed and still leave a package out.
if ! bash "$0" --check; then
  exit 1
fi
echo "install-deps.sh: done" >&2
