#!/usr/bin/env python3
# make-seeds.py — write the seed corpora of the fuzz targets:
#   fuzzing/corpus/fuzz-nbd-handshake/*   fuzzing/corpus/fuzz-nbd-request/*
#   fuzzing/corpus/fuzz-config/*          fuzzing/corpus/fuzz-registry/*
# Each seed is a small, valid input (see the input formats at the top of
# fuzzing/fuzz-*.c), plus a few broken ones.  Rerun after changing a
# format; the output is committed.  (fuzz-control's seeds are written by
# hand; files named regress-* are inputs that once crashed a parser, kept
# by hand too.)
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

# ------------------------------------------------------------ config
# Paths are relative: fuzz-config.c makes keys.psk, pki/ and shared/ (with
# disk100.img, disk101.img...) beside the file it loads.
NODE = "[node]\nname = alpha\n"
LISTEN = "[listen]\naddress = 127.0.0.1:10809\n"

config = {
    "minimal": NODE + LISTEN,
    "example": open(os.path.join(here, "..", "examples", "altpath.conf"), "rb").read(),
    # The same with the PSK file there is, so that it is accepted.
    "example-here": open(os.path.join(here, "..", "examples", "altpath.conf"), "rb")
        .read().replace(b"/etc/altpath/keys.psk", b"keys.psk"),
    "full": """; every section, every key, all valid here
[node]
name = alpha
alloclass = 7
[listen]
address = 127.0.0.1:10809
tls = off
[listen]
address = unix:nbd.sock
[listen]
address = [::1]:10810
tls = on
[listen]
address = 0.0.0.0:10811
tls = require
[tls]
psk-file = keys.psk
cert-dir = pki
verify-peer = yes
allow = beta, gamma delta
priority = NORMAL:%SERVER_PRECEDENCE:-VERS-ALL:+VERS-TLS1.3
[units]
request-timeout-ms = 2000
verify-timeout-ms = 3000
[port B]
alloclass = 4
glob = shared/disk*.img
read-only = no
allow = beta
bus = /srv/shared
202 = shared/archive202.img, read-only, allow=beta gamma
[port a]
0 = local/disk0
1 = "local/scratch,1.img", rw, identity=naa.5000c500a1b2c3d4
[control]
socket = control.sock
group = root
[metrics]
listen = 0.0.0.0:9469
allow-remote = yes
""",
    "cluster-etcd": NODE + LISTEN + """[registry]
backend = etcd
endpoints = http://127.0.0.1:2379,http://127.0.0.2:2379
prefix = /altpath/
lease-ms = 3000
[cluster]
advertise = nbds://10.0.0.1:10809
local-socket = local.sock
state-file = alpha.json
local-tcp = 127.0.0.1:10810
request-timeout-ms = 1000
verify-timeout-ms = 30000
checker-interval-ms = 500
failback-ms = 5000
direct-wait-ms = 1000
connections = 2
deadline-ms = 2000
fence-wait-ms = 10000
queue-if-no-path = yes
devices = none
fault-dir = faults
psk-file = keys.psk
username = alpha
cert-dir = pki
[port B]
alloclass = 4
glob = shared/disk*.img
""",
    "cluster-dir": "[node]\nname = BETA_2\n[listen]\naddress = unix:/run/b.sock\n"
        "[registry]\nbackend = dir\ndir = registry\n[metrics]\n",
    "crlf-bom-comments": "\xef\xbb\xbf# comment\r\n[node] ; inline\r\nName = Alpha ; c\r\n"
        "\r\n[listen]\r\n  address = localhost:10809\r\n",
    "metrics-v6": NODE + LISTEN + "[metrics]\nlisten = [::1]:9470\n",
    # Broken, each a different refusal.
    "bad-section": NODE + LISTEN + "[port AB]\n",
    "bad-twice": NODE + "name = B\n" + LISTEN,
    "bad-disk": NODE + LISTEN + "[port B]\n100 = \"/dev/null\n",
    "bad-allow": NODE + LISTEN + "[tls]\npsk-file = keys.psk\nallow = alice\n"
        "[port A]\n1 = local/disk0, allow=mallory\n",
    "bad-priority": NODE + LISTEN + "[tls]\npsk-file = keys.psk\n"
        "priority = NORMAL:-VERS-ALL:+VERS-TLS9.9\n",
    "bad-address": NODE + "[listen]\naddress = [fe80::zz]:1\n",
    "bad-nul": NODE + "[listen]\naddress = 127.0.0.1\0:1\n",
    "bad-long-line": NODE + LISTEN + "[port B]\n1 = /" + "x" * 4400 + "\n",
    "bad-dup-disk": NODE + LISTEN + "[port B]\n1 = local/disk0\n[port C]\n"
        "1 = local/../local/disk0\n",
    "bad-no-node": LISTEN,
}

# ---------------------------------------------------------- registry
# Record seeds: mode 0, a kind byte (0 node, 1 port, 2 disk), the node.
# Real answers of etcd 3.4's JSON gateway, captured on loopback (the
# records as registry.c encodes them).
def b64(t):
    import base64
    return base64.b64encode(t.encode("latin-1")).decode()

HDR = ('"header":{"cluster_id":"514823073863021038","member_id":'
       '"13058219233484931170","revision":"4","raft_term":"2"}')
REC_NODE = ('{"v":1,"kind":"node","node":"ALPHA","uri":"nbd://127.0.0.1:10809",'
            '"tls_identity":""}')
REC_PORT = ('{"v":1,"kind":"port","node":"ALPHA","letter":"B","alloclass":4,'
            '"bus":"/srv/shared"}')
REC_DISK = ('{"v":1,"kind":"disk","node":"ALPHA","device":"$4$DKB100",'
            '"port_letter":"B","alloclass":4,"size":67108864,"block_size":512,'
            '"identity":"naa.5000c500a1b2c3d4"}')


def kv(key, value, lease="27762674292355334"):
    return ('{"key":"%s","create_revision":"4","mod_revision":"4",'
            '"version":"1","value":"%s","lease":"%s"}' % (b64(key), b64(value), lease))


def range_answer(kvs):
    return "{%s,\"kvs\":[%s],\"count\":\"%d\"}" % (HDR, ",".join(kvs), len(kvs))


WATCH_CREATED = '{"result":{%s,"created":true}}' % HDR
WATCH_PUT = ('{"result":{%s,"events":[{"kv":{"key":"%s","create_revision":"5",'
             '"mod_revision":"5","version":"1","value":"%s"}}]}}'
             % (HDR, b64("/altpath/nodes/BETA"), b64(REC_NODE.replace("ALPHA", "BETA"))))
WATCH_DEL = ('{"result":{%s,"events":[{"type":"DELETE","kv":{"key":"%s",'
             '"mod_revision":"6"}}]}}' % (HDR, b64("/altpath/nodes/BETA")))

registry = {
    "record-node": b"\0\0ALPHA\n" + REC_NODE.encode(),
    "record-port": b"\0\1ALPHA\n" + REC_PORT.encode(),
    "record-disk": b"\0\2ALPHA\n" + REC_DISK.encode(),
    "record-newer": b"\0\2ALPHA\n" + REC_DISK.replace('"v":1', '"v":2,"extra":[1,{"a":null}]').encode(),
    "record-bad-kind": b"\0\0ALPHA\n" + REC_PORT.encode(),
    "record-bad-node": b"\0\1BETA\n" + REC_PORT.encode(),
    "record-bad-size": b"\0\2ALPHA\n" + REC_DISK.replace("67108864", "-1").encode(),
    "record-nul": b"\0\0ALPHA\n" + REC_NODE.replace("nbd:", "nbd\\u0000:").encode(),
    "range": b"\1" + range_answer([
        kv("/altpath/disks/ALPHA/$4$DKB100", REC_DISK),
        kv("/altpath/nodes/ALPHA", REC_NODE),
        kv("/altpath/ports/ALPHA/B", REC_PORT)]).encode(),
    "range-empty": b"\1{%s}" % HDR.encode(),
    "range-odd-keys": b"\1" + range_answer([
        kv("/altpath/ports/BETA/C", REC_PORT.replace("ALPHA", "BETA").replace('"B"', '"C"')),
        kv("/altpath/nodes/ALPHA/x", REC_NODE), kv("/altpath/ports/ALPHA", REC_PORT),
        kv("/altpath/disks//D", REC_DISK), kv("/other/nodes/A", REC_NODE),
        kv("/altpath/nodes/" + "N" * 70, REC_NODE)]).encode()
        .replace(b'"lease":"27762674292355334"}]', b'"lease":"1"},{"key":"!!","value":7}]'),
    "range-error": b'\1{"error":"etcdserver: requested lease not found",'
        b'"message":"etcdserver: requested lease not found","code":5}',
    "watch": b"\2" + "\n".join([WATCH_CREATED, WATCH_PUT, WATCH_DEL]).encode() + b"\n",
    "watch-canceled": b"\2" + WATCH_CREATED.encode() + b'\n{"result":{%s,"canceled":true,'
        b'"cancel_reason":"mvcc: required revision has been compacted"}}\n' % HDR.encode(),
    "watch-error": b'\2{"error":{"grpc_code":14,"http_code":503,"message":'
        b'"etcdserver: no leader","http_status":"Service Unavailable"}}\n',
    "grant": b'\3{%s,"ID":"27762674292355334","TTL":"3"}' % HDR.encode(),
    "grant-number": b'\3{"ID":27762674292355334,"TTL":5}',
    "grant-error": b'\3{"error":"etcdserver: too many requests","code":8}',
    "grant-huge-ttl": b'\3{"ID":"1","TTL":"9223372036854775807"}',
    "keepalive": b'\4{"result":{%s,"ID":"27762674292355334","TTL":"3"}}' % HDR.encode(),
    "keepalive-gone": b'\4{"result":{%s,"ID":"12345"}}' % HDR.encode(),
    "login": b'\5{%s,"token":"TMLAyDWoeqRodlaA.14"}' % HDR.encode(),
    "login-refused": b'\5{"error":"etcdserver: authentication failed, invalid '
        b'user ID or password","message":"etcdserver: authentication failed, '
        b'invalid user ID or password","code":3}',
    "login-odd-token": b'\5{"token":"a\\r\\nInjected: yes"}',
    "watch-token-lapsed": b'\2{"result":{%s,"watch_id":"-1","created":true,'
        b'"canceled":true,"cancel_reason":"rpc error: code = Unauthenticated '
        b'desc = etcdserver: invalid auth token"}}\n' % HDR.encode(),
}

for target, seeds in (("fuzz-nbd-handshake", handshake),
                      ("fuzz-nbd-request", request),
                      ("fuzz-config", config),
                      ("fuzz-registry", registry)):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for n, b in seeds.items():
        with open(os.path.join(d, n), "wb") as f:
            f.write(b if isinstance(b, bytes) else b.encode("latin-1"))
    print("%s: %d seeds in %s" % (target, len(seeds), d))
