#!/usr/bin/python3
# shutdown.py — clients for nbd-shutdown.sh.
#
#   shutdown.py writer SOCKET EXPORT ACKFILE
#       Keep 64 distinct 4 KiB writes in flight (block i holds byte
#       pattern (i*7+1) & 0xff, each block written once) until the server
#       goes away; write the index of every write the server acknowledged
#       to ACKFILE.  The test then checks each of those is in the image.
#   shutdown.py stall SOCKET EXPORT
#       Send 400 reads of 256 KiB, never read a reply, and wait to be
#       disconnected (at most 60 s).
#   shutdown.py idle SOCKET EXPORT
#       One connection in the handshake and one in transmission, both
#       silent, until the server closes them.
import socket
import struct
import sys
import time

import nbd

mode, sock, export = sys.argv[1:4]


def pattern(i):
    return bytes([(i * 7 + 1) & 0xff]) * 4096


if mode == "writer":
    ackfile = sys.argv[4]
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    nblocks = h.get_size() // 4096
    acked = []
    pending = {}
    i = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < 60:
            while len(pending) < 64 and i < nblocks:
                c = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(pattern(i))),
                                 i * 4096)
                pending[c] = i
                i += 1
            h.poll(-1)
            for c in list(pending):
                try:
                    if h.aio_command_completed(c):
                        acked.append(pending.pop(c))
                except nbd.Error:
                    pending.pop(c)      # failed: no claim about it
            if i >= nblocks and not pending:
                break
    except nbd.Error:
        pass                            # the server went away: expected
    with open(ackfile, "w") as f:
        f.write("\n".join(str(x) for x in acked) + "\n")
    print("acknowledged %d writes" % len(acked))

elif mode == "stall":
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.settimeout(60)
    s.recv(18)
    s.sendall(struct.pack(">I", 3))
    e = export.encode()
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 4 + len(e) + 2)
              + struct.pack(">I", len(e)) + e + b"\0\0")
    # Read the GO replies (small), then flood and stop reading.
    buf = b""
    while not buf.endswith(struct.pack(">QIII", 0x3e889045565a9, 7, 1, 0)):
        buf += s.recv(4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 0, i,
                                   (i % 32) * 262144, 262144)
                       for i in range(400)))
    print("flooded; not reading", flush=True)
    # Wait for the server to give up on us; only then read (and discard).
    time.sleep(60)

elif mode == "idle":
    a = socket.socket(socket.AF_UNIX)
    a.connect(sock)
    a.recv(18)                          # stays in the handshake
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)                # stays in transmission
    print("idle", flush=True)
    a.settimeout(30)
    try:
        while a.recv(4096):
            pass
    except OSError:
        pass
    print("closed by the server")
