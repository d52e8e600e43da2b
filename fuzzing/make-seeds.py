#!/usr/bin/env python3
# make-seeds.py — write the seed corpora of the NBD fuzz targets:
#   fuzzing/corpus/fuzz-nbd-handshake/*   fuzzing/corpus/fuzz-nbd-request/*
# Each seed is a small, valid session (see the input formats at the top
# of fuzzing/fuzz-nbd-*.c).  Rerun after changing a format; the output is
# committed.
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))
IHAVEOPT = 0x49484156454F5054


def opt(o, data=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(data)) + data


def name(n):
    return struct.pack(">I", len(n)) + n


def go_data(n, infos=(0, 1, 2, 3)):
    return name(n) + struct.pack(">H", len(infos)) + b"".join(
        struct.pack(">H", i) for i in infos)


def meta(n, queries):
    return name(n) + struct.pack(">I", len(queries)) + b"".join(
        name(q) for q in queries)


FLAGS = struct.pack(">I", 3)
D = b"ALPHA$DKA100"

handshake = {
    "go-default": b"\x00" + FLAGS + opt(7, go_data(b"")),
    "list-info-go": b"\x00" + FLAGS + opt(3) + opt(6, go_data(D)) + opt(7, go_data(D)),
    "structured-meta-go": b"\x00" + FLAGS + opt(8) + opt(9, meta(D, [b"base:"]))
        + opt(10, meta(D, [b"base:allocation", b"x-other:thing"])) + opt(7, go_data(D)),
    "export-name": b"\x00" + struct.pack(">I", 1) + opt(1, D),
    "starttls-go": b"\x01" + FLAGS + opt(8) + opt(5) + opt(8) + opt(7, go_data(b"alice-only")),
    "require": b"\x02" + FLAGS + opt(3) + opt(2),
    "unknown-abort": b"\x00" + FLAGS + opt(0x1234, b"junk") + opt(2),
    "restricted": b"\x01" + FLAGS + opt(6, go_data(b"secret")) + opt(7, go_data(b"nope")),
    "shutdown": b"\x04" + FLAGS + opt(3) + opt(7, go_data(D)),
}


def req(t, off, n, flags=0, cookie=1):
    return struct.pack(">IHHQQI", 0x25609513, flags, t, cookie, off, n)


def limits(size, bs_exp, tflags, structured_meta):
    return struct.pack(">QBHB", size, bs_exp, tflags, structured_meta)


RW = 0x1 | 0x4 | 0x8 | 0x20 | 0x40 | 0x100 | 0x400 | 0x800
request = {
    "read-write": limits(1 << 26, 9, RW, 3) + req(0, 0, 4096)
        + req(1, 4096, 512, 1) + b"\xab" * 512 + req(3, 0, 0),
    "trim-zero-status": limits(1 << 26, 12, RW, 3) + req(4, 0, 8192, 1)
        + req(6, 8192, 4096, 2) + req(6, 0, 4096, 16) + req(7, 0, 65536, 8)
        + req(5, 0, 4096) + req(2, 0, 0),
    "read-only": limits(1 << 20, 9, RW | 0x2, 0) + req(1, 0, 512) + b"\0" * 512
        + req(0, 1 << 20, 512),
    "bad": limits(4096, 9, RW, 0) + req(99, 0, 0) + req(0, 1, 3)
        + req(0, 0, 0xffffffff) + req(1, 0, 0xffffffff),
}

for target, seeds in (("fuzz-nbd-handshake", handshake),
                      ("fuzz-nbd-request", request)):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for n, b in seeds.items():
        with open(os.path.join(d, n), "wb") as f:
            f.write(b)
    print("%s: %d seeds in %s" % (target, len(seeds), d))
