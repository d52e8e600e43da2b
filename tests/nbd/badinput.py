#!/usr/bin/python3
# badinput.py — bad and hostile input on a raw socket (no libnbd): wrong
# magics, truncated packets, absurd lengths, unknown options with payloads,
# a disconnect in the middle of a WRITE payload, a client that does not
# read its replies, ABORT/DISC followed by an immediate close.  The server
# must answer what the spec asks, or close cleanly: never crash or hang.
#
#   badinput.py SOCKET RW-EXPORT
import socket
import struct
import sys
import time

SOCK, EXPORT = sys.argv[1:3]
EXPORT_B = EXPORT.encode()

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REPMAGIC = 0x3e889045565a9
REQMAGIC = 0x25609513
SIMPLE = 0x67446698
STRUCT = 0x668e33ef

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_SR, OPT_LMC, OPT_SMC = 6, 7, 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR = 1 << 31
ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_TOO_BIG = ERR + 1, ERR + 2, ERR + 3, ERR + 9
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
EINVAL, ENOSPC = 22, 28

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("  FAIL:", what)


class Closed(Exception):
    pass


class Raw:
    def __init__(self, flags=3, timeout=10, rcvbuf=None):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout)
        self.s.connect(SOCK)
        g = self.recv(18)
        magic, opt, hflags = struct.unpack(">QQH", g)
        assert magic == NBDMAGIC and opt == IHAVEOPT, "greeting"
        if flags is not None:
            self.s.sendall(struct.pack(">I", flags))

    def recv(self, n):
        b = b""
        while len(b) < n:
            k = self.s.recv(n - len(b))
            if not k:
                raise Closed()
            b += k
        return b

    def closed_by_server(self):
        """True if the server closed (EOF, or a reset) within the timeout."""
        try:
            while True:
                k = self.s.recv(65536)
                if not k:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def opt(self, opt, data=b"", length=None):
        n = len(data) if length is None else length
        self.s.sendall(struct.pack(">QII", IHAVEOPT, opt, n) + data)

    def reply(self):
        magic, opt, rtype, n = struct.unpack(">QIII", self.recv(20))
        assert magic == REPMAGIC, "option reply magic %x" % magic
        return opt, rtype, self.recv(n)

    def replies(self):
        out = []
        while True:
            r = self.reply()
            out.append(r)
            if r[1] == REP_ACK or r[1] & ERR:
                return out

    def final(self, opt, data=b"", length=None):
        self.opt(opt, data, length)
        return self.replies()[-1][1]

    def go(self, name=EXPORT_B, structured=True):
        if structured:
            assert self.final(OPT_SR) == REP_ACK
        rs = self.opt(OPT_GO, struct.pack(">I", len(name)) + name
                      + struct.pack(">H", 0))
        rs = self.replies()
        assert rs[-1][1] == REP_ACK, "GO: %x" % rs[-1][1]
        for _, t, d in rs:
            if t == REP_INFO and struct.unpack(">H", d[:2])[0] == 0:
                self.size = struct.unpack(">Q", d[2:10])[0]
        self.structured = structured

    def req(self, cmd, off, n, cookie, flags=0, payload=b"", magic=REQMAGIC):
        self.s.sendall(struct.pack(">IHHQQI", magic, flags, cmd, cookie, off, n)
                       + payload)

    def read_reply(self):
        """(cookie, error, data) of one reply (one structured chunk with
        DONE, as this server always sends)."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE:
            err, cookie = struct.unpack(">IQ", self.recv(12))
            return cookie, err, None
        assert magic == STRUCT, "reply magic %x" % magic
        flags, rtype, cookie, n = struct.unpack(">HHQI", self.recv(16))
        assert flags & 1, "chunk without DONE"
        body = self.recv(n)
        if rtype == 0x8001:
            err, ml = struct.unpack(">IH", body[:6])
            return cookie, err, body[6:6 + ml]
        if rtype == 1:
            return cookie, 0, body[8:]
        return cookie, 0, body

    def close(self):
        self.s.close()


def handshake_cases():
    print("handshake")
    # Unknown option with a payload: ERR_UNSUP, still in sync.
    r = Raw()
    check(r.final(0x1234, b"\xff" * 100) == ERR_UNSUP, "unknown option: ERR_UNSUP")
    check(r.final(0x7fffffff) == ERR_UNSUP, "unknown option 2^31-1")
    rs = (r.opt(OPT_LIST), r.replies())[1]
    check(any(t == REP_SERVER for _, t, _ in rs), "LIST after unknown options")
    # Option payload of 1 MiB: read and dropped, ERR_TOO_BIG, in sync.
    check(r.final(OPT_INFO, b"\0" * (1 << 20)) == ERR_TOO_BIG, "1 MiB option: TOO_BIG")
    check(r.final(OPT_LIST) == REP_ACK, "LIST after TOO_BIG")
    # Malformed options: ERR_INVALID each, in sync.
    check(r.final(OPT_LIST, b"x") == ERR_INVALID, "LIST with data")
    check(r.final(OPT_SR, b"x") == ERR_INVALID, "STRUCTURED_REPLY with data")
    check(r.final(OPT_STARTTLS, b"x") == ERR_INVALID, "STARTTLS with data")
    check(r.final(OPT_STARTTLS) == ERR_POLICY, "STARTTLS on tls=off: ERR_POLICY")
    check(r.final(OPT_GO, struct.pack(">I", 5000) + b"n" * 5000 + b"\0\0")
          == ERR_INVALID, "GO with a 5000-byte name: ERR_INVALID")
    check(r.final(OPT_GO, struct.pack(">I", 100) + b"abc") == ERR_INVALID,
          "GO name length past the payload")
    check(r.final(OPT_GO, struct.pack(">I", len(EXPORT_B)) + EXPORT_B
                  + struct.pack(">H", 3) + b"\0\1") == ERR_INVALID,
          "GO information count mismatch")
    check(r.final(OPT_INFO, b"") == ERR_INVALID, "INFO without data")
    check(r.final(OPT_SMC, struct.pack(">I", 0) + struct.pack(">I", 0))
          == ERR_INVALID, "SET_META_CONTEXT before structured replies")
    check(r.final(OPT_SR) == REP_ACK, "STRUCTURED_REPLY")
    check(r.final(OPT_LMC, struct.pack(">I", len(EXPORT_B)) + EXPORT_B
                  + struct.pack(">II", 1, 50) + b"base:") == ERR_INVALID,
          "LIST_META_CONTEXT with a truncated query")
    check(r.final(OPT_SMC, struct.pack(">I", 7) + b"missing" + struct.pack(">I", 0))
          == (ERR + 6), "SET_META_CONTEXT on a missing export: ERR_UNKNOWN")
    # ... and after all that, GO works.
    r.go(structured=False)
    r.req(CMD_READ, 0, 4096, 77)
    c, e, _ = r.read_reply()
    check(c == 77 and e == 0, "read after the bad options")
    r.close()

    # Unknown client flags: the spec says close.
    r = Raw(flags=0x80)
    check(r.closed_by_server(), "unknown client flags: closed")
    r.close()
    # Wrong option magic: close.
    r = Raw()
    r.s.sendall(struct.pack(">QII", 0x1122334455667788, OPT_LIST, 0))
    check(r.closed_by_server(), "bad option magic: closed")
    r.close()
    # Absurd option length: close without reading 4 GiB.
    r = Raw()
    r.opt(OPT_INFO, b"", length=0xffffffff)
    check(r.closed_by_server(), "option length 2^32-1: closed")
    r.close()
    # EXPORT_NAME too long / unknown: it cannot be refused, so close.
    r = Raw()
    r.opt(OPT_EXPORT_NAME, b"n" * 5000)
    check(r.closed_by_server(), "EXPORT_NAME of 5000 bytes: closed")
    r.close()
    r = Raw()
    r.opt(OPT_EXPORT_NAME, b"no-such-disk")
    check(r.closed_by_server(), "EXPORT_NAME of a missing export: closed")
    r.close()
    # Truncated packets, then close.
    for cut in (b"\x00\x00", struct.pack(">QI", IHAVEOPT, OPT_LIST),
                struct.pack(">QII", IHAVEOPT, OPT_GO, 100) + b"abc"):
        r = Raw()
        r.s.sendall(cut)
        r.close()
    # Greeting read, nothing sent, closed.
    r = Raw(flags=None)
    r.close()
    # ABORT and close at once, without reading the ACK.
    for _ in range(20):
        r = Raw()
        r.opt(OPT_ABORT)
        r.close()
    # ABORT with data: still acknowledged.
    r = Raw()
    r.opt(OPT_ABORT, b"junk")
    rs = r.replies()
    check(rs[-1][1] == REP_ACK, "ABORT with data acknowledged")
    r.close()
    # 50 connections dropped at once.
    rs = [Raw(flags=None) for _ in range(50)]
    for r in rs:
        r.close()


def transmission_cases():
    print("transmission")
    r = Raw()
    r.go(structured=True)
    size = r.size
    # Unknown command: EINVAL, in sync.
    r.req(99, 0, 4096, 1)
    c, e, _ = r.read_reply()
    check(c == 1 and e == EINVAL, "unknown command: EINVAL (%d)" % e)
    # FLUSH with an offset (reserved fields): EINVAL.
    r.req(CMD_FLUSH, 4096, 0, 2)
    c, e, _ = r.read_reply()
    check(c == 2 and e == EINVAL, "flush with offset: EINVAL")
    # Read of 2^32-1 bytes: EINVAL (too big and unaligned), no disconnect.
    r.req(CMD_READ, 0, 0xffffffff, 3)
    c, e, msg = r.read_reply()
    check(c == 3 and e == EINVAL and msg, "huge read: EINVAL with a message")
    # Write past the end: ENOSPC, payload consumed.
    r.req(CMD_WRITE, size, 4096, 4, payload=b"\1" * 4096)
    c, e, _ = r.read_reply()
    check(c == 4 and e == ENOSPC, "write past the end: ENOSPC")
    # A 40 MiB write (over the 32 MiB maximum): EINVAL, payload dropped.
    r.req(CMD_WRITE, 0, 40 << 20, 5, payload=b"\2" * (40 << 20))
    c, e, _ = r.read_reply()
    check(c == 5 and e == EINVAL, "40 MiB write: EINVAL")
    # Still in sync, and the refused writes wrote nothing.  (A read sent
    # right behind a write may be served first: wait for the write.)
    r.req(CMD_WRITE, 0, 4096, 6, payload=b"\3" * 4096)
    c, e, _ = r.read_reply()
    check(c == 6 and e == 0, "write after refused requests")
    r.req(CMD_READ, 0, 8192, 7)
    c, e, d = r.read_reply()
    check(c == 7 and e == 0 and d[:4096] == b"\3" * 4096
          and d[4096:] != b"\2" * 4096, "in sync after refused requests")
    # Wrong request magic: close.
    r.req(CMD_READ, 0, 4096, 8, magic=0x12560953)
    check(r.closed_by_server(), "bad request magic: closed")
    r.close()

    # A write claiming 2^32-1 bytes: hang up rather than read 4 GiB.
    r = Raw()
    r.go()
    r.req(CMD_WRITE, 0, 0xffffffff, 1, payload=b"x" * 1000)
    check(r.closed_by_server(), "4 GiB write: closed")
    r.close()

    # Disconnect in the middle of a write payload.
    for _ in range(5):
        r = Raw()
        r.go()
        r.req(CMD_WRITE, 0, 1 << 20, 1, payload=b"y" * 1000)
        r.close()
    # Half a request header.
    r = Raw()
    r.go()
    r.s.sendall(struct.pack(">IHH", REQMAGIC, 0, CMD_READ))
    r.close()

    # Requests in flight, then DISC and close at once (replies unread).
    for _ in range(10):
        r = Raw()
        r.go()
        for i in range(32):
            r.req(CMD_READ, i * 65536, 65536, i)
        r.req(CMD_DISC, 0, 0, 99)
        r.close()
    # DISC alone: the server closes.
    r = Raw()
    r.go()
    r.req(CMD_DISC, 0, 0, 1)
    check(r.closed_by_server(), "DISC: closed")
    r.close()


def slow_reader():
    print("a client that does not read its replies for a while")
    r = Raw(timeout=30)
    r.go()
    ln = 256 * 1024
    for i in range(8):
        r.req(CMD_WRITE, i * ln, ln, 10000 + i, payload=bytes([i + 1]) * ln)
    for i in range(8):
        c, e, _ = r.read_reply()
        check(e == 0, "write %d" % c)
    # 400 reads of 256 KiB (100 MiB of replies) while reading nothing: the
    # headers fit in the socket buffer, the replies do not.
    n = 400
    r.s.sendall(b"".join(struct.pack(">IHHQQI", REQMAGIC, 0, CMD_READ, i,
                                     (i % 200) * ln, ln) for i in range(n)))
    time.sleep(1)
    # Meanwhile another connection is served (no global stall: the unit's
    # completions never wait for a socket).
    o = Raw()
    o.go()
    o.req(CMD_READ, 0, ln, 5)
    c, e, d = o.read_reply()
    check(c == 5 and e == 0 and d == b"\1" * ln, "second connection served")
    o.close()
    time.sleep(1)
    seen = {}
    for _ in range(n):
        c, e, d = r.read_reply()
        check(c not in seen, "reply %d twice" % c)
        seen[c] = e
        if c < 8:
            check(d == bytes([c + 1]) * ln, "read %d data" % c)
    check(sorted(seen) == list(range(n)), "all %d replies, each once" % n)
    check(all(e == 0 for e in seen.values()), "no errors under back-pressure")
    r.req(CMD_FLUSH, 0, 0, 1000)
    c, e, _ = r.read_reply()
    check(c == 1000 and e == 0, "flush after the flood")
    r.close()


def slow_reader_one_at_a_time():
    # One request in flight at a time: the server sends each reply from
    # the thread that completed it, without waiting (nbd-conn.c,
    # send_alone); once the socket is full, a reply goes out in part and
    # the writer thread must finish it, and the next ones queue behind it.
    print("one request at a time, replies not read until the socket is full")
    r = Raw(timeout=30, rcvbuf=16384)
    r.go()
    ln = 64 * 1024
    r.req(CMD_WRITE, 0, 8 * ln, 1, payload=bytes(range(256)) * (8 * ln // 256))
    c, e, _ = r.read_reply()
    check(c == 1 and e == 0, "write for the reads")
    n = 64                          # 4 MiB of replies
    for i in range(n):
        r.req(CMD_READ, (i % 8) * ln, ln, 100 + i)
        time.sleep(0.005)           # let each complete alone
    seen = []
    for _ in range(n):
        c, e, d = r.read_reply()
        check(e == 0 and d == bytes(range(256)) * (ln // 256),
              "read %d data" % c)
        seen.append(c)
    check(seen == [100 + i for i in range(n)],
          "replies in order, each once (got %d)" % len(seen))
    r.req(CMD_FLUSH, 0, 0, 1000)
    c, e, _ = r.read_reply()
    check(c == 1000 and e == 0, "flush afterwards")
    r.close()


def slow_reader_small():
    # Many 4 KiB reads in flight while the client reads nothing: the
    # replies of a completion run go out together from the completing
    # thread (nbd-conn.c, nbd_conn_completion_run_end); once the socket
    # is full, a whole run's list goes out in part and the writer must
    # finish it, in order, each reply once.
    print("many small replies in flight, not read until the socket is full")
    r = Raw(timeout=30, rcvbuf=16384)
    r.go()
    ln = 4096
    r.req(CMD_WRITE, 0, 256 * ln, 1,
          payload=b"".join(bytes([i]) * ln for i in range(256)))
    c, e, _ = r.read_reply()
    check(c == 1 and e == 0, "write for the reads")
    n = 3000                        # 12 MiB of replies
    r.s.sendall(b"".join(struct.pack(">IHHQQI", REQMAGIC, 0, CMD_READ,
                                     100 + i, (i % 256) * ln, ln)
                         for i in range(n)))
    time.sleep(1)
    seen = set()
    for _ in range(n):
        c, e, d = r.read_reply()
        check(c not in seen, "reply %d twice" % c)
        seen.add(c)
        check(e == 0 and d == bytes([(c - 100) % 256]) * ln,
              "read %d data" % c)
    check(seen == set(range(100, 100 + n)), "all %d replies" % n)
    r.req(CMD_FLUSH, 0, 0, 1)
    c, e, _ = r.read_reply()
    check(c == 1 and e == 0, "flush afterwards")
    r.close()


handshake_cases()
transmission_cases()
slow_reader()
slow_reader_one_at_a_time()
slow_reader_small()

if failures:
    print("%d failure(s)" % len(failures))
    sys.exit(1)
print("all bad-input cases passed")
