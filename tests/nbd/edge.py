#!/usr/bin/python3
# edge.py — protocol edge cases against altpathd's NBD server, driven by
# python3-libnbd with its client-side checks switched off
# (set_strict_mode(0)) so that the server sees what a broken client sends.
#
#   edge.py SOCKET RW-EXPORT RO-EXPORT
#
# Each check names the request and the NBD error the spec asks for.
import errno
import os
import sys

import nbd

sock, rw, ro = sys.argv[1:4]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("  FAIL:", what)


def connect(name, structured=True, meta=True, strict=False):
    h = nbd.NBD()
    h.set_export_name(name)
    h.set_request_structured_replies(structured)
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if not strict:
        h.set_strict_mode(0)
    h.connect_unix(sock)
    return h


def expect_err(fn, want, what):
    try:
        fn()
    except nbd.Error as e:
        check(e.errnum == want,
              "%s: errno %s (%s), want %s" % (what, e.errnum, e.string,
                                               errno.errorcode[want]))
        return
    check(False, "%s: succeeded, want %s" % (what, errno.errorcode[want]))


def transmission_cases(structured):
    tag = "structured" if structured else "simple"
    print("transmission, %s replies" % tag)
    h = connect(rw, structured=structured, meta=structured)
    size = h.get_size()
    bs = h.get_block_size(nbd.SIZE_MINIMUM)
    check(h.get_structured_replies_negotiated() == structured,
          "%s: structured negotiated" % tag)

    # The basics work.
    h.pwrite(b"\x42" * 4096, 0)
    check(h.pread(4096, 0) == b"\x42" * 4096, "%s: read back" % tag)
    h.pwrite(b"\x43" * 4096, 4096, nbd.CMD_FLAG_FUA)
    h.flush()
    h.trim(65536, 65536)
    h.trim(65536, 131072, nbd.CMD_FLAG_FUA)
    h.zero(65536, 196608)
    h.zero(65536, 196608, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
    check(h.pread(65536, 196608) == bytes(65536), "%s: zeroes" % tag)
    h.cache(65536, 0)
    # Last block, exactly at the end.
    h.pwrite(b"\x44" * bs, size - bs)
    check(h.pread(bs, size - bs) == b"\x44" * bs, "%s: last block" % tag)

    # Unaligned to the minimum block size: EINVAL.
    expect_err(lambda: h.pread(100, 0), errno.EINVAL, "%s: unaligned read" % tag)
    expect_err(lambda: h.pread(bs, 1), errno.EINVAL, "%s: unaligned offset" % tag)
    expect_err(lambda: h.pwrite(b"x" * 100, 0), errno.EINVAL,
               "%s: unaligned write" % tag)
    # Out of range: read EINVAL, write ENOSPC, zero ENOSPC, trim EINVAL.
    expect_err(lambda: h.pread(bs, size), errno.EINVAL,
               "%s: read past the end" % tag)
    expect_err(lambda: h.pread(2 * bs, size - bs), errno.EINVAL,
               "%s: read across the end" % tag)
    expect_err(lambda: h.pwrite(b"y" * bs, size), errno.ENOSPC,
               "%s: write past the end" % tag)
    expect_err(lambda: h.zero(bs, size), errno.ENOSPC,
               "%s: zero past the end" % tag)
    expect_err(lambda: h.trim(bs, size), errno.EINVAL,
               "%s: trim past the end" % tag)
    expect_err(lambda: h.pread(bs, (1 << 64) - bs), errno.EINVAL,
               "%s: offset near 2^64" % tag)
    # Too big for the maximum block size (32 MiB): EINVAL.
    expect_err(lambda: h.pread(33 * 1024 * 1024, 0), errno.EINVAL,
               "%s: read over 32 MiB" % tag)
    expect_err(lambda: h.zero(64 * 1024 * 1024 - 4096 + 4096, 0), errno.EINVAL,
               "%s: zero over 32 MiB" % tag)
    # Unknown or misplaced flags: EINVAL.
    expect_err(lambda: h.pread(4096, 0, 1 << 10), errno.EINVAL,
               "%s: unknown flag on read" % tag)
    expect_err(lambda: h.pwrite(b"z" * 4096, 0, nbd.CMD_FLAG_NO_HOLE),
               errno.EINVAL, "%s: NO_HOLE on write" % tag)
    expect_err(lambda: h.trim(4096, 0, nbd.CMD_FLAG_REQ_ONE), errno.EINVAL,
               "%s: REQ_ONE on trim" % tag)
    # FAST_ZERO: we never promise fast zeroing: ENOTSUP, data untouched.
    h.pwrite(b"\x77" * 4096, 8192)
    expect_err(lambda: h.zero(4096, 8192, nbd.CMD_FLAG_FAST_ZERO),
               errno.ENOTSUP, "%s: FAST_ZERO" % tag)
    check(h.pread(4096, 8192) == b"\x77" * 4096,
          "%s: FAST_ZERO refusal left the data alone" % tag)
    # Zero-length requests: answered, not hung up on.
    h.pwrite(b"", 0)
    h.trim(0, 0)
    h.zero(0, 0)
    check(h.pread(0, 0) == b"", "%s: zero-length read" % tag)
    # Block status without a metadata context (simple): EINVAL.
    if not structured:
        expect_err(lambda: h.block_status(4096, 0, lambda *a: 0), errno.EINVAL,
                   "simple: block status without a context")
    # A flush with an offset: EINVAL (reserved fields).
    # The connection is still in sync after all of that.
    check(h.pread(4096, 0) == b"\x42" * 4096, "%s: still in sync" % tag)
    h.shutdown()


def block_status_cases():
    print("block status")
    h = connect(rw)
    size = h.get_size()
    seen = []

    def cb(metacontext, offset, entries, err):
        seen.append((metacontext, offset, list(entries)))
        return 0
    h.block_status(65536, 4096, cb)
    check(len(seen) == 1 and seen[0][0] == nbd.CONTEXT_BASE_ALLOCATION,
          "block status: one base:allocation chunk")
    ents = seen[0][2]
    check(len(ents) == 2 and ents[1] == 0 and ents[0] >= 65536
          and 4096 + ents[0] <= size,
          "block status: one data extent, got %s" % ents)
    seen.clear()
    h.block_status(65536, 4096, cb, nbd.CMD_FLAG_REQ_ONE)
    check(seen and seen[0][2] == [65536, 0],
          "block status REQ_ONE: exactly the request, got %s" % seen)
    expect_err(lambda: h.block_status(4096, size, cb), errno.EINVAL,
               "block status past the end")
    h.shutdown()


def read_only_cases():
    print("read-only export")
    h = connect(ro)
    check(h.is_read_only(), "read-only flag")
    check(h.pread(4096, 0) is not None, "read of read-only export")
    expect_err(lambda: h.pwrite(b"w" * 4096, 0), errno.EPERM,
               "write on read-only")
    expect_err(lambda: h.trim(4096, 0), errno.EPERM, "trim on read-only")
    expect_err(lambda: h.zero(4096, 0), errno.EPERM, "zero on read-only")
    h.flush()
    h.shutdown()


def many_in_flight():
    print("256 requests in flight, replies out of order")
    h = connect(rw)
    bufs = []
    cookies = []
    for i in range(256):
        b = nbd.Buffer(4096)
        bufs.append(b)
        if i % 2:
            cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(
                bytearray([i % 256]) * 4096), (1000 + i) * 4096))
        else:
            cookies.append(h.aio_pread(b, (i * 37 % 4000) * 4096))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        check(h.aio_command_completed(c), "in-flight command %d completed" % c)
    for i in range(1, 256, 2):
        check(h.pread(4096, (1000 + i) * 4096) == bytes([i % 256]) * 4096,
              "in-flight write %d landed" % i)
    h.shutdown()


def option_cases():
    print("option haggling")
    # LIST shows both exports, with descriptions.
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(sock)
    names = []
    h.opt_list(lambda name, desc: names.append((name, desc)))
    check(sorted(n for n, _ in names) == sorted([rw, ro]),
          "LIST: got %s" % names)
    check(all(d for _, d in names), "LIST: descriptions present")
    # INFO on a missing export: error, and the connection stays usable.
    h.set_export_name("no-such-disk")
    try:
        h.opt_info()
        check(False, "INFO on a missing export succeeded")
    except nbd.Error:
        pass
    # INFO on a real one, then GO.
    h.set_export_name(rw)
    h.opt_info()
    check(h.get_size() == os.stat(os.environ["RWIMG"]).st_size,
          "INFO size matches the image")
    check(h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * 1024 * 1024,
          "INFO maximum block size")
    info_flags = (h.can_flush(), h.can_fua(), h.can_trim(), h.can_zero(),
                  h.can_multi_conn(), h.can_cache(), h.can_fast_zero())
    # LIST_META_CONTEXT: base:allocation offered.
    ctx = []
    h.opt_list_meta_context(lambda name: ctx.append(name))
    check(ctx == [nbd.CONTEXT_BASE_ALLOCATION], "LIST_META_CONTEXT: %s" % ctx)
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.opt_go()
    check(info_flags == (h.can_flush(), h.can_fua(), h.can_trim(),
                         h.can_zero(), h.can_multi_conn(), h.can_cache(),
                         h.can_fast_zero()),
          "GO reports what INFO reported")
    check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION),
          "base:allocation negotiated")
    h.shutdown()

    # The default export ("") is the first one.
    h = nbd.NBD()
    h.set_full_info(True)
    h.set_export_name("")
    h.connect_unix(sock)
    check(h.get_canonical_export_name() in (rw, ro),
          "default export: canonical name %r" % h.get_canonical_export_name())
    h.shutdown()

    # (A name over 4096 bytes: libnbd refuses to send it; badinput.py
    # sends one on a raw socket.)

    # ABORT: acknowledged, connection closed.
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(sock)
    h.opt_abort()
    check(h.aio_is_closed(), "ABORT acknowledged and closed")

    # A client that says nothing about fixed newstyle can still use
    # EXPORT_NAME (oldest clients).
    h = nbd.NBD()
    h.set_handshake_flags(0)
    h.set_request_structured_replies(False)
    h.set_export_name(rw)
    h.connect_unix(sock)
    check(h.pread(4096, 0) == b"\x42" * 4096, "non-fixed newstyle client")
    h.shutdown()

    # NO_ZEROES off: EXPORT_NAME reply with the 124 zero bytes.
    h = nbd.NBD()
    h.set_handshake_flags(nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE)
    h.set_request_structured_replies(False)
    h.set_export_name(rw)
    h.connect_unix(sock)
    check(h.pread(4096, 0) == b"\x42" * 4096, "client without NO_ZEROES")
    h.shutdown()


transmission_cases(True)
transmission_cases(False)
block_status_cases()
read_only_cases()
many_in_flight()
option_cases()

if failures:
    print("%d failure(s)" % len(failures))
    sys.exit(1)
print("all edge cases passed")
