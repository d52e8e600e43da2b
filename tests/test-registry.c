/* test-registry.c — the registry (daemon/registry*.c) against its two
 * backends: a local directory, and real etcd processes started here on
 * loopback (one member, then a cluster of three that loses members).
 *
 * The registry's sources are compiled into this program (included below),
 * as test-config.c does with config.c: the daemon is not a library.
 *
 * A "node" is a registry handle: two in this process see each other; a
 * third runs in a child (this program again, with --child) so that it can
 * be killed with SIGKILL and its lease left to expire.
 *
 * Every process started here is stopped by its PID (and dies with us:
 * PR_SET_PDEATHSIG).  etcd missing: the etcd cases skip, saying so.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "../daemon/registry.c"
#include "../daemon/registry-dir.c"
#include "../daemon/registry-etcd.c"

#define ETCD "/usr/bin/etcd"

static const char *self;                 /* argv[0], for --child */
static char tmp[] = "/tmp/altpath-test-registry.XXXXXX";

/* ------------------------------------------------------------ helpers */

#define WAIT_FOR(cond, ms)                                       \
  ({                                                             \
    uint64_t wf_end_ = ap_now_ns () + AP_MS (ms);                \
    bool wf_ok_;                                                 \
    while (!(wf_ok_ = (cond)) && ap_now_ns () < wf_end_)         \
      usleep (10 * 1000);                                        \
    wf_ok_;                                                      \
  })

static double
since_ms (uint64_t t0)
{
  return (double) (ap_now_ns () - t0) / 1e6;
}

struct counter {
  atomic_int n;
};

static void
count_cb (void *opaque)
{
  atomic_fetch_add (&((struct counter *) opaque)->n, 1);
}

static int
fired (struct counter *c)
{
  return atomic_load (&c->n);
}

static void
fill_node (struct reg_node *n, const char *name, const char *uri)
{
  memset (n, 0, sizeof *n);
  snprintf (n->name, sizeof n->name, "%s", name);
  snprintf (n->uri, sizeof n->uri, "%s", uri);
  snprintf (n->tls_identity, sizeof n->tls_identity, "%s-psk", name);
}

static void
fill_port (struct reg_port *p, const char *node, char letter, unsigned cls)
{
  memset (p, 0, sizeof *p);
  snprintf (p->node, sizeof p->node, "%s", node);
  p->letter = letter;
  p->alloclass = cls;
  snprintf (p->bus, sizeof p->bus, "/srv/shared-%c", letter);
}

static void
fill_disk (struct reg_disk *d, const char *node, const char *device,
           uint64_t size)
{
  memset (d, 0, sizeof *d);
  snprintf (d->node, sizeof d->node, "%s", node);
  snprintf (d->device, sizeof d->device, "%s", device);
  d->port_letter = 'B';
  d->alloclass = 4;
  d->size = size;
  d->block_size = 4096;
  snprintf (d->identity, sizeof d->identity, "wwn-0x5000c500%s", node);
}

/* Publish a node record, port B (class 4) and one disk. */
static void
publish_all (struct registry *r, const char *node, const char *uri,
             const char *device)
{
  struct reg_node n;
  struct reg_port p;
  struct reg_disk d;
  fill_node (&n, node, uri);
  fill_port (&p, node, 'B', 4);
  fill_disk (&d, node, device, 1ull << 30);
  assert_int_equal (registry_publish_node (r, &n), 0);
  assert_int_equal (registry_publish_port (r, &p), 0);
  assert_int_equal (registry_publish_disk (r, &d), 0);
}

static const struct reg_disk *
find_disk (const struct reg_view *v, const char *node, const char *device)
{
  for (size_t i = 0; i < v->ndisks; i++)
    if (strcmp (v->disks[i].node, node) == 0
        && strcmp (v->disks[i].device, device) == 0)
      return &v->disks[i];
  return NULL;
}

static const struct reg_node *
find_node (const struct reg_view *v, const char *node)
{
  for (size_t i = 0; i < v->nnodes; i++)
    if (strcmp (v->nodes[i].name, node) == 0)
      return &v->nodes[i];
  return NULL;
}

/* How many records of node a snapshot holds; -1 if it fails. */
static int
records_of (struct registry *r, const char *node)
{
  struct reg_view v;
  if (registry_snapshot (r, &v) == -1)
    return -1;
  int n = 0;
  for (size_t i = 0; i < v.nnodes; i++)
    n += strcmp (v.nodes[i].name, node) == 0;
  for (size_t i = 0; i < v.nports; i++)
    n += strcmp (v.ports[i].node, node) == 0;
  for (size_t i = 0; i < v.ndisks; i++)
    n += strcmp (v.disks[i].node, node) == 0;
  reg_view_free (&v);
  return n;
}

static bool
has_disk (struct registry *r, const char *node, const char *device)
{
  struct reg_view v;
  if (registry_snapshot (r, &v) == -1)
    return false;
  bool yes = find_disk (&v, node, device) != NULL;
  reg_view_free (&v);
  return yes;
}

static uint64_t
disk_size (struct registry *r, const char *node, const char *device)
{
  struct reg_view v;
  if (registry_snapshot (r, &v) == -1)
    return 0;
  const struct reg_disk *d = find_disk (&v, node, device);
  uint64_t s = d ? d->size : 0;
  reg_view_free (&v);
  return s;
}

static bool
healthy (struct registry *r)
{
  char msg[1024];
  return registry_health (r, msg, sizeof msg);
}

static struct registry *
open_or_fail (const struct registry_options *o)
{
  char err[1024];
  struct registry *r = registry_open (o, err, sizeof err);
  if (!r)
    fail_msg ("registry_open (%s, node %s): %s", o->backend, o->node, err);
  return r;
}

/* ------------------------------------------------------- processes */

#define MAX_PROCS 16
static pid_t procs[MAX_PROCS];           /* every process started here */

static void
track (pid_t pid)
{
  for (size_t i = 0; i < MAX_PROCS; i++)
    if (procs[i] == 0) {
      procs[i] = pid;
      return;
    }
}

/* SIGKILL one of ours and reap it. */
static void
kill_proc (pid_t pid)
{
  if (pid <= 0)
    return;
  kill (pid, SIGKILL);
  waitpid (pid, NULL, 0);
  for (size_t i = 0; i < MAX_PROCS; i++)
    if (procs[i] == pid)
      procs[i] = 0;
}

static void
kill_all (void)
{
  for (size_t i = 0; i < MAX_PROCS; i++)
    if (procs[i] > 0)
      kill_proc (procs[i]);
}

/* Start argv[0] with output to log; dies with us. */
static pid_t
spawn (char *const argv[], const char *log, int out_fd)
{
  pid_t pid = fork ();
  assert_true (pid >= 0);
  if (pid == 0) {
    prctl (PR_SET_PDEATHSIG, SIGKILL);
    int fd = open (log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      dup2 (fd, 2);
      if (out_fd < 0)
        dup2 (fd, 1);
    }
    if (out_fd >= 0)
      dup2 (out_fd, 1);
    execv (argv[0], argv);
    _exit (127);
  }
  track (pid);
  return pid;
}

/* The child node: open, publish, say "ready", wait to be killed. */
static int
child_main (int argc, char **argv)
{
  /* --child BACKEND WHERE LEASE_MS [PREFIX] */
  if (argc != 5 && argc != 6)
    return 2;
  struct registry_options o = {
    .backend = argv[2], .node = "CHILD", .lease_ms = (unsigned) atoi (argv[4]),
    .prefix = argc == 6 ? argv[5] : NULL,
  };
  if (strcmp (argv[2], "dir") == 0)
    o.dir = argv[3];
  else
    o.endpoints = argv[3];
  char err[1024];
  struct registry *r = registry_open (&o, err, sizeof err);
  if (!r) {
    fprintf (stderr, "child: %s\n", err);
    return 1;
  }
  struct reg_node n;
  struct reg_disk d;
  fill_node (&n, "CHILD", "nbd://127.0.0.1:10999");
  fill_disk (&d, "CHILD", "CHILD$DKA100", 1 << 20);
  d.alloclass = 0;
  d.port_letter = 'A';
  if (registry_publish_node (r, &n) == -1
      || registry_publish_disk (r, &d) == -1) {
    fprintf (stderr, "child: publish: %m\n");
    return 1;
  }
  printf ("ready\n");
  fflush (stdout);
  for (;;)
    pause ();
}

/* Start a child node; returns once it has published. */
static pid_t
start_child (const char *backend, const char *where, unsigned lease_ms,
             const char *prefix)
{
  int p[2];
  char lease[16], log[PATH_MAX], line[16] = "";
  assert_int_equal (pipe2 (p, O_CLOEXEC), 0);
  snprintf (lease, sizeof lease, "%u", lease_ms);
  snprintf (log, sizeof log, "%s/child.log", tmp);
  char *argv[] = { (char *) self, (char *) "--child", (char *) backend,
                   (char *) where, lease, (char *) prefix, NULL };
  pid_t pid = spawn (argv, log, p[1]);
  close (p[1]);
  struct pollfd pfd = { .fd = p[0], .events = POLLIN };
  if (poll (&pfd, 1, 10000) == 1)
    (void) !read (p[0], line, sizeof line - 1);
  close (p[0]);
  if (strncmp (line, "ready", 5) != 0) {
    kill_proc (pid);
    fail_msg ("the child node did not start (see %s)", log);
  }
  return pid;
}

/* ---------------------------------------------------- shared checks */

/* Two nodes in this process see each other, are told of changes, and
 * vanish on close. */
static void
check_two_nodes (struct registry_options oa, struct registry_options ob)
{
  struct counter ca = { 0 }, cb = { 0 };
  struct reg_view v;
  char msg[1024];

  oa.node = "ALPHA";
  ob.node = "BETA";
  struct registry *a = open_or_fail (&oa);
  struct registry *b = open_or_fail (&ob);
  assert_string_equal (registry_backend (a), oa.backend);
  registry_watch (a, count_cb, &ca);
  registry_watch (b, count_cb, &cb);
  assert_true (registry_health (a, msg, sizeof msg));
  print_message ("  health: %s\n", msg);

  /* ALPHA publishes; BETA is told and sees all of it, field by field. */
  uint64_t t0 = ap_now_ns ();
  publish_all (a, "ALPHA", "nbd://127.0.0.1:10809", "$4$DKB100");
  assert_true (WAIT_FOR (fired (&cb) > 0, 1000));
  print_message ("  watcher told BETA of ALPHA's records in %.0f ms\n",
                 since_ms (t0));
  assert_int_equal (registry_snapshot (b, &v), 0);
  const struct reg_node *n = find_node (&v, "ALPHA");
  assert_non_null (n);
  assert_string_equal (n->uri, "nbd://127.0.0.1:10809");
  assert_string_equal (n->tls_identity, "ALPHA-psk");
  assert_int_equal (v.nports, 1);
  assert_string_equal (v.ports[0].node, "ALPHA");
  assert_int_equal (v.ports[0].letter, 'B');
  assert_int_equal (v.ports[0].alloclass, 4);
  assert_string_equal (v.ports[0].bus, "/srv/shared-B");
  const struct reg_disk *d = find_disk (&v, "ALPHA", "$4$DKB100");
  assert_non_null (d);
  assert_int_equal (d->port_letter, 'B');
  assert_int_equal (d->alloclass, 4);
  assert_int_equal (d->size, 1ull << 30);
  assert_int_equal (d->block_size, 4096);
  assert_string_equal (d->identity, "wwn-0x5000c500ALPHA");
  reg_view_free (&v);

  /* BETA publishes too, with a device name that needs escaping; ALPHA
   * sees both nodes, sorted. */
  atomic_store (&ca.n, 0);
  publish_all (b, "BETA", "nbds://127.0.0.1:10810", "$4$DKB100");
  struct reg_disk odd;
  fill_disk (&odd, "", "BETA$DKA1.x/y%z", 512 * 100);
  odd.alloclass = 0;
  odd.port_letter = 'A';
  assert_int_equal (registry_publish_disk (b, &odd), 0);
  assert_true (WAIT_FOR (fired (&ca) > 0, 1000));
  assert_true (WAIT_FOR (records_of (a, "BETA") == 4, 1000));
  assert_int_equal (registry_snapshot (a, &v), 0);
  assert_int_equal (v.nnodes, 2);
  assert_string_equal (v.nodes[0].name, "ALPHA");
  assert_string_equal (v.nodes[1].name, "BETA");
  assert_int_equal (v.nports, 2);
  assert_int_equal (v.ndisks, 3);
  assert_non_null (find_disk (&v, "BETA", "BETA$DKA1.x/y%z"));
  assert_non_null (find_disk (&v, "BETA", "$4$DKB100"));
  reg_view_free (&v);

  /* Publishing again replaces. */
  struct reg_disk grown;
  fill_disk (&grown, "ALPHA", "$4$DKB100", 2ull << 30);
  assert_int_equal (registry_publish_disk (a, &grown), 0);
  assert_true (WAIT_FOR (disk_size (b, "ALPHA", "$4$DKB100") == 2ull << 30,
                         1000));

  /* What is refused: another node's record; a port without a class is
   * not published at all. */
  struct reg_disk other;
  fill_disk (&other, "GAMMA", "$4$DKB900", 1 << 20);
  errno = 0;
  assert_int_equal (registry_publish_disk (a, &other), -1);
  assert_int_equal (errno, EINVAL);
  struct reg_port local;
  fill_port (&local, "ALPHA", 'A', 0);
  assert_int_equal (registry_publish_port (a, &local), 0);
  assert_int_equal (records_of (b, "ALPHA"), 3);

  /* Withdraw: BETA is told, the disk is gone. */
  atomic_store (&cb.n, 0);
  t0 = ap_now_ns ();
  assert_int_equal (registry_withdraw_disk (a, "$4$DKB100"), 0);
  assert_true (WAIT_FOR (fired (&cb) > 0, 1000));
  print_message ("  watcher told BETA of the withdrawal in %.0f ms\n",
                 since_ms (t0));
  assert_false (has_disk (b, "ALPHA", "$4$DKB100"));
  assert_true (has_disk (b, "BETA", "$4$DKB100"));
  assert_int_equal (records_of (b, "ALPHA"), 2);
  assert_int_equal (registry_withdraw_disk (a, "$4$DKB100"), 0);

  /* Close: ALPHA is gone from BETA's snapshot at once, and BETA is told. */
  atomic_store (&cb.n, 0);
  t0 = ap_now_ns ();
  registry_close (a);
  assert_int_equal (records_of (b, "ALPHA"), 0);
  assert_true (WAIT_FOR (fired (&cb) > 0, 1000));
  print_message ("  ALPHA gone at once on close; BETA told in %.0f ms\n",
                 since_ms (t0));
  assert_int_equal (records_of (b, "BETA"), 4);
  registry_close (b);
  registry_close (NULL);
}

/* A node killed with SIGKILL: its records go when its lease expires, and
 * the watcher is told. */
static void
check_sigkill (struct registry_options o, const char *where,
               unsigned child_lease_ms, unsigned max_ms)
{
  struct counter c = { 0 };
  o.node = "WATCHER";
  struct registry *r = open_or_fail (&o);
  registry_watch (r, count_cb, &c);

  pid_t pid = start_child (o.backend, where, child_lease_ms, o.prefix);
  assert_true (WAIT_FOR (records_of (r, "CHILD") == 2, 2000));

  /* The same node name while its owner lives: refused, naming it (dir;
   * etcd cannot tell a live owner from a dead one within its TTL). */
  if (strcmp (o.backend, "dir") == 0) {
    struct registry_options same = o;
    char err[1024];
    same.node = "CHILD";
    assert_null (registry_open (&same, err, sizeof err));
    assert_non_null (strstr (err, "already registered"));
    print_message ("  %s\n", err);
  }

  atomic_store (&c.n, 0);
  uint64_t t0 = ap_now_ns ();
  kill_proc (pid);
  assert_true (WAIT_FOR (records_of (r, "CHILD") == 0, max_ms));
  double gone = since_ms (t0);
  assert_true (WAIT_FOR (fired (&c) > 0, 500));
  print_message ("  SIGKILLed node gone from the snapshot after %.0f ms "
                 "(lease %u ms), watcher told\n", gone, child_lease_ms);
  registry_close (r);
}

/* -------------------------------------------------------- dir backend */

static void
test_dir_two_nodes (void **state)
{
  char dir[PATH_MAX - 64];
  snprintf (dir, sizeof dir, "%s/reg-two", tmp);
  struct registry_options o = { .backend = "dir", .dir = dir,
                                .lease_ms = 1000 };
  check_two_nodes (o, o);

  /* Both closed: no file left but the four subdirectories. */
  const char *subs[] = { "nodes", "ports", "disks", "leases" };
  for (size_t i = 0; i < 4; i++) {
    char p[PATH_MAX];
    snprintf (p, sizeof p, "%s/%s", dir, subs[i]);
    DIR *d = opendir (p);
    assert_non_null (d);
    struct dirent *de;
    while ((de = readdir (d)) != NULL)
      if (de->d_name[0] != '.')
        fail_msg ("left behind after close: %s/%s", p, de->d_name);
    closedir (d);
  }
}

static void
test_dir_sigkill (void **state)
{
  char dir[PATH_MAX - 64], lease[PATH_MAX];
  snprintf (dir, sizeof dir, "%s/reg-kill", tmp);
  struct registry_options o = { .backend = "dir", .dir = dir,
                                .lease_ms = 1000 };
  check_sigkill (o, dir, 1000, 1000 + 400);

  /* The dead node's files are removed lazily by a live one: 2 leases and
   * a second after its last renewal, at the next reaping pass. */
  o.node = "REAPER";
  struct registry *r = open_or_fail (&o);
  snprintf (lease, sizeof lease, "%s/leases/CHILD.json", dir);
  assert_true (WAIT_FOR (access (lease, F_OK) == -1, 5000));
  char disk[PATH_MAX];
  snprintf (disk, sizeof disk, "%s/disks/CHILD.CHILD$DKA100.json", dir);
  assert_int_equal (access (disk, F_OK), -1);
  registry_close (r);
}

/* Someone empties the registry directory: the node writes its lease and
 * records back at its next renewal. */
static void
test_dir_restore (void **state)
{
  char dir[PATH_MAX - 64], cmd[PATH_MAX + 32];
  snprintf (dir, sizeof dir, "%s/reg-restore", tmp);
  struct registry_options o = { .backend = "dir", .dir = dir,
                                .lease_ms = 600, .node = "ALPHA" };
  struct registry *a = open_or_fail (&o);
  o.node = "BETA";
  struct registry *b = open_or_fail (&o);
  publish_all (a, "ALPHA", "nbd://127.0.0.1:1", "$4$DKB100");
  assert_int_equal (records_of (b, "ALPHA"), 3);
  snprintf (cmd, sizeof cmd, "rm -rf '%s'/*", dir);
  assert_int_equal (system (cmd), 0);
  assert_int_equal (records_of (b, "ALPHA") <= 0, 1);
  assert_true (WAIT_FOR (records_of (b, "ALPHA") == 3, 1500));
  assert_true (WAIT_FOR (healthy (a) && healthy (b), 1000));
  registry_close (a);
  registry_close (b);
}

static void
test_bad_options (void **state)
{
  char err[1024];
  struct registry_options o = { .backend = "zookeeper", .node = "ALPHA" };
  assert_null (registry_open (&o, err, sizeof err));
  assert_non_null (strstr (err, "zookeeper"));
  o.backend = "dir";
  o.node = "AL.PHA";
  assert_null (registry_open (&o, err, sizeof err));
  assert_non_null (strstr (err, "AL.PHA"));
  o.node = "ALPHA";
  o.backend = "etcd";
  o.endpoints = "127.0.0.1:2379";
  assert_null (registry_open (&o, err, sizeof err));
  assert_non_null (strstr (err, "not an http://"));
  o.endpoints = "";
  assert_null (registry_open (&o, err, sizeof err));
  assert_non_null (strstr (err, "no endpoints"));

  /* Nothing listening: refused at once, naming the endpoint. */
  int s = socket (AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = { .sin_family = AF_INET,
                            .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
  socklen_t sl = sizeof sa;
  assert_int_equal (bind (s, (struct sockaddr *) &sa, sizeof sa), 0);
  assert_int_equal (getsockname (s, (struct sockaddr *) &sa, &sl), 0);
  char ep[64];
  snprintf (ep, sizeof ep, "http://127.0.0.1:%d", ntohs (sa.sin_port));
  o.endpoints = ep;
  uint64_t t0 = ap_now_ns ();
  assert_null (registry_open (&o, err, sizeof err));
  close (s);
  assert_true (since_ms (t0) < 3000);
  assert_non_null (strstr (err, ep));
  print_message ("  %s\n", err);
}

/* ------------------------------------------------------- etcd backend */

struct member {
  char name[8];
  int client, peer;             /* ports */
  char url[64], purl[64];
  char data[PATH_MAX], log[PATH_MAX];
  pid_t pid;
};

static int
free_port (void)
{
  int s = socket (AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = { .sin_family = AF_INET,
                            .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
  socklen_t sl = sizeof sa;
  assert_int_equal (bind (s, (struct sockaddr *) &sa, sizeof sa), 0);
  assert_int_equal (getsockname (s, (struct sockaddr *) &sa, &sl), 0);
  close (s);
  return ntohs (sa.sin_port);
}

static void
member_init (struct member *m, const char *cluster, int i)
{
  memset (m, 0, sizeof *m);
  snprintf (m->name, sizeof m->name, "m%d", i);
  m->client = free_port ();
  m->peer = free_port ();
  snprintf (m->url, sizeof m->url, "http://127.0.0.1:%d", m->client);
  snprintf (m->purl, sizeof m->purl, "http://127.0.0.1:%d", m->peer);
  snprintf (m->data, sizeof m->data, "%s/%s-%s.etcd", tmp, cluster, m->name);
  snprintf (m->log, sizeof m->log, "%s/%s-%s.log", tmp, cluster, m->name);
}

/* Short heartbeat and election so that losing the leader costs about a
 * second; etcd's minimum lease TTL (1.5 election timeouts) is then 1 s. */
static void
member_start (struct member *m, const char *initial, const char *token)
{
  char *argv[] = {
    (char *) ETCD, (char *) "--name", m->name, (char *) "--data-dir", m->data,
    (char *) "--listen-client-urls", m->url,
    (char *) "--advertise-client-urls", m->url,
    (char *) "--listen-peer-urls", m->purl,
    (char *) "--initial-advertise-peer-urls", m->purl,
    (char *) "--initial-cluster", (char *) initial,
    (char *) "--initial-cluster-state", (char *) "new",
    (char *) "--initial-cluster-token", (char *) token,
    (char *) "--heartbeat-interval", (char *) "50",
    (char *) "--election-timeout", (char *) "500",
    (char *) "--logger", (char *) "zap", (char *) "--log-level",
    (char *) "warn",
    NULL
  };
  m->pid = spawn (argv, m->log, -1);
}

static void
member_kill (struct member *m)
{
  kill_proc (m->pid);
  m->pid = 0;
}

static size_t
sink (char *p, size_t size, size_t n, void *opaque)
{
  struct re_buf *b = opaque;
  re_buf_add (b, p, size * n);
  return size * n;
}

/* GET url/health says {"health":"true"}: a member with a leader. */
static bool
member_ready (const struct member *m)
{
  char url[128];
  struct re_buf b = { 0 };
  snprintf (url, sizeof url, "%s/health", m->url);
  CURL *c = curl_easy_init ();
  curl_easy_setopt (c, CURLOPT_URL, url);
  curl_easy_setopt (c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt (c, CURLOPT_TIMEOUT_MS, 1000L);
  curl_easy_setopt (c, CURLOPT_WRITEFUNCTION, sink);
  curl_easy_setopt (c, CURLOPT_WRITEDATA, &b);
  bool ok = curl_easy_perform (c) == CURLE_OK && b.p
    && strstr (b.p, "\"true\"");
  curl_easy_cleanup (c);
  free (b.p);
  return ok;
}

/* Whether m is the leader (POST /v3/maintenance/status). */
static bool
member_is_leader (const struct member *m)
{
  char url[128];
  struct re_buf b = { 0 };
  snprintf (url, sizeof url, "%s/v3/maintenance/status", m->url);
  CURL *c = curl_easy_init ();
  curl_easy_setopt (c, CURLOPT_URL, url);
  curl_easy_setopt (c, CURLOPT_POSTFIELDS, "{}");
  curl_easy_setopt (c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt (c, CURLOPT_TIMEOUT_MS, 1000L);
  curl_easy_setopt (c, CURLOPT_WRITEFUNCTION, sink);
  curl_easy_setopt (c, CURLOPT_WRITEDATA, &b);
  bool leader = false;
  if (curl_easy_perform (c) == CURLE_OK && b.p) {
    json_object *o = json_tokener_parse (b.p), *h;
    if (o && json_object_object_get_ex (o, "header", &h))
      leader = re_int64 (o, "leader") != 0
        && re_int64 (o, "leader") == re_int64 (h, "member_id");
    json_object_put (o);
  }
  curl_easy_cleanup (c);
  free (b.p);
  return leader;
}

static bool
have_etcd (void)
{
  if (access (ETCD, X_OK) == 0)
    return true;
  print_message ("  SKIP: %s is not installed (apt-get install etcd-server "
                 "etcd-client); the etcd backend is not tested\n", ETCD);
  return false;
}

static void
test_etcd_one (void **state)
{
  if (!have_etcd ())
    skip ();
  struct member m;
  char initial[128];
  member_init (&m, "one", 0);
  snprintf (initial, sizeof initial, "%s=%s", m.name, m.purl);
  uint64_t t0 = ap_now_ns ();
  member_start (&m, initial, "altpath-test-one");
  if (!WAIT_FOR (member_ready (&m), 15000))
    fail_msg ("etcd did not start (see %s)", m.log);
  print_message ("  etcd up at %s in %.0f ms\n", m.url, since_ms (t0));

  struct registry_options o = { .backend = "etcd", .endpoints = m.url,
                                .prefix = "/test-one", .lease_ms = 2000 };
  check_two_nodes (o, o);
  /* TTL 2 s; etcd's lessor looks for expired leases every 0.5 s. */
  check_sigkill (o, m.url, 2000, 2000 + 1500);

  /* The lease is lost (revoked behind our back, as expiry would): the
   * next keepalive finds it gone, and the node grants a new one and
   * publishes everything again. */
  struct counter c = { 0 };
  o.node = "ALPHA";
  struct registry *a = open_or_fail (&o);
  o.node = "BETA";
  struct registry *b = open_or_fail (&o);
  registry_watch (b, count_cb, &c);
  publish_all (a, "ALPHA", "nbd://127.0.0.1:10809", "$4$DKB100");
  assert_int_equal (records_of (b, "ALPHA"), 3);
  struct re *ea = a->be;
  int64_t old = atomic_load (&ea->lease);
  char body[64], url[128];
  snprintf (body, sizeof body, "{\"ID\":\"%" PRId64 "\"}", old);
  snprintf (url, sizeof url, "%s/v3/lease/revoke", m.url);
  CURL *cu = curl_easy_init ();
  curl_easy_setopt (cu, CURLOPT_URL, url);
  curl_easy_setopt (cu, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt (cu, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt (cu, CURLOPT_WRITEFUNCTION, sink);
  struct re_buf ignored = { 0 };
  curl_easy_setopt (cu, CURLOPT_WRITEDATA, &ignored);
  assert_int_equal (curl_easy_perform (cu), CURLE_OK);
  curl_easy_cleanup (cu);
  free (ignored.p);
  t0 = ap_now_ns ();
  assert_int_equal (records_of (b, "ALPHA"), 0);
  assert_true (WAIT_FOR (records_of (b, "ALPHA") == 3, 3000));
  assert_true (atomic_load (&ea->lease) != old);
  assert_true (fired (&c) > 0);
  assert_true (healthy (a));
  print_message ("  lease revoked behind ALPHA's back; re-granted and "
                 "re-published in %.0f ms\n", since_ms (t0));
  registry_close (a);
  registry_close (b);
  member_kill (&m);
}

static void
test_etcd_cluster (void **state)
{
  if (!have_etcd ())
    skip ();
  struct member m[3];
  char initial[1024], eps[512], msg[1024];
  struct counter ca = { 0 }, cb = { 0 };

  for (int i = 0; i < 3; i++)
    member_init (&m[i], "three", i);
  snprintf (initial, sizeof initial, "%s=%s,%s=%s,%s=%s", m[0].name,
            m[0].purl, m[1].name, m[1].purl, m[2].name, m[2].purl);
  uint64_t t0 = ap_now_ns ();
  for (int i = 0; i < 3; i++)
    member_start (&m[i], initial, "altpath-test-three");
  for (int i = 0; i < 3; i++)
    if (!WAIT_FOR (member_ready (&m[i]), 15000))
      fail_msg ("etcd member %s did not start (see %s)", m[i].name, m[i].log);
  print_message ("  three etcd members up in %.0f ms\n", since_ms (t0));

  /* The hard case: the first endpoint, the one to be killed, is the
   * leader, so that writes in flight meet an election. */
  int first = 0;
  for (int i = 0; i < 3; i++)
    if (member_is_leader (&m[i]))
      first = i;
  struct member *k = &m[first];
  snprintf (eps, sizeof eps, "%s,%s,%s", k->url, m[(first + 1) % 3].url,
            m[(first + 2) % 3].url);

  struct registry_options o = { .backend = "etcd", .endpoints = eps,
                                .lease_ms = 2000, .node = "ALPHA" };
  struct registry *a = open_or_fail (&o);
  o.node = "BETA";
  struct registry *b = open_or_fail (&o);
  registry_watch (a, count_cb, &ca);
  registry_watch (b, count_cb, &cb);
  publish_all (a, "ALPHA", "nbd://127.0.0.1:10809", "$4$DKB100");
  publish_all (b, "BETA", "nbd://127.0.0.1:10810", "$4$DKB100");
  assert_true (WAIT_FOR (records_of (a, "BETA") == 3
                         && records_of (b, "ALPHA") == 3, 2000));

  /* The first endpoint dies: everything carries on through the others. */
  member_kill (k);
  print_message ("  killed %s (%s), the first endpoint and the leader\n",
                 k->name, k->url);
  atomic_store (&cb.n, 0);
  struct reg_disk d;
  fill_disk (&d, "ALPHA", "$4$DKB101", 1 << 20);
  t0 = ap_now_ns ();
  assert_int_equal (registry_publish_disk (a, &d), 0);
  print_message ("  published through the others in %.0f ms\n",
                 since_ms (t0));
  assert_true (WAIT_FOR (fired (&cb) > 0, 3000));
  assert_true (WAIT_FOR (has_disk (b, "ALPHA", "$4$DKB101"), 3000));
  atomic_store (&ca.n, 0);
  assert_int_equal (registry_withdraw_disk (b, "$4$DKB100"), 0);
  assert_true (WAIT_FOR (fired (&ca) > 0, 3000));
  assert_false (has_disk (a, "BETA", "$4$DKB100"));
  /* Leases are kept alive: still there after more than a TTL. */
  usleep (2500 * 1000);
  assert_int_equal (records_of (a, "BETA"), 2);
  assert_int_equal (records_of (b, "ALPHA"), 4);
  assert_true (healthy (a) && healthy (b));

  /* Every member dies: health says so, calls fail fast, nothing hangs. */
  for (int i = 0; i < 3; i++)
    member_kill (&m[i]);
  t0 = ap_now_ns ();
  assert_true (WAIT_FOR (!healthy (a) && !healthy (b), 5000));
  assert_false (registry_health (a, msg, sizeof msg));
  print_message ("  all members killed; health false after %.0f ms: %s\n",
                 since_ms (t0), msg);
  for (int i = 0; i < 3; i++)
    assert_non_null (strstr (msg, m[i].url));
  struct reg_view v;
  fill_disk (&d, "ALPHA", "$4$DKB102", 1 << 20);
  t0 = ap_now_ns ();
  assert_int_equal (registry_publish_disk (a, &d), -1);
  assert_true (since_ms (t0) < 3000);
  t0 = ap_now_ns ();
  assert_int_equal (registry_snapshot (b, &v), -1);
  assert_true (since_ms (t0) < 3000);
  t0 = ap_now_ns ();
  assert_int_equal (registry_withdraw_disk (a, "$4$DKB101"), -1);
  assert_true (since_ms (t0) < 3000);
  t0 = ap_now_ns ();
  assert_false (registry_health (b, msg, sizeof msg));
  assert_true (since_ms (t0) < 100);

  /* They come back (same data): health returns, and what was published
   * meanwhile (and withdrawn meanwhile) shows. */
  atomic_store (&cb.n, 0);
  t0 = ap_now_ns ();
  for (int i = 0; i < 3; i++)
    member_start (&m[i], initial, "altpath-test-three");
  assert_true (WAIT_FOR (healthy (a) && healthy (b), 15000));
  print_message ("  members restarted; health back after %.0f ms\n",
                 since_ms (t0));
  assert_true (WAIT_FOR (has_disk (b, "ALPHA", "$4$DKB102")
                         && !has_disk (b, "ALPHA", "$4$DKB101"), 10000));
  assert_true (WAIT_FOR (records_of (b, "ALPHA") == 4
                         && records_of (a, "BETA") == 2, 5000));
  assert_true (WAIT_FOR (fired (&cb) > 0, 5000));
  print_message ("  records re-published after %.0f ms\n", since_ms (t0));

  registry_close (a);
  assert_true (WAIT_FOR (records_of (b, "ALPHA") == 0, 3000));
  registry_close (b);
  for (int i = 0; i < 3; i++)
    member_kill (&m[i]);
}

/* ------------------------------------------------------------- main */

static int
setup (void **state)
{
  return mkdtemp (tmp) ? 0 : -1;
}

static int
teardown (void **state)
{
  char cmd[PATH_MAX + 16];
  kill_all ();
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", tmp);
  return system (cmd) == 0 ? 0 : -1;
}

int
main (int argc, char **argv)
{
  self = argv[0];
  if (argc > 1 && strcmp (argv[1], "--child") == 0)
    return child_main (argc, argv);
  ap_log_quiet = true;
  ap_log_init_from_env ();
  curl_global_init (CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {
    cmocka_unit_test (test_bad_options),
    cmocka_unit_test (test_dir_two_nodes),
    cmocka_unit_test (test_dir_sigkill),
    cmocka_unit_test (test_dir_restore),
    cmocka_unit_test (test_etcd_one),
    cmocka_unit_test (test_etcd_cluster),
  };
  int rc = cmocka_run_group_tests (tests, setup, teardown);
  kill_all ();
  return rc;
}
