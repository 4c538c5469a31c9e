/*
 * http.c: "tide.http.core", the HTTP client engine: libcurl's multi socket
 * interface driven by the tide loop. Owns the "tide.HttpSession" type (a
 * curl multi, its connection cache and cookie share) and the
 * "tide.HttpTransfer" type (one easy handle and its buffers). Building
 * requests and responses for people is lua/tide/http.lua's job.
 *
 * A session binds lazily to the run (tide_sched) of its first request: a
 * multi, one uv_timer and one uv_idle (curl's "call me now"), and one
 * uv_poll per socket curl asks about (../shared/NOTES.md section 1 is the
 * rule book). libcurl callbacks only fill C buffers and mark transfers;
 * tasks are woken after curl_multi_socket_action returns, never from
 * inside curl. A task waiting on a transfer parks; if it is cancelled, its
 * continuation takes the easy handle out of the multi at once (no callback
 * fires afterwards) and re-raises the cancellation; a cancelled read of a
 * streamed body only stops waiting (the stream stays usable).
 *
 * Streamed responses pause the transfer (CURL_WRITEFUNC_PAUSE) while more
 * than HIGH_WATER bytes wait for the reader; request bodies produced by Lua
 * pause the upload (CURL_READFUNC_PAUSE) until the task feeds the next chunk.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <ctype.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <idn2.h>

#include "internal.h"

#define SESSION_MT "tide.HttpSession"
#define XFER_MT "tide.HttpTransfer"
#define HIGH_WATER (256 * 1024)

typedef struct hmulti hmulti;
typedef struct xfer xfer;

typedef tide_buf buf;

/* One socket curl asked about: its poll handle. A connection's socket
 * (opened through on_curl_opensocket, so closed through
 * on_curl_closesocket) keeps its handle until curl closes it: when curl
 * stops watching it (CURL_POLL_REMOVE: the connection went back to curl's
 * cache) the handle keeps polling for what it last polled, so that the
 * next request on the connection, which asks for the same, costs no
 * epoll_ctl; an event that comes while curl is not watching stops it. Any
 * other socket (the threaded resolver's socketpair, which curl closes
 * itself) loses its handle at CURL_POLL_REMOVE. */
typedef struct hsock {
  uv_poll_t poll;
  curl_socket_t fd;
  hmulti *m;
  int events;  /* what the poll handle polls for (UV_READABLE...) */
  int watched; /* curl watches it */
  int conn;    /* a connection's: closed through on_curl_closesocket */
  int read;    /* curl read it: connected (see on_curl_socket) */
} hsock;

typedef struct hsession {
  hmulti *m;      /* the multi of the run it is bound to, or NULL */
  CURLSH *share;  /* cookie jar shared by its transfers, or NULL */
  long max_total, max_host;
  int closed, is_default;
} hsession;

struct hmulti {
  tide_closer closer; /* first: the run's end tears the multi down */
  CURLM *multi;
  tide_sched *sched;
  hsession *sess;
  uv_timer_t timer;
  uv_idle_t kick;  /* curl asked for a timeout of 0 */
  uv_timer_t sweep; /* checks timeouts while nidle > 0 (on_uv_sweep) */
  int nidle;       /* attached transfers it checks (XF_SWEPT) */
  long nattached, peak; /* transfers in the multi now, and at most */
  int open;        /* uv handles not closed yet; freed at 0 once dead */
  int dead;
  hsock **socks;   /* by fd; nsocks slots */
  int nsocks;
  xfer *xfers;     /* transfers that hold an easy handle of this multi */
  xfer *dirty;     /* transfers whose waiter may now go on */
  /* tide's default header lines, a list its plain requests share */
  struct curl_slist defaults[2];
  char accept_encoding[64];
  int verbose; /* TIDE_CURL_VERBOSE was set: curl's own trace on stderr */
};

enum { W_NONE, W_HEADERS, W_DONE, W_DATA };
#define PREALLOC_MAX ((curl_off_t)64 << 20) /* see headers_done */
/* on_uv_sweep's deadline comes this much after curl's own (ms): a transfer
 * curl times out itself says why in curl's words ("Resolving timed out") */
#define DEADLINE_GRACE 20
enum {
  XF_ATTACHED = 1,   /* in the multi */
  XF_HDRS = 2,       /* the final response's headers are complete */
  XF_DONE = 4,       /* finished (result says how) */
  XF_NEEDBODY = 8,   /* curl wants request body the task has not fed */
  XF_SENDPAUSED = 16,
  XF_RECVPAUSED = 32,
  XF_REQEOF = 64,    /* the request body has ended */
  XF_TOOLARGE = 128, /* the body went over max_body */
  XF_CLOSED = 256,   /* its session closed under it */
  XF_STREAM = 512,
  XF_FOLLOW = 1024,
  XF_LOCATION = 2048, /* the response being read has a Location */
  XF_DIRTY = 4096,
  XF_ABORTED = 8192, /* its response was closed before the end */
  XF_ONCE = 16384,   /* not to be sent twice: not idempotent, or a body function */
  XF_SENT = 32768,   /* curl has sent it (on_prereq) */
  XF_NORESEND = 65536, /* curl would have sent it again: stopped */
  XF_BADLEN = 131072, /* the body function and its Content-Length disagree */
  XF_SWEPT = 262144, /* on_uv_sweep checks it: an idle timeout, or a deadline
                      * curl does not keep (see s_request) */
  XF_DEADLINE = 524288 /* on_uv_sweep ended it at its deadline (queued_why) */
};

struct xfer {
  CURL *easy;
  hmulti *m;
  xfer *next, *prev, *dnext;
  tide_task *waiter;
  int want, flags;
  CURLcode result;
  long status;
  curl_off_t max_body, total;
  curl_off_t clen;        /* the response's Content-Length, -1: none yet */
  curl_off_t declared;    /* a body function's Content-Length, -1: none */
  curl_off_t fed;         /* bytes of the request body given to curl */
  const char *bad;        /* why tide refused the response's head (protocol) */
  uint64_t idle_ms, last; /* idle timeout; when a byte last came (uv_now) */
  uint64_t started, sent; /* when the request was made, sent (uv_now) */
  long timeout_ms;
  int deadline; /* on_uv_sweep keeps timeout_ms from started (see there) */
  buf hdr, body, req;
  size_t boff, roff;
  struct curl_slist *hlist;
  char method[16];
  char err[CURL_ERROR_SIZE];
};

/* ---- small helpers ---------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h) {
  hmulti *m = h->data;
  if (h->type == UV_POLL)
    free(h); /* the hsock starts with its poll handle */
  if (--m->open == 0 && m->dead)
    free(m);
}

/* ---- waking tasks --------------------------------------------------- */

static int xfer_ready(const xfer *x) {
  if (x->flags & (XF_DONE | XF_NEEDBODY))
    return 1;
  if (x->want == W_HEADERS)
    return (x->flags & XF_HDRS) != 0;
  if (x->want == W_DATA)
    return x->body.n > x->boff;
  return 0;
}

/* From inside curl: remember x; its task is woken after curl returns. */
static void mark(xfer *x) {
  if (x->m && x->waiter && !(x->flags & XF_DIRTY) && xfer_ready(x)) {
    x->flags |= XF_DIRTY;
    x->dnext = x->m->dirty;
    x->m->dirty = x;
  }
}

static void wake(lua_State *L, xfer *x) {
  tide_task *t = x->waiter;
  if (t) {
    x->waiter = NULL;
    lua_pushboolean(L, 1);
    tide__wake(L, t, 1);
  }
}

static void wake_dirty(lua_State *L, hmulti *m) {
  xfer *x;
  while ((x = m->dirty) != NULL) {
    m->dirty = x->dnext;
    x->flags &= ~XF_DIRTY;
    if (xfer_ready(x))
      wake(L, x);
  }
}

static void detach(xfer *x) {
  if (x->flags & XF_ATTACHED) {
    x->flags &= ~XF_ATTACHED;
    curl_multi_remove_handle(x->m->multi, x->easy);
    x->m->sched->io_pending--;
    x->m->nattached--;
    if ((x->flags & XF_SWEPT) && --x->m->nidle == 0)
      uv_timer_stop(&x->m->sweep);
  }
}

/* x ended with result: out of curl, its task to be woken (wake_dirty). */
static void xfer_end(xfer *x, CURLcode result) {
  x->result = result;
  x->flags |= XF_DONE;
  detach(x);
  mark(x);
}

/* Fails streamed transfers that got no byte for their idle timeout (time
 * spent paused because the reader is behind does not count), and those of
 * a session with connection limits whose timeout has passed since they
 * were made: curl 7.88 does not time out a transfer waiting for a free
 * connection, and counts its timeout from when it gets one. */
static void on_uv_sweep(uv_timer_t *h) {
  hmulti *m = h->data;
  uint64_t now = uv_now(m->sched->loop);
  xfer *x;
  for (x = m->xfers; x; x = x->next) {
    if (!(x->flags & XF_ATTACHED) || !(x->flags & XF_SWEPT))
      continue;
    if (x->idle_ms && !(x->flags & (XF_RECVPAUSED | XF_SENDPAUSED | XF_NEEDBODY)) &&
        now - x->last >= x->idle_ms)
      snprintf(x->err, sizeof(x->err), "no data for %.1f s (idle_timeout)",
               (double)x->idle_ms / 1000);
    else if (x->deadline && now - x->started >= (uint64_t)x->timeout_ms + DEADLINE_GRACE)
      x->flags |= XF_DEADLINE;
    else
      continue;
    xfer_end(x, CURLE_OPERATION_TIMEDOUT);
  }
  wake_dirty(m->sched->L, m);
}

/* Reads what finished after a socket_action and wakes whoever waits. */
static void after_action(hmulti *m, lua_State *L) {
  CURLMsg *msg;
  int left;
  while (!m->dead && (msg = curl_multi_info_read(m->multi, &left))) {
    xfer *x = NULL;
    if (msg->msg != CURLMSG_DONE)
      continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    if (!(x->flags & XF_HDRS))
      curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
    xfer_end(x, msg->data.result);
  }
  if (!m->dead)
    wake_dirty(L, m);
}

static void action(hmulti *m, curl_socket_t fd, int flags) {
  int running;
  if (m->dead)
    return;
  curl_multi_socket_action(m->multi, fd, flags, &running);
  after_action(m, m->sched->L);
}

/* ---- curl's socket and timer callbacks -------------------------------- */

static void poll_events(hsock *k, int events);

static void on_uv_poll(uv_poll_t *h, int status, int events) {
  hsock *k = (hsock *)h;
  int flags = 0;
  if (!k->watched) { /* a cached connection's peer closed or wrote */
    poll_events(k, 0);
    return;
  }
  if (status < 0) {
    /* POLLERR (a reset, say): libuv has stopped the handle. curl reads or
     * writes what it waits for and so meets the error itself ("Recv
     * failure: Connection reset by peer"); CURL_CSELECT_ERR would make it
     * a send failure whatever the socket was doing. */
    events = k->events;
    k->events = 0;
  }
  if (events & UV_READABLE)
    flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE)
    flags |= CURL_CSELECT_OUT;
  action(k->m, k->fd, flags);
}

static void poll_events(hsock *k, int events) {
  if (events == k->events)
    return; /* uv_poll_start would take the fd out of epoll and put it back */
  k->events = events;
  if (events)
    uv_poll_start(&k->poll, events, on_uv_poll);
  else
    uv_poll_stop(&k->poll);
}

static void sock_close(hmulti *m, curl_socket_t fd) {
  hsock *k = fd >= 0 && fd < m->nsocks ? m->socks[fd] : NULL;
  if (k) {
    m->socks[fd] = NULL;
    uv_poll_stop(&k->poll);
    uv_close((uv_handle_t *)&k->poll, on_handle_closed);
  }
}

static hsock *sock_new(hmulti *m, curl_socket_t fd) {
  hsock *k;
  if (fd >= m->nsocks) {
    int n = m->nsocks ? m->nsocks : 64;
    hsock **a;
    while (n <= fd)
      n *= 2;
    if ((a = realloc(m->socks, n * sizeof(*a))) == NULL)
      return NULL;
    memset(a + m->nsocks, 0, (n - m->nsocks) * sizeof(*a));
    m->socks = a;
    m->nsocks = n;
  }
  if ((k = calloc(1, sizeof(*k))) == NULL)
    return NULL;
  if (uv_poll_init_socket(m->sched->loop, &k->poll, fd) < 0) {
    free(k);
    return NULL;
  }
  k->poll.data = m;
  k->fd = fd;
  k->m = m;
  m->socks[fd] = k;
  m->open++;
  return k;
}

static int on_curl_socket(CURL *e, curl_socket_t fd, int what, void *ud,
                          void *sockp) {
  hmulti *m = ud;
  hsock *k = fd >= 0 && fd < m->nsocks ? m->socks[fd] : NULL;
  int events = 0;
  (void)e;
  (void)sockp;
  if (m->dead)
    return what == CURL_POLL_REMOVE ? 0 : -1;
  if (what == CURL_POLL_REMOVE) {
    /* A connected socket curl keeps (a cached connection) is polled on
     * until an event or curl closes it. Any other goes now: curl 7.88 may
     * close a socket it never connected (an attempt given up, a transfer
     * cancelled while connecting) without on_curl_closesocket (curl#11439),
     * and libuv aborts on a polled fd that was closed. */
    if (k && k->conn && k->read)
      k->watched = 0;
    else if (k)
      sock_close(m, fd);
    return 0;
  }
  if (k == NULL && (k = sock_new(m, fd)) == NULL)
    return -1;
  k->watched = 1;
  if (what & CURL_POLL_IN) {
    k->read = 1;
    events |= UV_READABLE;
  }
  if (what & CURL_POLL_OUT)
    events |= UV_WRITABLE;
  poll_events(k, events);
  return 0;
}

/* A connection's socket: known, so that its handle may outlive a
 * CURL_POLL_REMOVE (curl tells on_curl_closesocket when it goes). */
static curl_socket_t on_curl_opensocket(void *ud, curlsocktype purpose,
                                        struct curl_sockaddr *a) {
  hmulti *m = ud;
  hsock *k;
  curl_socket_t fd;
  (void)purpose;
  fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (fd < 0 || m->dead)
    return fd;
  sock_close(m, fd); /* a stale entry of a number the kernel gave again */
  if ((k = sock_new(m, fd)) != NULL)
    k->conn = 1;
  return fd;
}

/* The poll handle goes before the fd does (NOTES 1.3). */
static int on_curl_closesocket(void *ud, curl_socket_t fd) {
  sock_close(ud, fd);
  return close(fd);
}

static void on_uv_timer(uv_timer_t *h) {
  action(h->data, CURL_SOCKET_TIMEOUT, 0);
}

static void on_uv_kick(uv_idle_t *h) {
  uv_idle_stop(h);
  action(h->data, CURL_SOCKET_TIMEOUT, 0);
}

/* -1: stop; 0: next loop turn (an idle kick, not a 0 ms timer: NOTES 43);
 * otherwise a one-shot timer. */
static int on_curl_timer(CURLM *multi, long ms, void *ud) {
  hmulti *m = ud;
  (void)multi;
  if (m->dead)
    return 0;
  if (ms < 0) {
    uv_timer_stop(&m->timer);
    uv_idle_stop(&m->kick);
  } else if (ms == 0) {
    uv_timer_stop(&m->timer);
    uv_idle_start(&m->kick, on_uv_kick);
  } else {
    uv_idle_stop(&m->kick);
    uv_timer_start(&m->timer, on_uv_timer, (uint64_t)ms, 0);
  }
  return 0;
}

/* ---- the multi's life ------------------------------------------------- */

static size_t on_header(char *p, size_t size, size_t n, void *ud);
static size_t on_write(char *p, size_t size, size_t n, void *ud);

/* curl is about to send x's request. A kept-alive connection the server
 * closed without answering makes curl 7.88 send it again on a new one,
 * whatever the method; a POST (or any request that is not idempotent, or
 * whose body a function gave) may then act twice, so it fails instead, as
 * aiohttp and requests do not send those again either. */
static int on_prereq(void *ud, char *ip, char *local_ip, int port, int local_port) {
  xfer *x = ud;
  (void)ip, (void)local_ip, (void)port, (void)local_port;
  if ((x->flags & (XF_SENT | XF_ONCE)) == (XF_SENT | XF_ONCE)) {
    x->flags |= XF_NORESEND;
    return CURL_PREREQFUNC_ABORT;
  }
  x->flags |= XF_SENT;
  x->sent = uv_now(x->m->sched->loop);
  return CURL_PREREQFUNC_OK;
}

/* The options every transfer of m has, set once per easy handle: a plain
 * request sets only its own (setup), so that a kept handle is neither
 * reset nor set up again (about a tenth of a keep-alive GET's cost). */
static void easy_base(hmulti *m, CURL *e) {
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  if (m->verbose)
    curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
  curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L); /* cancel in DNS: NOTES 12 */
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_curl_opensocket);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, m);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_curl_closesocket);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, m);
  curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  /* decodes what the server compressed; the header line is default_headers' */
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  /* no proxy unless asked (the proxy option, or trust_env): "" stops curl
   * reading the environment itself */
  curl_easy_setopt(e, CURLOPT_PROXY, "");
  curl_easy_setopt(e, CURLOPT_NOPROXY, "");
  if (m->sess->share) { /* the session's cookie jar */
    curl_easy_setopt(e, CURLOPT_SHARE, m->sess->share);
    curl_easy_setopt(e, CURLOPT_COOKIEFILE, "");
  }
}

/* An easy handle for m's next transfer, with easy_base's options: a new
 * one every time. libcurl 7.88 keeps a pointer to the last response header
 * it stored (state.prevhead) after freeing the headers when the handle's
 * next transfer starts (fixed in 8.1.0, curl#11101), so a reused handle
 * given a response whose first header line is folded (starts with a space)
 * reads and reallocates freed memory: any server could crash tide. A new
 * handle costs about a sixth of a keep-alive GET; connections are the
 * multi's and are reused all the same. */
static CURL *easy_new(hmulti *m) {
  CURL *e = curl_easy_init();
  if (e != NULL)
    easy_base(m, e);
  return e;
}

/* Ends x's hold on its easy handle (the response was taken, or it failed). */
static void xfer_release(xfer *x) {
  if (x->easy) {
    hmulti *m = x->m;
    detach(x);
    if (m) {
      if (x->prev)
        x->prev->next = x->next;
      else
        m->xfers = x->next;
      if (x->next)
        x->next->prev = x->prev;
    }
    curl_easy_cleanup(x->easy);
    x->easy = NULL;
    x->m = NULL;
  }
  curl_slist_free_all(x->hlist);
  x->hlist = NULL;
  tide__buf_free(&x->hdr);
  tide__buf_free(&x->req);
}

static int defaults_key;

/* Closes the multi: every transfer ends (their tasks, if L is given, wake
 * to a "closed" error), then curl, then the uv handles. */
static void hmulti_close(hmulti *m, lua_State *L) {
  xfer *x;
  int i;
  m->dead = 1;
  tide__closer_remove(&m->closer);
  if (m->sess) {
    if (m->sess->is_default) { /* forget it as this run's default */
      lua_State *ML = m->sched->L;
      lua_rawgetp(ML, LUA_REGISTRYINDEX, &defaults_key);
      if (lua_istable(ML, -1)) {
        lua_pushnil(ML);
        lua_rawsetp(ML, -2, m->sched);
      }
      lua_pop(ML, 1);
    }
    m->sess->m = NULL;
  }
  m->sess = NULL;
  while ((x = m->xfers) != NULL) {
    m->xfers = x->next;
    if (x->flags & XF_ATTACHED) {
      x->flags &= ~XF_ATTACHED;
      curl_multi_remove_handle(m->multi, x->easy);
      m->sched->io_pending--;
    }
    if (!(x->flags & XF_DONE)) {
      x->flags |= XF_DONE | XF_CLOSED;
      x->result = CURLE_ABORTED_BY_CALLBACK;
      curl_easy_cleanup(x->easy);
      x->easy = NULL;
    } /* a finished one keeps its handle (no connection) for its response */
    x->m = NULL;
    x->prev = x->next = NULL;
    if (L)
      wake(L, x);
    x->waiter = NULL;
  }
  curl_multi_cleanup(m->multi);
  m->multi = NULL;
  for (i = 0; i < m->nsocks; i++)
    sock_close(m, i);
  free(m->socks);
  m->socks = NULL;
  m->nsocks = 0;
  uv_close((uv_handle_t *)&m->timer, on_handle_closed);
  uv_close((uv_handle_t *)&m->kick, on_handle_closed);
  uv_close((uv_handle_t *)&m->sweep, on_handle_closed);
}

static void on_run_end(tide_closer *c) {
  hmulti_close((hmulti *)c, NULL);
}

/* tide's default request headers, as curl's CURLOPT_USERAGENT and
 * CURLOPT_ACCEPT_ENCODING "" would send them, but as custom header lines:
 * curl prints its own header lines a byte at a time, twice, which cost a
 * plain GET a tenth of its time; the list is the caller's to override. */
static const char USER_AGENT[] = "User-Agent: tide/0.1";

static void default_headers(hmulti *m) {
  curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
  char *ae = m->accept_encoding;
  snprintf(ae, sizeof(m->accept_encoding), "Accept-Encoding: %s%s%s",
           (v->features & CURL_VERSION_LIBZ) ? "deflate, gzip, " : "",
           (v->features & CURL_VERSION_BROTLI) ? "br, " : "",
           (v->features & CURL_VERSION_ZSTD) ? "zstd, " : "");
  if (strlen(ae) > sizeof("Accept-Encoding: ") - 1)
    ae[strlen(ae) - 2] = '\0'; /* the last ", " */
  else
    strcpy(ae, "Accept-Encoding: identity");
  m->defaults[0].data = (char *)USER_AGENT;
  m->defaults[0].next = &m->defaults[1];
  m->defaults[1].data = ae;
  m->defaults[1].next = NULL;
}

/* curl_multi_init with its wakeup socketpair, which curl opens without
 * close-on-exec, made close-on-exec: else every child process (tide.process,
 * os.execute, io.popen) inherits it. The pair takes the two lowest free fds. */
static CURLM *multi_init(void) {
  int fd[2], i;
  CURLM *multi;
  for (i = 0; i < 2; i++)
    fd[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
  for (i = 0; i < 2; i++)
    if (fd[i] >= 0)
      close(fd[i]);
  multi = curl_multi_init();
  for (i = 0; i < 2; i++) {
    struct stat st;
    int flags;
    if (fd[i] >= 0 && fstat(fd[i], &st) == 0 && S_ISSOCK(st.st_mode) &&
        (flags = fcntl(fd[i], F_GETFD)) >= 0 && !(flags & FD_CLOEXEC))
      fcntl(fd[i], F_SETFD, flags | FD_CLOEXEC);
  }
  return multi;
}

static hmulti *hmulti_new(lua_State *L, hsession *S, tide_sched *s) {
  hmulti *m = calloc(1, sizeof(*m));
  if (m == NULL || (m->multi = multi_init()) == NULL) {
    free(m);
    luaL_error(L, "not enough memory");
    return NULL;
  }
  m->sched = s;
  m->sess = S;
  m->verbose = getenv("TIDE_CURL_VERBOSE") != NULL;
  uv_timer_init(s->loop, &m->timer);
  uv_idle_init(s->loop, &m->kick);
  uv_timer_init(s->loop, &m->sweep);
  m->timer.data = m->kick.data = m->sweep.data = m;
  m->open = 3;
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
  curl_multi_setopt(m->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, S->max_total);
  curl_multi_setopt(m->multi, CURLMOPT_MAX_HOST_CONNECTIONS, S->max_host);
  m->closer.close = on_run_end;
  tide__closer_add(s, &m->closer);
  default_headers(m);
  return m;
}

/* ---- transfer callbacks ---------------------------------------------- */

static void headers_done(xfer *x) {
  curl_off_t cl = -1;
  x->flags |= XF_HDRS;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
  curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
  /* the body's room at once, as announced, but no more than PREALLOC_MAX
   * on the word of a server (without max_body_size it may name any size) */
  if (!(x->flags & XF_STREAM) && cl > 0 && (x->max_body < 0 || cl <= x->max_body)) {
    size_t want = (size_t)(cl < PREALLOC_MAX ? cl : PREALLOC_MAX);
    char *p = want > x->body.cap ? realloc(x->body.p, want) : NULL;
    if (p) {
      x->body.p = p;
      x->body.cap = want;
    }
  }
  mark(x);
}

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  xfer *x = ud;
  size_t len = size * n;
  if (x->flags & XF_HDRS)
    return len; /* trailers */
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) { /* a new response starts */
    x->hdr.n = 0;
    x->clen = -1;
    x->flags &= ~XF_LOCATION;
  } else if (len <= 2 && (p[0] == '\r' || p[0] == '\n')) {
    long code = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code < 100) { /* "HTTP/200 OK", say: curl 7.88 takes it as status 0 */
      x->bad = "the status line has no status code";
      return 0;
    }
    /* final unless informational, or a redirect curl is about to follow */
    if (!(code >= 100 && code < 200) &&
        !((x->flags & (XF_FOLLOW | XF_LOCATION)) == (XF_FOLLOW | XF_LOCATION) &&
          code >= 300 && code < 400))
      headers_done(x);
    return len;
  } else if (len > 9 && strncasecmp(p, "location:", 9) == 0) {
    x->flags |= XF_LOCATION;
  } else if (len > 15 && strncasecmp(p, "content-length:", 15) == 0) {
    /* curl 7.88 takes the last of several, and the first of a list; they
     * must agree (a body framed two ways is how responses get smuggled) */
    char val[64], *q = val;
    size_t vlen = len - 15 < sizeof(val) - 1 ? len - 15 : sizeof(val) - 1;
    memcpy(val, p + 15, vlen); /* curl's lines are not NUL-terminated */
    val[vlen] = '\0';
    for (;;) {
      char *after;
      curl_off_t v = (curl_off_t)strtoll(q, &after, 10);
      if (after == q)
        break;
      if (x->clen >= 0 && v != x->clen) {
        x->bad = "the response has Content-Length values that differ";
        return 0;
      }
      x->clen = v;
      q = after + strspn(after, " \t,");
    }
  }
  if (x->idle_ms) /* a head trickling in is data too */
    x->last = uv_now(x->m->sched->loop);
  return tide__buf_add(&x->hdr, p, len) == 0 ? len : 0;
}

static size_t on_write(char *p, size_t size, size_t n, void *ud) {
  xfer *x = ud;
  size_t len = size * n;
  if (!(x->flags & XF_HDRS))
    headers_done(x);
  if (x->max_body >= 0 && x->total + (curl_off_t)len > x->max_body) {
    x->flags |= XF_TOOLARGE;
    return 0;
  }
  if ((x->flags & XF_STREAM) && x->body.n - x->boff >= HIGH_WATER) {
    x->flags |= XF_RECVPAUSED; /* the reader is behind: hold the peer */
    return CURL_WRITEFUNC_PAUSE;
  }
  if (x->boff > 0 && x->boff == x->body.n) {
    x->body.n = x->boff = 0;
  } else if (x->boff >= HIGH_WATER) { /* read already: drop it, or a reader
                                       * taking less than there is would
                                       * keep the whole body */
    memmove(x->body.p, x->body.p + x->boff, x->body.n - x->boff);
    x->body.n -= x->boff;
    x->boff = 0;
  }
  if (tide__buf_add(&x->body, p, len) < 0)
    return 0;
  if (x->idle_ms)
    x->last = uv_now(x->m->sched->loop);
  x->total += (curl_off_t)len;
  mark(x);
  return len;
}

static size_t on_read(char *p, size_t size, size_t n, void *ud) {
  xfer *x = ud;
  size_t room = size * n, have = x->req.n - x->roff;
  if (have > 0) {
    size_t k = have < room ? have : room;
    memcpy(p, x->req.p + x->roff, k);
    x->roff += k;
    if (x->idle_ms) /* the upload moving counts as activity */
      x->last = uv_now(x->m->sched->loop);
    if (x->roff == x->req.n)
      x->req.n = x->roff = 0;
    x->fed += (curl_off_t)k;
    return k;
  }
  if (x->flags & XF_REQEOF) {
    if (x->declared >= 0 && x->fed < x->declared) { /* the server would wait */
      x->flags |= XF_BADLEN;
      return CURL_READFUNC_ABORT;
    }
    return 0;
  }
  x->flags |= XF_NEEDBODY | XF_SENDPAUSED;
  mark(x);
  return CURL_READFUNC_PAUSE;
}

/* Lets curl go on after a pause, keeping the direction still paused. */
static void unpause(lua_State *L, xfer *x) {
  if ((x->flags & XF_ATTACHED) && !(x->m->dead)) {
    int mask = (x->flags & XF_SENDPAUSED ? CURLPAUSE_SEND : 0) |
               (x->flags & XF_RECVPAUSED ? CURLPAUSE_RECV : 0);
    curl_easy_pause(x->easy, mask);
    wake_dirty(L, x->m);
  }
}

/* ---- errors ----------------------------------------------------------- */

/* Whether a request of method m may be sent twice (RFC 9110 9.2.2). */
static int idempotent(const char *m) {
  static const char *const names[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS",
                                      "TRACE", NULL};
  int i;
  for (i = 0; names[i]; i++)
    if (strcmp(m, names[i]) == 0)
      return 1;
  return 0;
}


/* Whether curl would have sent x again but was stopped (on_prereq), or
 * could not: it cannot rewind a body a function gives. */
static int not_resent(const xfer *x) {
  return (x->flags & XF_NORESEND) || x->result == CURLE_SEND_FAIL_REWIND;
}

static const char *kind_of(const xfer *x) {
  if (x->flags & (XF_CLOSED | XF_ABORTED))
    return "closed";
  if (not_resent(x))
    return "reset";
  if (x->flags & XF_BADLEN)
    return "http_transfer";
  if (x->flags & XF_TOOLARGE)
    return "too_large";
  if (x->bad)
    return "protocol";
  if (x->result == CURLE_OUT_OF_MEMORY && !(x->flags & XF_HDRS))
    return "too_large"; /* see raise_failure */
  switch (x->result) {
  case CURLE_OPERATION_TIMEDOUT:
    return "timeout";
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return "dns";
  case CURLE_COULDNT_CONNECT:
    return "connect";
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_SHUTDOWN_FAILED:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_USE_SSL_FAILED:
    return "tls";
  case CURLE_FILESIZE_EXCEEDED:
    return "too_large";
  case CURLE_TOO_MANY_REDIRECTS:
    return "too_many_redirects";
  case CURLE_UNSUPPORTED_PROTOCOL: { /* a scheme we do not speak, or a
                                      * server that does not speak HTTP */
    char *ip = NULL;
    if (!(x->flags & XF_LOCATION) &&
        curl_easy_getinfo(x->easy, CURLINFO_PRIMARY_IP, &ip) == CURLE_OK &&
        ip && *ip)
      return "protocol";
    return "invalid_url";
  }
  case CURLE_URL_MALFORMAT:
    return "invalid_url";
  case CURLE_WEIRD_SERVER_REPLY:
  case CURLE_BAD_CONTENT_ENCODING:
  case CURLE_BAD_FUNCTION_ARGUMENT: /* a header line curl cannot store (a
                                     * folded first one, say) */
    return "protocol";
  case CURLE_RECV_ERROR:
    /* curl's own limits on a response head (300 KB in all, 1xx included)
     * and on a chunked body's trailers */
    if (strstr(x->err, "Too large response headers") ||
        strstr(x->err, "Out of memory in chunked-encoding"))
      return "too_large";
    if (strstr(x->err, "CONNECT tunnel failed")) /* the proxy refused */
      return "connect";
    /* fall through */
  case CURLE_SEND_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM:
    return "reset";
  default:
    return "http_transfer";
  }
}

/* Raises x's failure (x at index 1, its URL in its user value 2) as a tide
 * error naming the method, URL and reason. */
static size_t scheme_len(const char *u);

/* Pushes url with the password of its user info, if any, as "***": an
 * error message or field is no place for it (aiohttp and requests leave
 * credentials out of theirs). */
static const char *push_redacted(lua_State *L, const char *url) {
  size_t from = scheme_len(url), hlen = strcspn(url + from, "/");
  const char *at = NULL, *colon, *p;
  /* the last '@' before the path: a password may hold '@', '#' or '?' */
  for (p = url + from; from && p < url + from + hlen; p++)
    if (*p == '@')
      at = p;
  if (at == NULL ||
      (colon = memchr(url + from, ':', (size_t)(at - url - from))) == NULL) {
    lua_pushstring(L, url);
  } else {
    lua_pushlstring(L, url, (size_t)(colon + 1 - url));
    lua_pushfstring(L, "***%s", at);
    lua_concat(L, 2);
  }
  return lua_tostring(L, -1);
}

/* For x ended at its deadline by on_uv_sweep (a session with connection
 * limits: curl keeps no timeout while a transfer waits for a connection,
 * and counts it from when one is free), pushes what happened. */
static void push_deadline_why(lua_State *L, xfer *x) {
  hsession *S = x->m ? x->m->sess : NULL;
  curl_off_t dns = 0;
  char *ip = NULL;
  const char *limits = S == NULL ? "limits"
                       : S->max_host > 0 && S->max_total > 0
                           ? lua_pushfstring(L, "max_per_host %d, max_connections %d",
                                             (int)S->max_host, (int)S->max_total)
                       : S->max_host > 0 ? lua_pushfstring(L, "max_per_host %d", (int)S->max_host)
                                         : lua_pushfstring(L, "max_connections %d", (int)S->max_total);
  curl_easy_getinfo(x->easy, CURLINFO_NAMELOOKUP_TIME_T, &dns);
  curl_easy_getinfo(x->easy, CURLINFO_PRIMARY_IP, &ip);
  if (x->flags & XF_SENT)
    lua_pushfstring(L, "timed out (timeout %I ms) waiting for the response; the request "
                    "went out %I ms after it was made (the session's %s)",
                    (lua_Integer)x->timeout_ms, (lua_Integer)(x->sent - x->started), limits);
  else if (dns == 0 && (ip == NULL || *ip == '\0')) /* curl never started it */
    lua_pushfstring(L, "timed out (timeout %I ms) waiting for a free connection "
                    "(the session's %s)", (lua_Integer)x->timeout_ms, limits);
  else
    lua_pushfstring(L, "timed out (timeout %I ms) before the request went out "
                    "(resolving or connecting)", (lua_Integer)x->timeout_ms);
}

static int raise_failure(lua_State *L, xfer *x) {
  const char *kind = kind_of(x);
  const char *url = (lua_getiuservalue(L, 1, 2), push_redacted(L, lua_tostring(L, -1)));
  const char *why = curl_easy_strerror(x->result);
  if (x->flags & XF_CLOSED)
    why = "the session was closed";
  else if (x->flags & XF_ABORTED)
    why = "the response was closed";
  else if (x->flags & XF_BADLEN)
    why = lua_pushfstring(L, "the body function gave %s %I bytes its Content-Length says",
                          x->flags & XF_REQEOF ? "fewer than the" : "more than the",
                          (lua_Integer)x->declared);
  else if (not_resent(x))
    why = lua_pushfstring(L, "the server closed the connection without an answer, and "
                          "%s%s is not sent again (the server may have acted on it)",
                          idempotent(x->method) ? "a request whose body a function or an array gives"
                                                : "a ", idempotent(x->method) ? "" : x->method);
  else if (x->bad)
    why = x->bad;
  else if (x->flags & XF_TOOLARGE || x->result == CURLE_FILESIZE_EXCEEDED)
    why = lua_pushfstring(L, "the response body is over max_body_size (%I bytes)",
                          (lua_Integer)x->max_body);
  else if (x->result == CURLE_OUT_OF_MEMORY && !(x->flags & XF_HDRS))
    /* what curl 7.88 answers, silently, to a header line over its limit */
    why = "a response header is over curl's limit of 100 KB "
          "(CURL_MAX_HTTP_HEADER), or memory ran out";
  else if (x->flags & XF_DEADLINE)
    why = (push_deadline_why(L, x), lua_tostring(L, -1));
  else if (x->err[0])
    why = lua_pushfstring(L, "%s (%s)", why, x->err);
  tide__err_push(L, kind, "%s %s: %s", x->method, url, why);
  lua_pushstring(L, url);
  lua_setfield(L, -2, "url");
  lua_pushinteger(L, (lua_Integer)x->result);
  lua_setfield(L, -2, "curl_code");
  xfer_release(x);
  tide__buf_free(&x->body); /* now, not when the collector comes: Lua does
                             * not see it (a 64 MB body over the limit) */
  x->boff = 0;
  return lua_error(L);
}

/* ---- Lua: sessions ---------------------------------------------------- */

static hsession *check_session(lua_State *L, int idx) {
  hsession *S = luaL_checkudata(L, idx, SESSION_MT);
  if (S->closed)
    tide__err_raise(L, "closed", "attempt to use a closed HTTP session");
  return S;
}

static hsession *new_session(lua_State *L, int opts) {
  hsession *S = lua_newuserdatauv(L, sizeof(*S), 0);
  memset(S, 0, sizeof(*S));
  luaL_setmetatable(L, SESSION_MT);
  if (opts) {
    lua_getfield(L, opts, "max_connections");
    S->max_total = (long)lua_tointeger(L, -1);
    lua_getfield(L, opts, "max_per_host");
    S->max_host = (long)lua_tointeger(L, -1);
    lua_getfield(L, opts, "cookies");
    if (lua_toboolean(L, -1)) {
      S->share = curl_share_init();
      if (S->share)
        curl_share_setopt(S->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_COOKIE);
    }
    lua_pop(L, 3);
  }
  return S;
}

/* core.session({max_connections =, max_per_host =, cookies =}) */
static int l_session(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  new_session(L, 1);
  return 1;
}

/* core.default_session() -> the session of module-level calls in this run */
static int l_default_session(lua_State *L) {
  tide_task *t = tide__current(L);
  tide__registry_table(L, &defaults_key);
  if (lua_rawgetp(L, -1, t->s) == LUA_TNIL) {
    lua_pop(L, 1);
    new_session(L, 0)->is_default = 1;
    lua_pushvalue(L, -1);
    lua_rawsetp(L, -3, t->s);
  }
  return 1;
}

static int s_close(lua_State *L) {
  hsession *S = luaL_checkudata(L, 1, SESSION_MT);
  if (S->m)
    hmulti_close(S->m, L); /* any running thread can carry the wakes */
  S->closed = 1;
  return 0;
}

static int s_gc(lua_State *L) {
  hsession *S = luaL_checkudata(L, 1, SESSION_MT);
  if (S->m)
    hmulti_close(S->m, NULL);
  if (S->share)
    curl_share_cleanup(S->share);
  S->share = NULL;
  S->closed = 1;
  return 0;
}

/* ---- Lua: starting a transfer ------------------------------------------ */

/* The names s_request reads in the spec and x_response writes in the
 * response, made Lua strings once: both functions have them as upvalue 1
 * (see with_keys). lua_getfield and lua_setfield with a C string look the
 * name up in Lua's string table on every call, which cost a plain GET 5%
 * of its instructions. */
#define KEYS(X)                                                                \
  X(method) X(url) X(max_redirects) X(idle_timeout) X(http_version)            \
  X(body_fn) X(timeout) X(connect_timeout) X(max_body) X(stream) X(verify)     \
  X(cafile) X(proxy) X(trust_env) X(cookie) X(body_size) X(body) X(headers)    \
  X(status) X(reason) X(header_block) X(redirects) X(_timings)                 \
  X(_redirect_url) X(_redirect_error) X(seed_cookies)
#define KEY_ENUM(n) K_##n,
#define KEY_NAME(n) #n,
enum { KEYS(KEY_ENUM) NKEYS };

/* Pushes the name k (a K_ value). */
static void key(lua_State *L, int k) {
  lua_rawgeti(L, lua_upvalueindex(1), k + 1);
}

/* Pushes spec[k] (spec: an absolute index); returns its type. */
static int spec_get(lua_State *L, int spec, int k) {
  key(L, k);
  return lua_rawget(L, spec);
}

/* Sets t[k] (t: an absolute index) to the value on top, popping it. */
static void set_key(lua_State *L, int t, int k) {
  key(L, k);
  lua_insert(L, -2);
  lua_rawset(L, t);
}

static const char *opt_string(lua_State *L, int spec, int k) {
  const char *v;
  spec_get(L, spec, k);
  v = lua_tostring(L, -1);
  lua_pop(L, 1); /* the spec table keeps the string alive */
  return v;
}

static lua_Integer opt_int(lua_State *L, int spec, int k, lua_Integer d) {
  lua_Integer v = spec_get(L, spec, k) == LUA_TNIL ? d : lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

static int opt_bool(lua_State *L, int spec, int k, int d) {
  int v = spec_get(L, spec, k) == LUA_TNIL ? d : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static long http_version(const char *v) {
  if (v == NULL)
    return CURL_HTTP_VERSION_2TLS;
  if (strcmp(v, "1.0") == 0)
    return CURL_HTTP_VERSION_1_0;
  if (strcmp(v, "1.1") == 0)
    return CURL_HTTP_VERSION_1_1;
  if (strcmp(v, "2") == 0)
    return CURL_HTTP_VERSION_2TLS;
  if (strcmp(v, "2-prior-knowledge") == 0)
    return CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
  return -1;
}

/* Sets x's easy handle (new, see easy_new) up from the spec table at index
 * spec (built and checked by http.lua). */
static void header_list(lua_State *L, xfer *x, hmulti *m, int spec, int has_body);

static void setup(lua_State *L, xfer *x, hmulti *m, int spec) {
  CURL *e = x->easy;
  const char *method = opt_string(L, spec, K_method);
  const char *url = opt_string(L, spec, K_url);
  const char *s;
  size_t blen;
  lua_Integer redirects = opt_int(L, spec, K_max_redirects, 10);
  lua_Integer idle = opt_int(L, spec, K_idle_timeout, 0);
  long version = http_version(opt_string(L, spec, K_http_version));
  int has_body, trust_env, body_fn = opt_bool(L, spec, K_body_fn, 0);
  strncpy(x->method, method ? method : "GET", sizeof(x->method) - 1);
  curl_easy_setopt(e, CURLOPT_PRIVATE, x);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->err);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_PREREQDATA, x);
  if (!idempotent(x->method) || body_fn)
    x->flags |= XF_ONCE;
  if (redirects != 0)
    x->flags |= XF_FOLLOW;
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, redirects != 0 ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)redirects);
  x->timeout_ms = (long)opt_int(L, spec, K_timeout, 0);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, x->timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   (long)opt_int(L, spec, K_connect_timeout, 30000));
  x->idle_ms = idle > 0 ? (uint64_t)idle : 0;
  if (version >= 0)
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, version);
  x->max_body = (curl_off_t)opt_int(L, spec, K_max_body, -1);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, x->max_body >= 0 ? x->max_body : 0);
  if (opt_bool(L, spec, K_stream, 0))
    x->flags |= XF_STREAM;
  if (!opt_bool(L, spec, K_verify, 1)) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if ((s = opt_string(L, spec, K_cafile)) != NULL)
    curl_easy_setopt(e, CURLOPT_CAINFO, s);
  /* A proxy only when asked: the proxy option, or the environment's
   * (http_proxy, https_proxy, all_proxy, no_proxy) with trust_env, as
   * aiohttp; easy_base has none. */
  s = opt_string(L, spec, K_proxy);
  trust_env = opt_bool(L, spec, K_trust_env, 0);
  if (s != NULL || trust_env) {
    curl_easy_setopt(e, CURLOPT_PROXY, s);
    if (trust_env)
      curl_easy_setopt(e, CURLOPT_NOPROXY, NULL);
  }
  if ((s = opt_string(L, spec, K_cookie)) != NULL)
    curl_easy_setopt(e, CURLOPT_COOKIE, s);
  /* cookie-file lines into the session's jar (through e's CURLOPT_SHARE) */
  if (spec_get(L, spec, K_seed_cookies) == LUA_TTABLE && m->sess->share) {
    int i;
    for (i = 1; lua_rawgeti(L, -1, i) == LUA_TSTRING; i++) {
      curl_easy_setopt(e, CURLOPT_COOKIELIST, lua_tostring(L, -1));
      lua_pop(L, 1);
    }
    lua_pop(L, 1); /* what ended the list */
  }
  lua_pop(L, 1);
  /* Prefer an HTTP/2 connection being set up over opening more, where h2
   * is possible; for plain http the wait would last until the first
   * response (curl learns "no multiplexing" only then). */
  if ((url && strncasecmp(url, "https:", 6) == 0) ||
      version == CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE)
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  /* the body: a string, or chunks the task feeds (chunked upload); POST,
   * PUT and PATCH without one send an empty one (Content-Length: 0, which
   * servers such as nginx want), as aiohttp and requests do */
  x->declared = -1;
  if (body_fn && (blen = (size_t)opt_int(L, spec, K_body_size, -1)) != (size_t)-1) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    x->declared = (curl_off_t)blen;
  }
  spec_get(L, spec, K_body);
  s = lua_tolstring(L, -1, &blen);
  if (s == NULL && method && !body_fn &&
      (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
       strcmp(method, "PATCH") == 0)) {
    s = "";
    blen = 0;
  }
  if (s) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, s);
  }
  lua_pop(L, 1);
  has_body = s != NULL;
  if (body_fn) {
    has_body = 1;
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(e, CURLOPT_READDATA, x);
  }
  /* POST is curl's own (the body makes it one), so that curl turns it into
   * a GET on a 301, 302 or 303; a custom method would be kept across
   * redirects (http.lua follows those itself). */
  if (method == NULL || strcmp(method, "GET") == 0) {
    if (has_body)
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "GET");
  } else if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (strcmp(method, "POST") != 0) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
  header_list(L, x, m, spec, has_body);
}

/* Whether the header line h is for the header name (n bytes, lower case). */
static int is_header(const char *h, const char *name, size_t n) {
  return strncasecmp(h, name, n) == 0 && (h[n] == ':' || h[n] == ';');
}

/* x's request header lines: the caller's ("Name: value" strings in the
 * spec's headers array), with tide's defaults for the names it did not
 * give; a request with neither lines nor a body shares m's list. */
static void header_list(lua_State *L, xfer *x, hmulti *m, int spec, int has_body) {
  struct curl_slist *own = NULL, *l;
  int i, ua = 1, ae = 1;
  /* with a body, "Expect:" stops curl's 1 s wait for a 100 Continue */
  if (has_body)
    own = curl_slist_append(NULL, "Expect:");
  if (spec_get(L, spec, K_headers) == LUA_TTABLE) {
    for (i = 1; lua_rawgeti(L, -1, i) == LUA_TSTRING; i++) {
      const char *h = lua_tostring(L, -1);
      if ((l = curl_slist_append(own, h)) != NULL)
        own = l;
      if (is_header(h, "content-type", 12))
        has_body = 0; /* the caller's type: nothing to take away below */
      ua = ua && !is_header(h, "user-agent", 10);
      ae = ae && !is_header(h, "accept-encoding", 15);
      lua_pop(L, 1);
    }
    lua_pop(L, 1); /* what ended the list */
  }
  lua_pop(L, 1);
  if (own == NULL) {
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, m->defaults);
    return;
  }
  /* a body the caller gave no type gets none: curl would call it a form
   * (application/x-www-form-urlencoded); opts.form and opts.json set
   * theirs in http.lua */
  if (has_body && (l = curl_slist_append(own, "Content-Type:")) != NULL)
    own = l;
  if (ua && (l = curl_slist_append(own, m->defaults[0].data)) != NULL)
    own = l;
  if (ae && (l = curl_slist_append(own, m->defaults[1].data)) != NULL)
    own = l;
  x->hlist = own;
  curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, own);
}

static int event_k(lua_State *L, int status, lua_KContext ctx);

/* Parks the task (x at index 1, nothing above) until x is ready for `want`. */
static int wait_for(lua_State *L, xfer *x, int want, lua_KFunction k) {
  tide_task *t = tide__current(L);
  x->want = want;
  x->waiter = t;
  return tide__park(L, t, 1, k);
}

/* After a park: a cancelled task re-raises; with abort set, it first takes
 * the transfer out of curl (a request nobody will wait for). A cancelled
 * read of a streamed body does not abort: the bytes stay buffered for the
 * next read, as a cancelled read does in asyncio. */
static void resumed(lua_State *L, xfer *x, int abort) {
  x->waiter = NULL;
  if (!lua_toboolean(L, 2)) {
    if (abort) {
      x->flags |= XF_DONE | XF_ABORTED;
      x->result = CURLE_ABORTED_BY_CALLBACK;
      xfer_release(x);
    }
    lua_pushvalue(L, 3);
    lua_error(L);
  }
  lua_settop(L, 1);
}

/* Returns the next event of x for its task: "body" (feed the request body),
 * "headers" (streamed response ready), "done"; raises its failure. */
static int event_k(lua_State *L, int status, lua_KContext ctx) {
  xfer *x = lua_touserdata(L, 1);
  (void)status;
  if (ctx)
    resumed(L, x, 1);
  if (x->flags & XF_DONE) {
    if (x->result != CURLE_OK || (x->flags & (XF_CLOSED | XF_ABORTED)))
      return raise_failure(L, x);
    lua_pushliteral(L, "done");
  } else if (x->flags & XF_NEEDBODY) {
    lua_pushliteral(L, "body");
  } else if (x->want == W_HEADERS && (x->flags & XF_HDRS)) {
    lua_pushliteral(L, "headers");
  } else {
    return wait_for(L, x, x->want, event_k);
  }
  return 2; /* x, event */
}

/* session:request(spec) -> transfer, event (see event_k) */
static int s_request(lua_State *L) {
  hsession *S = luaL_checkudata(L, 1, SESSION_MT);
  tide_task *t;
  if (S->closed && lua_istable(L, 2)) { /* the message names the request */
    const char *url = opt_string(L, 2, K_url);
    url = push_redacted(L, url ? url : "");
    tide__err_push(L, "closed", "%s %s: the HTTP session was closed",
                   opt_string(L, 2, K_method), url);
    lua_pushstring(L, url);
    lua_setfield(L, -2, "url");
    return lua_error(L);
  }
  S = check_session(L, 1);
  t = tide__current(L);
  hmulti *m;
  xfer *x;
  CURLMcode rc;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (S->m && S->m->sched != t->s)
    return tide__raise_kind_at_user(L, "invalid_state", "this HTTP session belongs "
                                    "to another run (tide.run); make one inside this run");
  if (S->m == NULL)
    S->m = hmulti_new(L, S, t->s);
  m = S->m;
  x = lua_newuserdatauv(L, sizeof(*x), 2);
  memset(x, 0, sizeof(*x));
  x->clen = -1;
  luaL_setmetatable(L, XFER_MT);
  lua_pushvalue(L, 1); /* the session lives as long as its transfers */
  lua_setiuservalue(L, -2, 1);
  spec_get(L, 2, K_url);
  lua_setiuservalue(L, -2, 2);
  x->easy = easy_new(m);
  if (x->easy == NULL)
    return luaL_error(L, "not enough memory");
  x->m = m;
  x->started = uv_now(m->sched->loop);
  x->next = m->xfers;
  if (x->next)
    x->next->prev = x;
  m->xfers = x;
  setup(L, x, m, 2);
  rc = curl_multi_add_handle(m->multi, x->easy);
  if (rc != CURLM_OK) {
    xfer_release(x);
    return luaL_error(L, "cannot start the transfer: %s", curl_multi_strerror(rc));
  }
  x->flags |= XF_ATTACHED;
  m->sched->io_pending++;
  if (++m->nattached > m->peak) {
    /* Keep as many idle connections as transfers ever ran at once (capped
     * by max_connections). curl's default, 4 x the handles in the multi
     * right now, dips when a batch finishes, and it then closed about one
     * kept-alive connection in seven under load. */
    m->peak = m->nattached;
    if (m->peak >= 16 && (m->sess->max_total <= 0 || m->peak <= m->sess->max_total))
      curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, m->peak);
  }
  x->deadline = x->timeout_ms > 0 && (m->sess->max_host > 0 || m->sess->max_total > 0);
  if (x->idle_ms || x->deadline) {
    x->last = uv_now(m->sched->loop);
    x->flags |= XF_SWEPT;
    if (m->nidle++ == 0)
      uv_timer_start(&m->sweep, on_uv_sweep, 50, 50);
  }
  lua_replace(L, 1);
  lua_settop(L, 1);
  x->want = (x->flags & XF_STREAM) ? W_HEADERS : W_DONE;
  return wait_for(L, x, x->want, event_k);
}

/* ---- Lua: transfers --------------------------------------------------- */

static xfer *check_xfer(lua_State *L) {
  return luaL_checkudata(L, 1, XFER_MT);
}

/* x:feed(chunk | nil) -> x, next event: hands curl the next piece of the
 * request body (nil ends it). */
static int x_feed(lua_State *L) {
  xfer *x = check_xfer(L);
  size_t len;
  const char *p = luaL_optlstring(L, 2, NULL, &len);
  if (!(x->flags & XF_DONE)) {
    if (p != NULL && x->declared >= 0 &&
        x->fed + (curl_off_t)(x->req.n - x->roff + len) > x->declared) {
      /* more than its Content-Length: curl would cut the rest off */
      x->flags |= XF_DONE | XF_BADLEN;
      x->result = CURLE_ABORTED_BY_CALLBACK;
      return raise_failure(L, x);
    }
    if (p == NULL)
      x->flags |= XF_REQEOF;
    else if (tide__buf_add(&x->req, p, len) < 0)
      return luaL_error(L, "not enough memory");
    if (p == NULL || len > 0) {
      x->flags &= ~(XF_NEEDBODY | XF_SENDPAUSED);
      unpause(L, x);
    }
  }
  lua_settop(L, 1);
  return event_k(L, LUA_OK, 0);
}

static const char *version_name(long v) {
  switch (v) {
  case CURL_HTTP_VERSION_1_0: return "1.0";
  case CURL_HTTP_VERSION_1_1: return "1.1";
  case CURL_HTTP_VERSION_2_0: return "2";
  case CURL_HTTP_VERSION_3: return "3";
  default: return "?";
  }
}

/* Pushes the map (lower-case name -> first value) of the header lines in
 * [p, end). */
static void push_header_map(lua_State *L, const char *p, const char *end) {
  lua_createtable(L, 0, 8);
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *le = eol ? eol : end, *colon;
    while (le > p && (le[-1] == '\r' || le[-1] == '\n'))
      le--;
    if ((colon = memchr(p, ':', (size_t)(le - p))) != NULL) {
      const char *v = colon + 1;
      char lower[128];
      size_t k, nl = (size_t)(colon - p);
      while (v < le && (*v == ' ' || *v == '\t'))
        v++;
      char *low = nl < sizeof(lower) ? lower : malloc(nl); /* a long name: rare */
      if (low != NULL) {
        for (k = 0; k < nl; k++)
          low[k] = (char)((p[k] >= 'A' && p[k] <= 'Z') ? p[k] + 32 : p[k]);
        lua_pushlstring(L, low, nl);
        if (low != lower)
          free(low);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -3) == LUA_TNIL) { /* the first value wins */
          lua_pop(L, 1);
          lua_pushlstring(L, v, (size_t)(le - v));
          lua_rawset(L, -3);
        } else {
          lua_pop(L, 2);
        }
      }
    }
    p = eol ? eol + 1 : end;
  }
}

/* The length of u's scheme with its "://" (a letter, then letters, digits,
 * "+", "-" and ".", as RFC 3986 has it), or 0. */
static size_t scheme_len(const char *u) {
  size_t i = 0;
  if (!isalpha((unsigned char)u[0]))
    return 0;
  while (isalnum((unsigned char)u[++i]) || (u[i] && strchr("+.-", u[i])))
    ;
  return strncmp(u + i, "://", 3) == 0 ? i + 3 : 0;
}

/* Whether the byte at p (end: the string's end) is sent percent-encoded:
 * what requests' requote_uri and aiohttp's yarl encode (controls, space,
 * bytes past ASCII, " < > \ ^ ` { | }), and a % that does not start an
 * escape (as yarl; curl would send it raw). */
static int needs_pct(const char *p, const char *end) {
  unsigned char c = (unsigned char)*p;
  if (c <= 0x20 || c >= 0x7f)
    return 1;
  if (c == '%')
    return end - p < 3 || !isxdigit((unsigned char)p[1]) || !isxdigit((unsigned char)p[2]);
  return strchr("\"<>\\^`{|}", c) != NULL;
}

/* Pushes u (n bytes) as tide sends it and returns 1: a host name past
 * ASCII in its IDNA form (xn--...; libcurl converts one only under a UTF-8
 * locale, which tide does not set), as aiohttp sends it, and after the
 * host what needs_pct says percent-encoded (curl refuses a space, and
 * encodes one in a Location's query as "+", as aiohttp's yarl does).
 * Returns 0, pushing nothing, when nothing needs it, and -1 with the reason
 * pushed for a host curl cannot be given (a control character or a space:
 * a NUL would cut the URL short) or one IDNA refuses. from is where the
 * host starts ("//host" or "scheme://host"), or 0 for a path. */
static int push_encoded(lua_State *L, const char *u, size_t n, size_t from) {
  const char *p = u + from, *hend = p, *name = p, *nend = p, *end = u + n;
  char *ascii = NULL;
  size_t i;
  luaL_Buffer b;
  for (i = 0; i < n && !needs_pct(u + i, end); i++)
    ;
  if (i == n)
    return 0;
  if (from > 0) { /* the host: [user[:password]@]name[:port] */
    hend = p + strcspn(p, "/?#");
    if (hend < end && *hend == '\0')
      hend++; /* a NUL ends strcspn's count, not the host: refused below */
    for (i = 0; p + i < hend; i++) {
      if ((unsigned char)p[i] <= 0x20 || p[i] == 0x7f) {
        lua_pushfstring(L, "a control character or a space in the host (byte %d)",
                        (int)(p + i - u) + 1);
        return -1;
      }
      if (p[i] == '@')
        name = p + i + 1;
    }
    nend = name + strcspn(name, ":/?#");
    for (i = 0; name + i < nend && !(name[i] & 0x80); i++)
      ;
    if (name + i < nend) {
      char utf8[256];
      int rc = IDN2_TOO_BIG_DOMAIN;
      if ((size_t)(nend - name) < sizeof(utf8)) {
        memcpy(utf8, name, (size_t)(nend - name));
        utf8[nend - name] = '\0';
        rc = idn2_to_ascii_8z(utf8, &ascii, IDN2_NONTRANSITIONAL);
      }
      if (rc != IDN2_OK) {
        lua_pushfstring(L, "bad international host name (IDNA: %s)", idn2_strerror(rc));
        return -1;
      }
    }
  }
  luaL_buffinit(L, &b);
  if (ascii) {
    luaL_addlstring(&b, u, (size_t)(name - u));
    luaL_addstring(&b, ascii);
    luaL_addlstring(&b, nend, (size_t)(hend - nend));
    idn2_free(ascii);
  } else {
    luaL_addlstring(&b, u, (size_t)(hend - u));
  }
  for (p = hend; p < end; p++) {
    if (needs_pct(p, end)) {
      char hex[4];
      snprintf(hex, sizeof(hex), "%%%02X", (unsigned char)*p);
      luaL_addlstring(&b, hex, 3);
    } else {
      luaL_addchar(&b, *p);
    }
  }
  luaL_pushresult(&b);
  return 1;
}

/* redact_url(url) -> url with its password as "***" (push_redacted) */
static int l_redact_url(lua_State *L) {
  push_redacted(L, luaL_checkstring(L, 1));
  return 1;
}

/* encode_url(url) -> url encoded as push_encoded does (url itself when
 * nothing needs it); nil and why when url has no scheme ("http://"), which
 * tide does not guess (checked here: a Lua pattern costs a plain GET several
 * percent), or a host name IDNA refuses. */
static int l_encode_url(lua_State *L) {
  size_t n;
  const char *u = luaL_checklstring(L, 1, &n);
  size_t from = scheme_len(u);
  int rc;
  if (from == 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "a URL with a scheme expected (http:// or https://)");
    return 2;
  }
  rc = push_encoded(L, u, n, from);
  if (rc == 0)
    lua_settop(L, 1);
  else if (rc < 0) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  return 1;
}

/* header_map(block) -> the map of a response's header lines; http.lua
 * makes it on the first lookup (most responses are never asked). */
static int l_header_map(lua_State *L) {
  size_t n;
  const char *p = luaL_checklstring(L, 1, &n);
  push_header_map(L, p, p + n);
  return 1;
}

/* Replaces the header block on top by the same without its obs-folds: a
 * line that starts with a space or a tab goes on the line before, its line
 * break dropped and its blanks kept (RFC 9112 5.2; aiohttp reads
 * "A: a\r\n  b" as "a  b"). curl hands the lines over as they came. */
static void unfold(lua_State *L) {
  size_t n;
  const char *p = lua_tolstring(L, -1, &n), *end = p + n, *q;
  luaL_Buffer b;
  if ((q = memchr(p, '\n', n)) == NULL)
    return;
  for (; q && q + 1 < end && q[1] != ' ' && q[1] != '\t';
       q = memchr(q + 1, '\n', (size_t)(end - q - 1)))
    ;
  if (q == NULL || q + 1 >= end)
    return; /* none (almost always) */
  luaL_buffinit(L, &b);
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p)), *le;
    if (eol == NULL) {
      luaL_addlstring(&b, p, (size_t)(end - p));
      break;
    }
    le = eol > p && eol[-1] == '\r' ? eol - 1 : eol;
    luaL_addlstring(&b, p, (size_t)(le - p));
    if (!(eol + 1 < end && (eol[1] == ' ' || eol[1] == '\t')))
      luaL_addlstring(&b, le, (size_t)(eol + 1 - le)); /* not folded: the break stays */
    p = eol + 1;
  }
  luaL_pushresult(&b);
  lua_replace(L, -2);
}

/* Sets res.reason, res.header_block (the final response's header lines as
 * received, obs-folds undone) and, with map, res.headers (see
 * push_header_map). */
static void set_headers(lua_State *L, xfer *x, int res, int map) {
  const char *p = x->hdr.p ? x->hdr.p : "", *end = p + x->hdr.n, *block = p;
  const char *eol = memchr(p, '\n', (size_t)(end - p)), *le = eol ? eol : end;
  while (le > p && (le[-1] == '\r' || le[-1] == '\n'))
    le--;
  if (le - p > 5 && memcmp(p, "HTTP/", 5) == 0) { /* the status line */
    const char *sp = memchr(p, ' ', (size_t)(le - p));
    sp = sp ? memchr(sp + 1, ' ', (size_t)(le - sp - 1)) : NULL;
    lua_pushlstring(L, sp ? sp + 1 : le, sp ? (size_t)(le - sp - 1) : 0);
    set_key(L, res, K_reason);
    block = eol ? eol + 1 : end;
  }
  lua_pushlstring(L, block, (size_t)(end - block));
  unfold(L);
  if (map) {
    size_t n;
    const char *b = lua_tolstring(L, -1, &n);
    push_header_map(L, b, b + n);
    set_key(L, res, K_headers);
  }
  set_key(L, res, K_header_block);
}

/* Sets res._redirect_url: where the Location of the 3xx response res
 * points, made absolute against the URL asked (curl's CURLINFO_REDIRECT_URL
 * is known only once the transfer is done, too late for a stream), or
 * res._redirect_error: why curl could not make it one. A Location that is
 * only a #fragment is the URL asked (curl 7.88 took it for a path). */
static void set_redirect_url(lua_State *L, xfer *x, int res) {
  char *base = NULL, *out = NULL;
  const char *loc;
  CURLU *u;
  CURLUcode rc = CURLUE_OUT_OF_MEMORY;
  int enc = 0;
  size_t n = 0;
  spec_get(L, res, K_headers);
  lua_getfield(L, -1, "location");
  loc = lua_tolstring(L, -1, &n);
  if (loc) { /* without the spaces and tabs around it (RFC 9110 5.5) */
    while (n > 0 && (*loc == ' ' || *loc == '\t'))
      loc++, n--;
    while (n > 0 && (loc[n - 1] == ' ' || loc[n - 1] == '\t'))
      n--;
    lua_pushlstring(L, loc, n);
    lua_replace(L, -2);
    loc = lua_tostring(L, -1);
    enc = push_encoded(L, loc, n, strncmp(loc, "//", 2) == 0 ? 2 : scheme_len(loc));
  }
  if (enc == 0)
    lua_pushnil(L); /* the same slots either way */
  else if (enc > 0)
    loc = lua_tostring(L, -1);
  else { /* a host name IDNA refuses */
    lua_pushvalue(L, -1);
    set_key(L, res, K__redirect_error);
    loc = NULL;
  }
  curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &base);
  if (loc && *loc && base) {
    if (*loc == '#') {
      lua_pushlstring(L, base, strcspn(base, "#"));
      set_key(L, res, K__redirect_url);
    } else if ((u = curl_url()) != NULL) {
      if ((rc = curl_url_set(u, CURLUPART_URL, base, 0)) == CURLUE_OK &&
          (rc = curl_url_set(u, CURLUPART_URL, loc, CURLU_NON_SUPPORT_SCHEME |
                                                   CURLU_URLENCODE)) == CURLUE_OK &&
          (rc = curl_url_get(u, CURLUPART_URL, &out, 0)) == CURLUE_OK) {
        lua_pushstring(L, out);
        set_key(L, res, K__redirect_url);
        curl_free(out);
      }
      curl_url_cleanup(u);
    }
    if (rc != CURLUE_OK && *loc != '#') {
      lua_pushstring(L, curl_url_strerror(rc));
      set_key(L, res, K__redirect_error);
    }
  }
  lua_pop(L, 3);
}

/* x:response() -> {status, reason, headers (map), header_block, body,
 * url, method, http_version, redirects, _timings, _redirect_url}; the body
 * only when not streamed. */
static int x_response(lua_State *L) {
  xfer *x = check_xfer(L);
  char *url = NULL;
  long v = 0, redirects = 0;
  int res;
  if (x->easy == NULL)
    return luaL_error(L, "the response was taken already");
  lua_createtable(L, 0, 10);
  res = lua_gettop(L);
  lua_pushinteger(L, x->status);
  set_key(L, res, K_status);
  set_headers(L, x, res, x->status >= 300 && x->status < 400);
  curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url);
  if (url) /* as aiohttp's: without the #fragment (never sent) */
    lua_pushlstring(L, url, strcspn(url, "#"));
  else
    lua_pushnil(L);
  set_key(L, res, K_url);
  url = NULL; /* the last request's method (GET after a 303) */
  curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_METHOD, &url);
  lua_pushstring(L, url ? url : x->method);
  set_key(L, res, K_method);
  curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &v);
  lua_pushstring(L, version_name(v));
  set_key(L, res, K_http_version);
  curl_easy_getinfo(x->easy, CURLINFO_REDIRECT_COUNT, &redirects);
  lua_pushinteger(L, redirects);
  set_key(L, res, K_redirects);
  if (x->status >= 300 && x->status < 400)
    set_redirect_url(L, x, res);
  { /* TIMINGS order, packed as native doubles (s): http.lua unpacks and
     * names them on first use */
    static const CURLINFO what[] = {
      CURLINFO_NAMELOOKUP_TIME_T, CURLINFO_CONNECT_TIME_T,
      CURLINFO_APPCONNECT_TIME_T, CURLINFO_PRETRANSFER_TIME_T,
      CURLINFO_STARTTRANSFER_TIME_T, CURLINFO_TOTAL_TIME_T,
      CURLINFO_REDIRECT_TIME_T};
    double t[sizeof(what) / sizeof(what[0])];
    size_t i;
    for (i = 0; i < sizeof(what) / sizeof(what[0]); i++) {
      curl_off_t us = 0;
      curl_easy_getinfo(x->easy, what[i], &us);
      t[i] = (double)us / 1e6;
    }
    lua_pushlstring(L, (const char *)t, sizeof(t));
    set_key(L, res, K__timings);
  }
  if (!(x->flags & XF_STREAM)) {
    lua_pushlstring(L, x->body.p ? x->body.p : "", x->body.n);
    set_key(L, res, K_body);
    tide__buf_free(&x->body);
    xfer_release(x);
  }
  return 1;
}

/* Takes up to n buffered bytes (all when n is 0) and resumes a paused
 * transfer once the reader has caught up. */
static void take(lua_State *L, xfer *x, size_t n) {
  size_t have = x->body.n - x->boff;
  if (n == 0 || n > have)
    n = have;
  lua_pushlstring(L, x->body.p + x->boff, n);
  x->boff += n;
  if (x->boff == x->body.n)
    x->boff = x->body.n = 0;
  if ((x->flags & XF_RECVPAUSED) && x->body.n - x->boff < HIGH_WATER / 2) {
    x->flags &= ~XF_RECVPAUSED;
    if (x->m)
      x->last = uv_now(x->m->sched->loop);
    unpause(L, x);
  }
}

static int read_k(lua_State *L, int status, lua_KContext ctx) {
  xfer *x = lua_touserdata(L, 1);
  lua_Integer n;
  (void)status;
  if (ctx) {
    n = (lua_Integer)(ctx >> 1);
    resumed(L, x, 0);
  } else {
    n = luaL_optinteger(L, 2, 0);
    lua_settop(L, 1);
  }
  if (x->body.n > x->boff) {
    take(L, x, (size_t)n);
    return 1;
  }
  if (x->flags & XF_DONE) {
    if (x->result != CURLE_OK || (x->flags & (XF_CLOSED | XF_ABORTED)))
      return raise_failure(L, x);
    xfer_release(x);
    lua_pushnil(L); /* the end */
    return 1;
  }
  if (x->waiter && x->waiter != tide__current(L))
    return luaL_error(L, "another task is reading this response");
  x->want = W_DATA;
  x->waiter = tide__current(L);
  return tide__park(L, x->waiter, ((lua_KContext)n << 1) | 1, read_k);
}

/* x:read([n]) -> up to n bytes of the streamed body (what is there when n
 * is absent), or nil at its end */
static int x_read(lua_State *L) {
  xfer *x = check_xfer(L);
  luaL_argcheck(L, lua_isnoneornil(L, 2) || luaL_checkinteger(L, 2) >= 0, 2,
                "non-negative byte count expected");
  if (lua_tointeger(L, 2) == 0 && !lua_isnoneornil(L, 2) &&
      !(x->flags & XF_DONE && x->body.n == x->boff)) {
    lua_pushliteral(L, ""); /* read(0), not at the end: as Lua's file:read(0) */
    return 1;
  }
  lua_settop(L, 2);
  return read_k(L, LUA_OK, 0);
}

/* x:close(): aborts the transfer if it is still going */
static int x_close(lua_State *L) {
  xfer *x = check_xfer(L);
  if (!(x->flags & XF_DONE)) {
    x->flags |= XF_DONE | XF_ABORTED;
    x->result = CURLE_ABORTED_BY_CALLBACK;
  }
  xfer_release(x);
  tide__buf_free(&x->body);
  x->boff = 0;
  wake(L, x); /* a reader in another task gets "closed" */
  return 0;
}

static const luaL_Reg session_methods[] = {
  {"close", s_close}, {NULL, NULL}};

static const luaL_Reg xfer_methods[] = {
  {"feed", x_feed}, {"read", x_read},
  {"close", x_close}, {NULL, NULL}};

static const luaL_Reg core_funcs[] = {
  {"session", l_session}, {"default_session", l_default_session},
  {"header_map", l_header_map}, {"encode_url", l_encode_url}, {"redact_url", l_redact_url},
  {NULL, NULL}};

static int global_gc(lua_State *L) {
  (void)L;
  curl_global_cleanup();
  return 0;
}

static int global_key;

/* Sets method name of the type mt to f with the key names (on top) as its
 * upvalue. */
static void with_keys(lua_State *L, const char *mt, const char *name,
                      lua_CFunction f) {
  luaL_getmetatable(L, mt);
  lua_getfield(L, -1, "__index");
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, f, 1);
  lua_setfield(L, -2, name);
  lua_pop(L, 2);
}

int luaopen_tide_http_core(lua_State *L) {
  static const char *const key_names[] = {KEYS(KEY_NAME)};
  int i;
  tide_open(L);
  /* curl_global_init once per state, undone when the state closes (the
   * last of its finalizers: made before any session), so that a module
   * unloaded with the state (lua5.4 + tide.so) leaves nothing behind. */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &global_key) == LUA_TNIL) {
    curl_global_init(CURL_GLOBAL_DEFAULT); /* reference-counted; thread-safe */
    lua_newuserdatauv(L, 1, 0);
    lua_newtable(L);
    lua_pushcfunction(L, global_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &global_key);
  }
  lua_pop(L, 1);
  tide__new_type(L, SESSION_MT, session_methods, s_gc, NULL, NULL);
  tide__new_type(L, XFER_MT, xfer_methods, x_close, NULL, NULL);
  lua_createtable(L, NKEYS, 0);
  for (i = 0; i < NKEYS; i++) {
    lua_pushstring(L, key_names[i]);
    lua_rawseti(L, -2, i + 1);
  }
  with_keys(L, SESSION_MT, "request", s_request);
  with_keys(L, XFER_MT, "response", x_response);
  lua_pop(L, 1);
  luaL_newlib(L, core_funcs);
  lua_pushstring(L, curl_version());
  lua_setfield(L, -2, "curl_version");
  return 1;
}
