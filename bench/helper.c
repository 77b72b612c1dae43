/*
 * bench-helper: the small compiled programs the benchmark harness (bench/bench.py) supervises
 * and measures with. Compiled by the harness with `cc -O2`, so every supervisor is measured
 * with the same programs and the same clock.
 *
 * Every time stamp is CLOCK_MONOTONIC in nanoseconds, written as one line
 * `KIND NAME PID NS` with a single write(2) on an O_APPEND file (a "marks" file), so lines from
 * concurrent processes never interleave and the harness can compare stamps across processes.
 *
 * Modes (argv[1]):
 *   prog NAME MARKS [ignore-term]   idle program: stamps `start`, then sleeps in pause(2).
 *                                   On SIGTERM it stamps `term` and exits 0 at once, or, with
 *                                   ignore-term, stamps `term` and keeps running.
 *   (invoked as `run`)              the same, configured the way s6-supervise runs `./run`:
 *                                   NAME is the current directory's name, MARKS is
 *                                   $BENCH_MARKS, and a file `ignore-term` in the current
 *                                   directory means ignore-term.
 *   exec MARKS CMD [ARG...]         stamps `exec` with its own pid, then execv(2)s CMD: the stamp
 *                                   taken right before the supervisor's first instruction.
 *   logwrite MARKS BYTES LINELEN    writes BYTES of numbered lines `%010llu xxx…\n` (LINELEN bytes
 *                                   each) through stdio to stdout, stamping `logstart`/`logend`.
 *   logcheck MARKS LINES LINELEN    reads stdin; each line must end with the next numbered line
 *                                   written by logwrite (any prefix allowed, other lines
 *                                   counted apart). Stamps `logfirst`/`loglast`, writes a
 *                                   `logresult` line, then drains stdin to EOF.
 *   count MARKS N                   reads lines from stdin (one per MQTT message); stamps `warm` at
 *                                   line 1 (the warm-up message), `first` at line 2 and `done` at
 *                                   line N+1, and `counted` with the total at EOF.
 *   sockpub SOCKET FIFO MARKS DEV PADLEN
 *                                   connects to the bridge socket; for every number N read from
 *                                   the FIFO, stamps `pubstart`, writes N `state` lines for DEV
 *                                   (seq plus a pad of PADLEN bytes) and stamps `pubend`.
 *   cmdrecv SOCKET MARKS DEV OUT    connects to the bridge socket, says hello for DEV, stamps
 *                                   `hello` when the bridge acknowledged it; for each `cmd` whose
 *                                   cmd_id is `SEQ-SENTNS` appends `SEQ LATENCYNS` to OUT and
 *                                   answers with a cmd_result.
 *   latency OUT                     reads command payloads `{"id":"SEQ-SENTNS",…}` (from
 *                                   mosquitto_sub) on stdin and appends `SEQ LATENCYNS` to OUT:
 *                                   the direct-path baseline.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static const char *g_name = "-";
static const char *g_marks;
static int g_ignore_term;

static unsigned long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* Async-signal-safe decimal formatting (the SIGTERM handler stamps too). */
static size_t put_u64(char *p, unsigned long long v) {
  char tmp[24];
  size_t n = 0, i;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (i = 0; i < n; i++) p[i] = tmp[n - 1 - i];
  return n;
}

static size_t put_str(char *p, const char *s) {
  size_t n = strlen(s);
  memcpy(p, s, n);
  return n;
}

/* One line, one write(2), O_APPEND: atomic with respect to other writers of the same file. */
static void mark_full(const char *kind, const char *name, unsigned long long a, unsigned long long b) {
  char line[512];
  size_t n = 0;
  int fd;
  if (!g_marks) return;
  n += put_str(line + n, kind);
  line[n++] = ' ';
  n += put_str(line + n, name);
  line[n++] = ' ';
  n += put_u64(line + n, a);
  line[n++] = ' ';
  n += put_u64(line + n, b);
  line[n++] = '\n';
  fd = open(g_marks, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  (void)!write(fd, line, n);
  close(fd);
}

static void mark(const char *kind) { mark_full(kind, g_name, (unsigned long long)getpid(), now_ns()); }

static void on_term(int sig) {
  (void)sig;
  int saved = errno;
  mark("term");
  if (!g_ignore_term) _exit(0);
  errno = saved;
}

static int run_prog(void) {
  struct sigaction sa;
  mark("start");
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  /* Supervisors may start us with signals blocked or ignored; undo that for SIGTERM. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigprocmask(SIG_UNBLOCK, &set, NULL);
  for (;;) pause();
  return 0;
}

static int mode_exec(int argc, char **argv) {
  if (argc < 4) return 64;
  g_marks = argv[2];
  g_name = "supervisor";
  mark("exec");
  execv(argv[3], argv + 3);
  perror("bench-helper: execv");
  return 127;
}

static int mode_logwrite(int argc, char **argv) {
  if (argc < 5) return 64;
  g_marks = argv[2];
  g_name = "logwrite";
  unsigned long long bytes = strtoull(argv[3], NULL, 10);
  int linelen = atoi(argv[4]);
  if (linelen < 16 || linelen > 4000) return 64;
  char body[4096];
  memset(body, 'x', sizeof body);
  body[linelen - 12] = 0; /* 10 digits + space + body + newline = linelen */
  unsigned long long lines = bytes / (unsigned long long)linelen, i;
  mark("logstart");
  for (i = 0; i < lines; i++) {
    if (printf("%010llu %s\n", i, body) < 0) return 1;
  }
  if (fflush(stdout) != 0) return 1;
  mark("logend");
  return 0;
}

/* Checks one complete line (without its newline) against the writer's format. */
struct logstate {
  unsigned long long expect, good, bad, other, lines_total;
  int linelen;
  const char *body;
};

static void check_line(struct logstate *s, const char *l, size_t n) {
  size_t payload = (size_t)s->linelen - 1;
  s->lines_total++;
  if (n >= payload) {
    const char *p = l + n - payload;
    int ok = 1, i;
    for (i = 0; i < 10; i++)
      if (p[i] < '0' || p[i] > '9') ok = 0;
    if (ok && p[10] == ' ' && memcmp(p + 11, s->body, payload - 11) == 0) {
      unsigned long long seq = strtoull(p, NULL, 10);
      if (seq == s->expect) s->good++;
      else s->bad++;
      s->expect = seq + 1;
      return;
    }
  }
  /* A mangled or split program line still carries part of the body; supervisor events do not. */
  if (memmem(l, n, "xxxxxxxx", 8)) s->bad++;
  else s->other++;
}

static int mode_logcheck(int argc, char **argv) {
  if (argc < 5) return 64;
  g_marks = argv[2];
  g_name = "logcheck";
  unsigned long long want = strtoull(argv[3], NULL, 10);
  struct logstate s = {0};
  s.linelen = atoi(argv[4]);
  char *body = malloc((size_t)s.linelen);
  memset(body, 'x', (size_t)s.linelen);
  s.body = body;
  size_t cap = 1 << 20, len = 0;
  char *buf = malloc(cap);
  unsigned long long bytes = 0;
  int reported = 0, first = 1;
  for (;;) {
    if (len == cap) { /* a line longer than the buffer: count it as other and drop it */
      s.other++;
      len = 0;
    }
    ssize_t r = read(0, buf + len, cap - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    if (first) {
      mark("logfirst");
      first = 0;
    }
    bytes += (unsigned long long)r;
    len += (size_t)r;
    char *start = buf, *nl;
    while ((nl = memchr(start, '\n', (size_t)(buf + len - start)))) {
      check_line(&s, start, (size_t)(nl - start));
      start = nl + 1;
    }
    len = (size_t)(buf + len - start);
    memmove(buf, start, len);
    if (!reported && s.expect >= want) {
      mark("loglast");
      char line[256];
      snprintf(line, sizeof line, "%llu %llu %llu %llu %llu", s.good, s.bad, s.other, want - (s.good < want ? s.good : want), bytes);
      mark_full("logresult", line, 0, now_ns());
      reported = 1;
    }
  }
  if (!reported) {
    char line[256];
    snprintf(line, sizeof line, "%llu %llu %llu %llu %llu", s.good, s.bad, s.other, want - (s.good < want ? s.good : want), bytes);
    mark_full("logresult", line, 1, now_ns());
  }
  return 0;
}

static int mode_count(int argc, char **argv) {
  if (argc < 4) return 64;
  g_marks = argv[2];
  g_name = "count";
  /* Line 1 is the warm-up message (proves the subscription is live); lines 2..N+1 are timed. */
  unsigned long long want = strtoull(argv[3], NULL, 10), seen = 0;
  char buf[65536];
  for (;;) {
    ssize_t r = read(0, buf, sizeof buf), i;
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    for (i = 0; i < r; i++) {
      if (buf[i] != '\n') continue;
      seen++;
      if (seen == 1) mark("warm");
      if (seen == 2) mark("first");
      if (seen == want + 1) mark("done");
    }
  }
  mark_full("counted", "count", seen, now_ns());
  return 0;
}

static int connect_unix(const char *path) {
  struct sockaddr_un a;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof a.sun_path) return -1;
  strcpy(a.sun_path, path);
  /* The bridge may still be binding its socket when we start: retry for up to 10 s. */
  for (int i = 0; i < 2000; i++) {
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
    usleep(5000);
  }
  return -1;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int mode_sockpub(int argc, char **argv) {
  if (argc < 7) return 64;
  const char *sock = argv[2], *fifo = argv[3];
  g_marks = argv[4];
  const char *dev = argv[5];
  int padlen = atoi(argv[6]);
  g_name = "sockpub";
  signal(SIGPIPE, SIG_IGN);
  int fd = connect_unix(sock);
  if (fd < 0) {
    perror("bench-helper: connecting to the bridge socket");
    return 1;
  }
  char hello[512];
  snprintf(hello, sizeof hello, "{\"op\":\"hello\",\"devices\":[\"%s\"]}\n", dev);
  if (write_all(fd, hello, strlen(hello))) return 1;
  mark("connected");
  char *pad = malloc((size_t)padlen + 1);
  memset(pad, 'p', (size_t)padlen);
  pad[padlen] = 0;
  /* O_RDWR: we hold a writer ourselves, so the FIFO never reports EOF between batches. */
  int ffd = open(fifo, O_RDWR | O_CLOEXEC);
  if (ffd < 0) return 1;
  char cmd[256], drain[65536];
  size_t cmdlen = 0;
  unsigned long long seq = 0;
  for (;;) {
    /* Between batches, keep reading the bridge's replies: a program that stops reading its
     * socket makes the bridge drop what it sends (by design), which is not what we measure. */
    struct pollfd w[2] = {{ffd, POLLIN, 0}, {fd, POLLIN, 0}};
    if (poll(w, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (w[1].revents & (POLLIN | POLLHUP)) {
      ssize_t r = read(fd, drain, sizeof drain);
      if (r <= 0) return r == 0 ? 0 : 1;
      if (memmem(drain, (size_t)r, "\"error\"", 7)) (void)!write(2, drain, (size_t)r);
    }
    if (!(w[0].revents & POLLIN)) continue;
    ssize_t got = read(ffd, cmd + cmdlen, sizeof cmd - 1 - cmdlen);
    if (got <= 0) continue;
    cmdlen += (size_t)got;
    cmd[cmdlen] = 0;
    char *nl = strchr(cmd, '\n');
    if (!nl) {
      if (cmdlen == sizeof cmd - 1) cmdlen = 0;
      continue;
    }
    unsigned long long n = strtoull(cmd, NULL, 10), i;
    cmdlen -= (size_t)(nl + 1 - cmd);
    memmove(cmd, nl + 1, cmdlen);
    /* Build the whole batch first so that the timed part is only the socket writes. */
    size_t per = 128 + strlen(dev) + (size_t)padlen, len = 0;
    char *batch = malloc(per * n + 1);
    for (i = 0; i < n; i++)
      len += (size_t)sprintf(batch + len, "{\"op\":\"state\",\"device_id\":\"%s\",\"state\":{\"seq\":\"%07llu\",\"pad\":\"%s\"}}\n", dev, seq++ % 10000000, pad);
    mark("pubstart");
    size_t off = 0;
    while (off < len) {
      struct pollfd p = {fd, POLLIN | POLLOUT, 0};
      if (poll(&p, 1, -1) < 0 && errno != EINTR) return 1;
      if (p.revents & POLLIN) { /* replies must not back up the bridge's writer */
        ssize_t r = read(fd, drain, sizeof drain);
        if (r == 0) return 1;
        if (r > 0 && memmem(drain, (size_t)r, "\"error\"", 7)) (void)!write(2, drain, (size_t)r);
      }
      if (p.revents & POLLOUT) {
        ssize_t wr = write(fd, batch + off, len - off);
        if (wr < 0 && errno != EINTR && errno != EAGAIN) return 1;
        if (wr > 0) off += (size_t)wr;
      }
      if (p.revents & (POLLERR | POLLHUP)) return 1;
    }
    mark("pubend");
    free(batch);
  }
}

static int mode_cmdrecv(int argc, char **argv) {
  if (argc < 6) return 64;
  const char *sock = argv[2];
  g_marks = argv[3];
  const char *dev = argv[4], *out = argv[5];
  g_name = "cmdrecv";
  signal(SIGPIPE, SIG_IGN);
  int fd = connect_unix(sock);
  if (fd < 0) {
    perror("bench-helper: connecting to the bridge socket");
    return 1;
  }
  int ofd = open(out, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  char hello[512];
  snprintf(hello, sizeof hello, "{\"op\":\"hello\",\"id\":\"bench-hello\",\"devices\":[\"%s\"]}\n", dev);
  if (write_all(fd, hello, strlen(hello))) return 1;
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  int said = 0;
  for (;;) {
    if (len == cap) len = 0;
    ssize_t r = read(fd, buf + len, cap - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return r == 0 ? 0 : 1;
    unsigned long long t = now_ns();
    len += (size_t)r;
    char *start = buf, *nl;
    while ((nl = memchr(start, '\n', (size_t)(buf + len - start)))) {
      *nl = 0;
      if (!said && strstr(start, "bench-hello")) {
        mark("hello");
        said = 1;
      }
      char *id = strstr(start, "\"cmd_id\":\"");
      if (id && strstr(start, "\"op\":\"cmd\"")) {
        id += 10;
        char *end = strchr(id, '"');
        char *dash = strchr(id, '-');
        if (end && dash && dash < end) {
          unsigned long long seq = strtoull(id, NULL, 10), sent = strtoull(dash + 1, NULL, 10);
          char line[64], reply[256];
          size_t n = put_u64(line, seq);
          line[n++] = ' ';
          n += put_u64(line + n, t - sent);
          line[n++] = '\n';
          (void)!write(ofd, line, n);
          *end = 0;
          int m = snprintf(reply, sizeof reply, "{\"op\":\"cmd_result\",\"device_id\":\"%s\",\"cmd_id\":\"%s\",\"status\":\"success\"}\n", dev, id);
          if (write_all(fd, reply, (size_t)m)) return 1;
        }
      }
      start = nl + 1;
    }
    len = (size_t)(buf + len - start);
    memmove(buf, start, len);
  }
}

static int mode_latency(int argc, char **argv) {
  if (argc < 3) return 64;
  int ofd = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  char buf[65536];
  size_t len = 0;
  for (;;) {
    ssize_t r = read(0, buf + len, sizeof buf - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    unsigned long long t = now_ns();
    len += (size_t)r;
    char *start = buf, *nl;
    while ((nl = memchr(start, '\n', (size_t)(buf + len - start)))) {
      char *id = memmem(start, (size_t)(nl - start), "\"id\":\"", 6);
      char *dash = id ? memchr(id, '-', (size_t)(nl - id)) : NULL;
      if (dash) {
        unsigned long long seq = strtoull(id + 6, NULL, 10), sent = strtoull(dash + 1, NULL, 10);
        char line[64];
        size_t n = put_u64(line, seq);
        line[n++] = ' ';
        n += put_u64(line + n, t - sent);
        line[n++] = '\n';
        (void)!write(ofd, line, n);
      }
      start = nl + 1;
    }
    len = (size_t)(buf + len - start);
    memmove(buf, start, len);
    if (len == sizeof buf) len = 0;
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *base = strrchr(argv[0], '/');
  base = base ? base + 1 : argv[0];
  if (argc < 2 || !strcmp(base, "run")) {
    /* s6-supervise runs ./run in the service directory (with the service name as argument). */
    static char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return 111;
    char *slash = strrchr(cwd, '/');
    g_name = slash ? slash + 1 : cwd;
    g_marks = getenv("BENCH_MARKS");
    g_ignore_term = access("ignore-term", F_OK) == 0;
    return run_prog();
  }
  const char *m = argv[1];
  if (!strcmp(m, "prog") && argc >= 4) {
    g_name = argv[2];
    g_marks = argv[3];
    g_ignore_term = argc >= 5 && !strcmp(argv[4], "ignore-term");
    return run_prog();
  }
  if (!strcmp(m, "exec")) return mode_exec(argc, argv);
  if (!strcmp(m, "logwrite")) return mode_logwrite(argc, argv);
  if (!strcmp(m, "logcheck")) return mode_logcheck(argc, argv);
  if (!strcmp(m, "count")) return mode_count(argc, argv);
  if (!strcmp(m, "sockpub")) return mode_sockpub(argc, argv);
  if (!strcmp(m, "cmdrecv")) return mode_cmdrecv(argc, argv);
  if (!strcmp(m, "latency")) return mode_latency(argc, argv);
  fprintf(stderr, "bench-helper: unknown mode %s\n", m);
  return 64;
}
