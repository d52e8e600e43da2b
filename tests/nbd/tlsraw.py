#!/usr/bin/python3
# tlsraw.py — TLS policy on raw sockets (no libnbd):
#
#   tlsraw.py require HOST PORT EXPORT
#       a plaintext client on a tls=require listener: every option but
#       STARTTLS and ABORT gets ERR_TLS_REQD, ABORT is acknowledged,
#       EXPORT_NAME is hung up on.
#   tlsraw.py reset HOST PORT EXPORT CERTDIR
#       on a tls=on listener: negotiate structured replies and
#       base:allocation in plaintext, STARTTLS (X.509 client certificate
#       from CERTDIR), then GO: nothing from before TLS may survive —
#       simple replies, no DF flag, BLOCK_STATUS refused.
import os
import socket
import ssl
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REPMAGIC = 0x3e889045565a9
ERR = 1 << 31
ERR_TLS_REQD = ERR + 5
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_SR, OPT_LMC, OPT_SMC = 6, 7, 8, 9, 10
REP_ACK, REP_INFO, REP_META = 1, 3, 4
FLAG_SEND_DF = 1 << 7

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("  FAIL:", what)


def recv(s, n):
    b = b""
    while len(b) < n:
        k = s.recv(n - len(b))
        if not k:
            raise EOFError("server closed")
        b += k
    return b


def opt(s, o, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, o, len(data)) + data)


def replies(s):
    out = []
    while True:
        magic, o, t, n = struct.unpack(">QIII", recv(s, 20))
        assert magic == REPMAGIC
        out.append((t, recv(s, n)))
        if t == REP_ACK or t & ERR:
            return out


def final(s, o, data=b""):
    opt(s, o, data)
    return replies(s)[-1][0]


def connect(host, port):
    s = socket.create_connection((host, int(port)), timeout=10)
    recv(s, 18)
    s.sendall(struct.pack(">I", 3))
    return s


def closed(s):
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def name_data(name, extra=b""):
    return struct.pack(">I", len(name)) + name + extra


def require(host, port, export):
    e = export.encode()
    s = connect(host, port)
    for o, d in ((OPT_LIST, b""), (OPT_SR, b""),
                 (OPT_INFO, name_data(e, b"\0\0")),
                 (OPT_GO, name_data(e, b"\0\0")),
                 (OPT_LMC, name_data(e, b"\0\0\0\0")),
                 (0x4321, b"junk")):
        check(final(s, o, d) == ERR_TLS_REQD, "option %d before TLS" % o)
    check(final(s, OPT_ABORT) == REP_ACK, "ABORT acknowledged on require")
    s.close()
    s = connect(host, port)
    opt(s, OPT_EXPORT_NAME, e)
    check(closed(s), "EXPORT_NAME before TLS: hung up")
    s.close()


def reset(host, port, export, certdir):
    e = export.encode()
    s = connect(host, port)
    check(final(s, OPT_SR) == REP_ACK, "plaintext STRUCTURED_REPLY")
    opt(s, OPT_SMC, name_data(e, struct.pack(">I", 1)
                              + name_data(b"base:allocation")))
    rs = replies(s)
    check(rs[-1][0] == REP_ACK and any(t == REP_META for t, _ in rs),
          "plaintext SET_META_CONTEXT")
    check(final(s, OPT_STARTTLS) == REP_ACK, "STARTTLS")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(certdir, "ca-cert.pem"))
    ctx.load_cert_chain(os.path.join(certdir, "client-cert.pem"),
                        os.path.join(certdir, "client-key.pem"))
    t = ctx.wrap_socket(s, server_hostname="localhost")
    check(final(t, OPT_STARTTLS) == ERR + 3, "second STARTTLS: ERR_INVALID")
    opt(t, OPT_GO, name_data(e, b"\0\0"))
    rs = replies(t)
    check(rs[-1][0] == REP_ACK, "GO over TLS")
    tflags = None
    for typ, d in rs:
        if typ == REP_INFO and struct.unpack(">H", d[:2])[0] == 0:
            tflags = struct.unpack(">H", d[10:12])[0]
    check(tflags is not None and not tflags & FLAG_SEND_DF,
          "no DF: structured replies did not survive STARTTLS")
    # BLOCK_STATUS: no context now, and simple replies: EINVAL, simple.
    t.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 7, 1, 0, 4096))
    magic, err, cookie = struct.unpack(">IIQ", recv(t, 16))
    check(magic == 0x67446698 and err == 22 and cookie == 1,
          "BLOCK_STATUS after STARTTLS: simple EINVAL (%x %d)" % (magic, err))
    t.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 2, 0, 4096))
    magic, err, cookie = struct.unpack(">IIQ", recv(t, 16))
    check(magic == 0x67446698 and err == 0 and len(recv(t, 4096)) == 4096,
          "READ after STARTTLS: simple reply")
    t.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 3, 0, 0))
    t.close()


mode = sys.argv[1]
if mode == "require":
    require(*sys.argv[2:5])
elif mode == "reset":
    reset(*sys.argv[2:6])
else:
    sys.exit("usage")
if failures:
    sys.exit(1)
print("ok")
