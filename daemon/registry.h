/* registry.h — where the nodes of a cluster learn about each other: one
 * interface, two backends (a local directory for nodes on one host, the
 * default; etcd for a real cluster).
 *
 * What a node publishes, all under its liveness lease, so that everything
 * a dead node said disappears with it:
 *   - itself: name, NBD address(es), TLS identity;
 *   - each shared port it attaches: the seed's "alloclass$letter" lock and
 *     its value block (letter, allocation class);
 *   - each disk it serves: device name, size, logical block size,
 *     identity, where to connect.
 *
 * A watcher is told when anything changed; it then reads a snapshot.
 * Losing the registry must not stop I/O: it only stops discovery, and
 * registry_health() says so.
 */
#ifndef ALTPATHD_REGISTRY_H
#define ALTPATHD_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "altpath.h"

#define REG_NAME_MAX 64
#define REG_URI_MAX 512

struct reg_node {
  char name[REG_NAME_MAX];      /* ALPHA */
  char uri[REG_URI_MAX];        /* how peers reach its NBD server, as an
                                   NBD URI without export name:
                                   nbd://127.0.0.1:10809 or
                                   nbd+unix://?socket=/path; TLS: nbds:// */
  char tls_identity[REG_NAME_MAX]; /* PSK user or certificate CN; "" none */
};

struct reg_port {
  char node[REG_NAME_MAX];      /* who attaches it */
  char letter;                  /* 'B' */
  unsigned alloclass;           /* 4 (ports without one are node-local and
                                   not published) */
  char bus[REG_URI_MAX];        /* what the port is attached to, the same
                                   on every node that shares it (a
                                   directory of images: its real path);
                                   two nodes on one bus with different
                                   letters or classes is a configuration
                                   error on both */
};

struct reg_disk {
  char node[REG_NAME_MAX];      /* who serves it */
  char device[AP_NAME_MAX];     /* $4$DKB100 — also the NBD export name */
  char port_letter;
  unsigned alloclass;           /* 0: node-local port */
  uint64_t size;
  uint32_t block_size;
  char identity[AP_NAME_MAX];   /* "" where unknown */
};

/* A consistent picture of the live cluster (expired leases left out). */
struct reg_view {
  struct reg_node *nodes;
  size_t nnodes;
  struct reg_port *ports;
  size_t nports;
  struct reg_disk *disks;
  size_t ndisks;
};

struct registry_options {
  const char *backend;          /* "dir" (default) or "etcd" */
  const char *dir;              /* dir: default /run/altpath/registry */
  const char *endpoints;        /* etcd: "http://127.0.0.1:2379,http://..." */
  const char *prefix;           /* etcd key prefix, default "/altpath/" */
  /* etcd over https (NULL or "": not used): the CA of the members'
   * certificates (else the system's store), a client certificate */
  const char *ca_file, *cert_file, *key_file;
  /* etcd authentication (NULL or "": none): user and password */
  const char *username, *password;
  unsigned lease_ms;            /* liveness: a silent node is gone after
                                   this (default 3000) */
  const char *node;             /* this node's name */
};

struct registry;

/* Connect (etcd: grant the lease and start keeping it alive; dir: create
 * the directory and start the heartbeat).  Errors name the backend and
 * the address or directory. */
struct registry *registry_open (const struct registry_options *opt,
                                char *err, size_t errlen);
/* Publish or replace.  All under this node's lease. */
int registry_publish_node (struct registry *r, const struct reg_node *n);
int registry_publish_port (struct registry *r, const struct reg_port *p);
int registry_publish_disk (struct registry *r, const struct reg_disk *d);
int registry_withdraw_disk (struct registry *r, const char *device);
/* Read the live cluster.  Free with reg_view_free. */
int registry_snapshot (struct registry *r, struct reg_view *v);
void reg_view_free (struct reg_view *v);
/* Call fn (on a registry thread) whenever anything may have changed —
 * a put, a delete, a lease expiring.  Spurious calls are allowed. */
void registry_watch (struct registry *r, void (*fn) (void *opaque),
                     void *opaque);
/* true while the backend answers; msg says what is wrong otherwise. */
bool registry_health (struct registry *r, char *msg, size_t msglen);
const char *registry_backend (const struct registry *r);
/* Leave: withdraw everything this node published (a clean shutdown), stop
 * the threads, free.  NULL is a no-op. */
void registry_close (struct registry *r);

/* ------------------------------------------------------------------------
 * For the backends only: registry.c (the shared layer), registry-dir.c
 * and registry-etcd.c define REGISTRY_BACKEND before including this file
 * (tests/test-registry.c includes those three).  The rest of the daemon
 * never needs what follows.
 *
 *   registry_publish_*  ──► registry.c: check, encode as JSON ──► ops->put
 *   registry_snapshot   ──► ops->list ──► registry.c: decode, sort
 *   backend threads     ──► reg_changed() ──► registry.c's notify thread
 *                                              ──► the watcher callback
 */
#ifdef REGISTRY_BACKEND

/* What a record says.  With the node that published it and an id (node:
 * none, port: its letter, disk: its device name) it names the record. */
enum reg_kind { REG_KIND_NODE, REG_KIND_PORT, REG_KIND_DISK };

/* ops->list calls this for every record of every live node: node is the
 * publisher named by the record's file name or key, json its text.  A
 * non-zero return stops the listing and becomes list's result. */
typedef int reg_list_fn (void *opaque, enum reg_kind kind, const char *node,
                         const char *json, size_t len);

/* One backend.  Every function but open takes what open returned.  put,
 * del and list return 0, or -1 with errno set; none blocks longer than a
 * few seconds. */
struct reg_backend_ops {
  const char *name;                                   /* "dir", "etcd" */
  void *(*open) (struct registry *r, const struct registry_options *opt,
                 const char *node, unsigned lease_ms,
                 char *err, size_t errlen);
  int (*put) (void *be, enum reg_kind kind, const char *id, const char *json);
  int (*del) (void *be, enum reg_kind kind, const char *id);
  int (*list) (void *be, reg_list_fn *fn, void *opaque);
  bool (*health) (void *be, char *msg, size_t msglen);
  void (*close) (void *be);    /* withdraw everything, stop, free */
};

extern const struct reg_backend_ops reg_dir_ops;
extern const struct reg_backend_ops reg_etcd_ops;

/* registry.c, for the backends. */
void reg_changed (struct registry *r);   /* something may have changed:
                                            any thread, never blocks */
const char *reg_kind_dir (enum reg_kind kind); /* "nodes" "ports" "disks" */
/* id as a file name or key component: bytes other than letters, digits,
 * '$', '_' and '-' become %XX.  false if out is too small. */
bool reg_escape (const char *id, char *out, size_t outlen);

/* What this node published, kept by each backend to publish again (a new
 * lease, a registry directory someone emptied). */
struct reg_record {
  enum reg_kind kind;
  char *id;
  char *json;
};
struct reg_pubset {
  struct reg_record *v;
  size_t n;
};
int reg_pubset_put (struct reg_pubset *s, enum reg_kind kind, const char *id,
                    const char *json);
bool reg_pubset_del (struct reg_pubset *s, enum reg_kind kind,
                     const char *id);
const struct reg_record *reg_pubset_find (const struct reg_pubset *s,
                                          enum reg_kind kind, const char *id);
void reg_pubset_free (struct reg_pubset *s);

#endif /* REGISTRY_BACKEND */

#endif
