/*
 * http_delay_server.c: the fast delay server for the HTTP latency benchmarks. Every
 * request (any path) is answered "ok" DELAY_MS (default 100) milliseconds after it
 * was read; connections are kept alive. One thread, epoll, one timerfd armed at
 * the earliest deadline: since every request waits the same delay, deadlines are a
 * FIFO. Listens on 127.0.0.1 on a free port and writes the port to PORTFILE; exits
 * when its stdin reaches EOF (like http_delay_server.py, which it stands in for
 * because aiohttp.web tops out at about 6,000 requests/s here, below the 10,000/s
 * that 1,000 concurrent 100 ms requests need).
 *
 *   cc -O2 http_delay_server.c -o http_delay_server
 *   ./http_delay_server PORTFILE [DELAY_MS] <pipe
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define RESPONSE "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

typedef struct {
  unsigned gen; /* bumped when the fd is closed: stale timer entries are skipped */
  int open;
  size_t inlen;
  char in[8192];
  size_t outlen;
  char *out; /* unsent responses (rare: only when a write would block) */
} conn;

typedef struct {
  int fd;
  unsigned gen;
  int64_t due_ns;
} entry;

static conn *conns;
static size_t nconns;
static entry *q; /* ring buffer of pending responses, deadlines nondecreasing */
static size_t qcap, qhead, qlen;
static int ep, tfd;
static int64_t delay_ns;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void arm(void) {
  struct itimerspec it = {0};
  if (qlen) {
    int64_t d = q[qhead].due_ns;
    it.it_value.tv_sec = d / 1000000000;
    it.it_value.tv_nsec = d % 1000000000;
    if (!it.it_value.tv_sec && !it.it_value.tv_nsec) it.it_value.tv_nsec = 1;
  }
  timerfd_settime(tfd, TFD_TIMER_ABSTIME, &it, NULL);
}

static void push(int fd, int64_t due) {
  if (qlen == qcap) {
    size_t ncap = qcap ? qcap * 2 : 4096;
    entry *nq = malloc(ncap * sizeof *nq);
    for (size_t i = 0; i < qlen; i++) nq[i] = q[(qhead + i) % qcap];
    free(q);
    q = nq, qcap = ncap, qhead = 0;
  }
  q[(qhead + qlen) % qcap] = (entry){fd, conns[fd].gen, due};
  if (qlen++ == 0) arm();
}

static void close_conn(int fd) {
  conn *c = &conns[fd];
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
  close(fd);
  c->open = 0, c->gen++, c->inlen = 0, c->outlen = 0;
  free(c->out);
  c->out = NULL;
}

static void flush_out(int fd) {
  conn *c = &conns[fd];
  while (c->outlen) {
    ssize_t w = write(fd, c->out, c->outlen);
    if (w < 0) {
      if (errno == EAGAIN) break;
      close_conn(fd);
      return;
    }
    memmove(c->out, c->out + w, c->outlen - w);
    c->outlen -= w;
  }
  struct epoll_event ev = {.events = EPOLLIN | (c->outlen ? EPOLLOUT : 0), .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

static void respond(int fd) {
  conn *c = &conns[fd];
  static const char r[] = RESPONSE;
  size_t n = sizeof r - 1, off = 0;
  if (!c->outlen) {
    ssize_t w = write(fd, r, n);
    if (w < 0 && errno != EAGAIN) {
      close_conn(fd);
      return;
    }
    if (w == (ssize_t)n) return;
    off = w > 0 ? (size_t)w : 0;
  }
  c->out = realloc(c->out, c->outlen + n - off);
  memcpy(c->out + c->outlen, r + off, n - off);
  c->outlen += n - off;
  flush_out(fd);
}

static void on_readable(int fd) {
  conn *c = &conns[fd];
  for (;;) {
    if (c->inlen == sizeof c->in) { /* a request head larger than 8 KiB: not ours */
      close_conn(fd);
      return;
    }
    ssize_t r = read(fd, c->in + c->inlen, sizeof c->in - c->inlen);
    if (r == 0 || (r < 0 && errno != EAGAIN)) {
      close_conn(fd);
      return;
    }
    if (r < 0) break;
    c->inlen += r;
    /* every complete head (GETs: no bodies) is one request */
    char *p = c->in, *end = c->in + c->inlen, *h;
    int64_t due = now_ns() + delay_ns;
    while ((h = memmem(p, end - p, "\r\n\r\n", 4))) {
      push(fd, due);
      p = h + 4;
    }
    memmove(c->in, p, end - p);
    c->inlen = end - p;
  }
}

static void on_timer(void) {
  uint64_t x;
  if (read(tfd, &x, sizeof x) < 0 && errno != EAGAIN) perror("timerfd read");
  int64_t t = now_ns();
  while (qlen && q[qhead].due_ns <= t) {
    entry e = q[qhead];
    qhead = (qhead + 1) % qcap, qlen--;
    if (conns[e.fd].open && conns[e.fd].gen == e.gen) respond(e.fd);
  }
  arm();
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s PORTFILE [DELAY_MS] <pipe\n", argv[0]);
    return 2;
  }
  delay_ns = (int64_t)((argc > 2 ? atof(argv[2]) : 100) * 1e6);
  nconns = 65536;
  conns = calloc(nconns, sizeof *conns);

  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0 ||
      getsockname(ls, (struct sockaddr *)&a, &alen) < 0) {
    perror("listen");
    return 1;
  }
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", argv[1]);
  FILE *f = fopen(tmp, "w");
  if (!f || fprintf(f, "%d\n", ntohs(a.sin_port)) < 0 || fclose(f) || rename(tmp, argv[1])) {
    perror(argv[1]);
    return 1;
  }

  ep = epoll_create1(EPOLL_CLOEXEC);
  tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN};
  ev.data.fd = ls, epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  ev.data.fd = tfd, epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
  ev.data.fd = 0;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) < 0) { /* stdin not pollable (a file): no EOF watch */
    fprintf(stderr, "http_delay_server: stdin is not a pipe; stop it with a signal\n");
  }

  struct epoll_event evs[512];
  for (;;) {
    int k = epoll_wait(ep, evs, 512, -1);
    if (k < 0 && errno != EINTR) {
      perror("epoll_wait");
      return 1;
    }
    for (int i = 0; i < k; i++) {
      int fd = evs[i].data.fd;
      if (fd == 0) {
        char b[256];
        ssize_t r = read(0, b, sizeof b);
        if (r <= 0) return 0; /* EOF on stdin: the runner is done */
      } else if (fd == tfd) {
        on_timer();
      } else if (fd == ls) {
        int s;
        while ((s = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
          if ((size_t)s >= nconns) {
            close(s);
            continue;
          }
          setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          conns[s].open = 1;
          struct epoll_event cev = {.events = EPOLLIN, .data.fd = s};
          epoll_ctl(ep, EPOLL_CTL_ADD, s, &cev);
        }
      } else if (conns[fd].open) {
        if (evs[i].events & EPOLLOUT) flush_out(fd);
        if (conns[fd].open && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(fd);
      }
    }
  }
}
