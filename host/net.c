/*
 * net.c: TCP streams and servers on libuv ("tide.net"). Owns the
 * "tide.Stream" and "tide.Server" types: a small userdata box pointing at a
 * C struct that holds the uv handle, because the handle must outlive the
 * userdata until its close callback (the luv pattern). The struct is freed
 * in the close callback; a collected box closes its handle. A listening
 * server's box is anchored in the registry: as asyncio's, a server nobody
 * references serves until close() or the end of its run.
 *
 * A stream wraps a TCP socket or a pipe (a child's stdin, stdout or stderr:
 * tide__stream_new_pipe, for process.c); both have the same methods. TCP
 * handles left open are closed by the loop's teardown (tide__net_close);
 * a pipe stream is on its run's closer list instead and closes when the
 * run ends.
 *
 * Reading fills a C buffer while a task wants data and stops the socket
 * when the buffer passes a high-water mark (backpressure toward the peer);
 * writing suspends the writer while libuv's write queue is over the mark.
 * A parked reader (one at a time) or writers (a waitlist) are woken by the
 * I/O callbacks; a cancelled one just leaves (the data stays buffered for
 * the next read). close() lets the queued writes finish before the handle
 * closes (asyncio's transport.close()); a run's end and the loop's teardown
 * abort them.
 *
 * read_line and read_until buffer at most the stream's limit (opts.limit of
 * connect, serve and process.spawn; 64 KiB by default, as asyncio's
 * streams) while they look for the separator: a longer line is kind
 * "too_large". As asyncio's readuntil, read_until leaves the bytes
 * buffered; as its readline, read_line drops the line (through its "\n"
 * if that came, else what is buffered).
 *
 * Errors: a clean end of stream is a nil read (or kind "eof" from
 * read_exactly/read_until); a reset is kind "reset"; other socket errors are
 * kind "net"; resolving is kind "dns"; a refused connection is "connect";
 * a connect past its deadline is "timeout".
 */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h> /* SIOCOUTQ */

#include "internal.h"

#define STREAM_MT "tide.Stream"
#define SERVER_MT "tide.Server"
#define HIGH_WATER (256 * 1024)
#define DEFAULT_LIMIT (64 * 1024) /* asyncio's streams' */

typedef struct stream_box stream_box;
typedef struct server_box server_box;

/* Streams and servers start with their kind, so loop teardown can close
 * either. */
enum { NET_STREAM = 1, NET_SERVER = 2 };

/* Bytes read and not yet taken: buf[off .. off + len). A stream's move to
 * its box when it closes: a reader that was waiting then reads them as the
 * end (asyncio's reader gets them after connection_lost too). */
typedef struct rbuf {
  char *buf;
  size_t off, len, cap;
  size_t limit; /* read_line/read_until: the most bytes before the separator */
} rbuf;

typedef struct stream {
  int kind;
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  tide_closer closer; /* pipes: on their run's list until closed */
  stream_box *box; /* the Lua box pointing here, NULL once collected */
  tide_runtime *rt;
  rbuf in;
  int eof, err;        /* end seen; a libuv error seen (< 0) */
  int reading, closed; /* uv_read_start active; close requested */
  int writes;          /* uv_write requests not yet called back */
  int flushing;        /* closed, uv_close waits for the writes to end */
  int shut;            /* write_eof() was called */
  tide_task *reader;     /* parked on this stream */
  tide_waitlist writers; /* parked until the write queue drains */
  tide_waitlist closers; /* parked in wait_closed() */
  struct stream *live_prev, *live_next; /* rt->net_live */
} stream;

struct stream_box {
  stream *s;
  rbuf rest; /* the bytes left at the close; freed with the box */
  struct sockaddr_storage peer; /* the other end, once known (has_peer):
                                 * kept by the box, for after the close */
  int has_peer;
};

typedef struct server {
  int kind;
  uv_tcp_t tcp;
  server_box *box;
  tide_runtime *rt;
  tide_sched *sched;
  int handler_ref; /* registry ref of the handler function */
  int self_ref; /* registry ref of the box while it listens: a server nobody
                 * references keeps serving, as asyncio's */
  int closed;
  size_t limit; /* its streams' */
} server;

struct server_box { server *sv; };

/* ---- errors ---------------------------------------------------------- */

static int raise_uv(lua_State *L, int rc, const char *what) {
  const char *kind = "net";
  if (rc == UV_ECONNRESET || rc == UV_EPIPE)
    kind = "reset";
  else if (rc == UV_ECONNREFUSED || rc == UV_ETIMEDOUT || rc == UV_EHOSTUNREACH ||
           rc == UV_ENETUNREACH)
    kind = "connect";
  else if (rc == UV_EAI_NONAME || rc == UV_EAI_AGAIN || rc == UV_EAI_FAIL ||
           rc == UV_EAI_NODATA)
    kind = "dns";
  tide__err_push(L, kind, "%s: %s (%s)", what, uv_strerror(rc), uv_err_name(rc));
  lua_pushstring(L, uv_err_name(rc));
  lua_setfield(L, -2, "code");
  return lua_error(L);
}

/* ---- streams --------------------------------------------------------- */

/* Takes s off its runtime's list of live streams. */
static void unlink_live(stream *s) {
  if (s->live_prev)
    s->live_prev->live_next = s->live_next;
  else
    s->rt->net_live = s->live_next;
  if (s->live_next)
    s->live_next->live_prev = s->live_prev;
  s->live_prev = s->live_next = NULL;
}

static void on_uv_stream_closed(uv_handle_t *h) {
  stream *s = h->data;
  if (s->box)
    s->box->s = NULL;
  if (s->rt) { /* else its runtime closed first (tide__net_detach) */
    unlink_live(s);
    tide__wl_wake_all(s->rt->L, &s->closers);
  }
  tide__wl_free(&s->closers);
  tide__wl_free(&s->writers);
  free(s->in.buf);
  free(s);
}

static void wake_task(tide_task **slot) {
  tide_task *t = *slot;
  if (t) {
    *slot = NULL;
    lua_pushboolean(t->s->L, 1);
    tide__wake(t->s->L, t, 1);
  }
}

/* Closes the handle now (the struct goes in the close callback); pending
 * writes are cancelled. */
static void stream_abort(stream *s) {
  if (!uv_is_closing(&s->h.handle)) {
    tide__closer_remove(&s->closer);
    uv_close(&s->h.handle, on_uv_stream_closed);
  }
}

/* Copies the unread bytes of in to the box's rest (nothing if memory is
 * short: the reader then reads the end at once). */
static void keep_rest(stream_box *b, const rbuf *in) {
  char *p = malloc(in->len);
  if (p == NULL)
    return;
  memcpy(p, in->buf + in->off, in->len);
  free(b->rest.buf);
  b->rest.buf = p;
  b->rest.off = 0;
  b->rest.len = b->rest.cap = in->len;
  b->rest.limit = in->limit;
}

/* Marks the stream closed and wakes parked tasks, which then find it
 * closed (a parked reader reads the end: the unread bytes, moved to the
 * box, as the struct may go before the reader runs, then nothing). The
 * bytes write() took are still sent, as asyncio's transport.close()
 * flushes them: with writes pending the handle closes when the last one
 * ends (stream_abort at the run's end or the loop's teardown, or a write
 * error, cuts that short). */
static void stream_close(stream *s) {
  if (s && !s->closed) {
    s->closed = 1; /* the box still points here, for abort() (until the
                    * close callback or the box's collection) */
    if (s->box && s->in.len > 0) /* only the unread bytes: the read buffer
                                   * (128 KB) goes with the struct */
      keep_rest(s->box, &s->in);
    wake_task(&s->reader);
    if (!tide__wl_empty(&s->writers))
      tide__wl_wake_all(s->rt->L, &s->writers);
    if (s->writes > 0 && !s->err) {
      if (s->reading)
        uv_read_stop(&s->h.stream);
      s->reading = 0;
      s->flushing = 1;
    } else {
      stream_abort(s);
    }
  }
}

/* Keeps the other end's address, if it is not known yet: getpeername
 * fails once the connection is gone (a reset), and asyncio's peername,
 * taken when the connection is made, outlives it. */
static void keep_peer(stream *s) {
  stream_box *b = s->box;
  int len = sizeof(b->peer);
  if (b && !b->has_peer && s->h.handle.type == UV_TCP &&
      uv_tcp_getpeername(&s->h.tcp, (struct sockaddr *)&b->peer, &len) == 0)
    b->has_peer = 1;
}

/* Raises kind "closed" (a program can tell it from other failures). */
static int closed_error(lua_State *L, const char *what) {
  return tide__err_raise(L, "closed", "attempt to use a closed %s", what);
}

static stream *check_stream(lua_State *L, int idx) {
  stream_box *b = luaL_checkudata(L, idx, STREAM_MT);
  if (b->s == NULL || b->s->closed)
    closed_error(L, "stream");
  return b->s;
}

static void on_uv_alloc(uv_handle_t *h, size_t hint, uv_buf_t *out) {
  rbuf *r = &((stream *)h->data)->in;
  (void)hint;
  if (r->off > 0 && r->off + r->len + 65536 > r->cap) { /* compact */
    memmove(r->buf, r->buf + r->off, r->len);
    r->off = 0;
  }
  if (r->off + r->len + 65536 > r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 65536 * 2;
    char *nb = realloc(r->buf, cap);
    if (nb == NULL) {
      out->base = NULL;
      out->len = 0;
      return;
    }
    r->buf = nb;
    r->cap = cap;
  }
  out->base = r->buf + r->off + r->len;
  out->len = r->cap - r->off - r->len;
}

/* An end that was a reset. On a hang-up after a short read libuv reports
 * the end without reading again, so a reset that came right behind the
 * last bytes would pass for a clean end: the socket's pending error tells. */
static int pending_reset(stream *s) {
  uv_os_fd_t fd;
  int err = 0;
  socklen_t len = sizeof(err);
  if (s->h.handle.type != UV_TCP || uv_fileno(&s->h.handle, &fd) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
    return 0;
  return err == ECONNRESET ? UV_ECONNRESET : 0;
}

static void on_uv_read(uv_stream_t *h, ssize_t n, const uv_buf_t *b) {
  stream *s = h->data;
  (void)b;
  if (n > 0) {
    s->in.len += (size_t)n;
    if (s->in.len >= HIGH_WATER) { /* nobody is taking it: stop the peer */
      uv_read_stop(h);
      s->reading = 0;
    }
  } else if (n == UV_EOF) {
    s->eof = 1;
    s->err = pending_reset(s);
  } else if (n < 0) {
    s->err = (int)n;
  }
  if (n != 0 && (s->eof || s->err)) {
    uv_read_stop(h);
    s->reading = 0;
  }
  if (n != 0)
    wake_task(&s->reader);
}

/* Parks the running task as the stream's reader until data, EOF or an
 * error arrives. Returns via k. */
static int wait_readable(lua_State *L, stream *s, lua_KContext ctx,
                         lua_KFunction k) {
  tide_task *t = tide__current(L);
  if (s->reader)
    return tide__raise_kind_at_user(L, "invalid_state",
                                    "another task is already reading this "
                                    "stream");
  if (!uv_is_readable(&s->h.stream) && !s->eof && !s->err) /* a child's stdin */
    return tide__raise_kind_at_user(L, "invalid_state", "this pipe is write-only "
                                    "(a child's stdin: write to it)");
  if (!s->reading && !s->eof && !s->err) {
    int rc = uv_read_start(&s->h.stream, on_uv_alloc, on_uv_read);
    if (rc < 0)
      return raise_uv(L, rc, "read");
    s->reading = 1;
  }
  s->reader = t;
  t->s->io_pending++; /* a virtual clock waits for the bytes */
  return tide__park(L, t, ctx, k);
}

/* After a park in a stream continuation (counted in io_pending by the
 * park): on a cancel, leave and raise. */
static void after_wait(lua_State *L, stream *s, int base, tide_task **slot) {
  tide__rt(L)->current->s->io_pending--;
  if (!lua_toboolean(L, base)) {
    if (s && *slot == tide__rt(L)->current)
      *slot = NULL;
    lua_pushvalue(L, base + 1);
    lua_error(L);
  }
  lua_settop(L, base - 1);
}

/* Pushes the first `keep` of the next n buffered bytes and drops all n. */
static void take_keep(lua_State *L, rbuf *r, size_t n, size_t keep) {
  lua_pushlstring(L, r->buf + r->off, keep);
  r->off += n;
  r->len -= n;
  if (r->len == 0)
    r->off = 0;
}

static void take(lua_State *L, rbuf *r, size_t n) {
  take_keep(L, r, n, n);
}

/* The bytes a read takes from: the stream's; once it is closed, for a
 * reader that was waiting then (waited), the rest the close left in the
 * box, followed by the end. A call after the close raises kind "closed". */
static rbuf *read_from(lua_State *L, stream_box *b, int waited) {
  if (b->s && !b->s->closed)
    return &b->s->in;
  if (!waited)
    closed_error(L, "stream");
  return &b->rest;
}

/* read([n]) -> up to n bytes (all buffered if no n), or nil at EOF */
static int read_k(lua_State *L, int status, lua_KContext ctx) {
  stream_box *b = lua_touserdata(L, 1);
  stream *s = b->s;
  rbuf *r;
  lua_Integer n;
  (void)status;
  if (ctx)
    after_wait(L, s, 3, s ? &s->reader : NULL);
  r = read_from(L, b, (int)ctx);
  n = luaL_optinteger(L, 2, -1);
  if (r->len > 0) {
    take(L, r, (n >= 0 && (size_t)n < r->len) ? (size_t)n : r->len);
    return 1;
  }
  if (r == &b->rest || (s->eof && !s->err)) {
    lua_pushnil(L); /* the end */
    return 1;
  }
  if (s->err)
    return raise_uv(L, s->err, "read");
  if (n == 0) { /* as asyncio's read(0) and Lua's file:read(0): no wait */
    lua_pushliteral(L, "");
    return 1;
  }
  return wait_readable(L, s, 1, read_k);
}

/* Checks the byte count at arg: an integer, 0 or more. */
static void check_count(lua_State *L, int arg) {
  lua_Integer n = luaL_checkinteger(L, arg);
  if (n < 0)
    luaL_argerror(L, arg, lua_pushfstring(L, "non-negative byte count "
                                          "expected, got %I", n));
}

static int st_read(lua_State *L) {
  check_stream(L, 1);
  if (!lua_isnoneornil(L, 2))
    check_count(L, 2);
  lua_settop(L, 2);
  return read_k(L, LUA_OK, 0);
}

/* Where sep starts in r; *over is set when the bytes before it (or, not
 * found yet, the bytes that can no longer start it) pass r's limit
 * (asyncio's LimitOverrunError). */
static const char *find_sep(rbuf *r, const char *sep, size_t seplen,
                            int *over) {
  const char *p = r->len >= seplen
                    ? memmem(r->buf + r->off, r->len, sep, seplen) : NULL;
  size_t before = p ? (size_t)(p - (r->buf + r->off))
                    : r->len + 1 > seplen ? r->len + 1 - seplen : 0;
  *over = before > r->limit;
  return p;
}

/* Raises kind "too_large": a line longer than the stream's limit. */
static int limit_error(lua_State *L, rbuf *r, const char *what) {
  return tide__err_raise(L, "too_large", "%s longer than the stream's limit "
                         "of %I bytes (opts.limit)", what,
                         (lua_Integer)r->limit);
}

/* read_all() -> every byte to the end ("" at the end already), as
 * asyncio's read(-1); a reset or error before the end raises. */
static int all_k(lua_State *L, int status, lua_KContext ctx) {
  stream_box *b = lua_touserdata(L, 1);
  stream *s = b->s;
  rbuf *r;
  (void)status;
  if (ctx)
    after_wait(L, s, 2, s ? &s->reader : NULL);
  r = read_from(L, b, (int)ctx);
  if (r != &b->rest && s->err)
    return raise_uv(L, s->err, "read");
  if (r == &b->rest || s->eof) {
    take(L, r, r->len);
    return 1;
  }
  return wait_readable(L, s, 1, all_k);
}

static int st_read_all(lua_State *L) {
  check_stream(L, 1);
  lua_settop(L, 1);
  return all_k(L, LUA_OK, 0);
}

/* Shared by read_exactly and read_until: how many bytes of r make the
 * answer (0: not there yet). Stack: [stream, arg]. */
static size_t wanted(lua_State *L, rbuf *r, int until) {
  if (!until) {
    size_t n = (size_t)lua_tointeger(L, 2);
    return r->len >= n ? n : 0;
  } else {
    size_t seplen;
    const char *sep = lua_tolstring(L, 2, &seplen);
    int over;
    const char *p = find_sep(r, sep, seplen, &over);
    if (over) /* the bytes stay, for read() */
      limit_error(L, r, "the bytes before the separator are");
    return p ? (size_t)(p - (r->buf + r->off)) + seplen : 0;
  }
}

static int exact_k(lua_State *L, int status, lua_KContext ctx) {
  stream_box *b = lua_touserdata(L, 1);
  stream *s = b->s;
  int until = (int)(ctx & 2);
  rbuf *r;
  size_t n;
  (void)status;
  if (ctx & 1)
    after_wait(L, s, 3, s ? &s->reader : NULL);
  r = read_from(L, b, (int)(ctx & 1));
  if ((n = wanted(L, r, until)) > 0) {
    take(L, r, n);
    return 1;
  }
  if (r != &b->rest && s->err)
    return raise_uv(L, s->err, "read");
  if (r == &b->rest || s->eof) { /* the bytes there were go with the error,
                                  * as asyncio's IncompleteReadError.partial */
    tide__err_push(L, "eof", "the stream %s after %d byte(s), before %s",
                   r == &b->rest ? "was closed" : "ended", (int)r->len,
                   until ? "the separator" : "the count asked");
    take(L, r, r->len);
    lua_setfield(L, -2, "partial");
    return lua_error(L);
  }
  return wait_readable(L, s, 1 | until, exact_k);
}

/* read_exactly(n) -> exactly n bytes, or kind "eof" (field partial: the
 * bytes before the end, consumed) */
static int st_read_exactly(lua_State *L) {
  check_stream(L, 1);
  check_count(L, 2);
  lua_settop(L, 2);
  if (lua_tointeger(L, 2) == 0) { /* as asyncio's readexactly(0) */
    lua_pushliteral(L, "");
    return 1;
  }
  return exact_k(L, LUA_OK, 0);
}

/* read_until(sep) -> the bytes up to and including sep, or kind "eof" */
static int st_read_until(lua_State *L) {
  size_t len;
  check_stream(L, 1);
  luaL_checklstring(L, 2, &len);
  luaL_argcheck(L, len > 0, 2, "non-empty separator expected, got an empty string");
  lua_settop(L, 2);
  return exact_k(L, LUA_OK, 2);
}

/* read_line() -> the next line without its "\n" (and "\r"), or nil at the
 * end; a last line without "\n" is returned as is at a clean end, and is
 * kind "reset" (the bytes kept) when the peer reset the connection. */
static int line_k(lua_State *L, int status, lua_KContext ctx) {
  stream_box *b = lua_touserdata(L, 1);
  stream *s = b->s;
  rbuf *r;
  const char *nl;
  int over, end, err;
  (void)status;
  if (ctx)
    after_wait(L, s, 2, s ? &s->reader : NULL);
  r = read_from(L, b, (int)ctx);
  end = r == &b->rest || s->eof; /* no byte will come after r's */
  err = r == &b->rest ? 0 : s->err;
  nl = find_sep(r, "\n", 1, &over);
  if (over) { /* dropped, as asyncio's readline drops it */
    take_keep(L, r, nl ? (size_t)(nl - (r->buf + r->off)) + 1 : r->len, 0);
    return limit_error(L, r, "a line is");
  }
  if (nl || (end && !err && r->len > 0)) { /* a reset raises, the bytes stay */
    size_t n = nl ? (size_t)(nl - (r->buf + r->off)) + 1 : r->len;
    size_t keep = n;
    if (nl) {
      keep--;
      if (keep > 0 && r->buf[r->off + keep - 1] == '\r')
        keep--;
    }
    take_keep(L, r, n, keep);
    return 1;
  }
  if (err)
    return raise_uv(L, err, "read");
  if (end) {
    lua_pushnil(L); /* the end */
    return 1;
  }
  return wait_readable(L, s, 1, line_k);
}

static int st_read_line(lua_State *L) {
  check_stream(L, 1);
  lua_settop(L, 1);
  return line_k(L, LUA_OK, 0);
}

/* ---- writing --------------------------------------------------------- */

typedef struct wreq {
  uv_write_t req;
  stream *s;
  char data[1];
} wreq;

static void on_uv_write(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  stream *s = w->s;
  free(w);
  s->writes--;
  if (status < 0 && status != UV_ECANCELED && !s->err)
    s->err = status;
  if (s->flushing) { /* closed: the handle goes after the last write */
    if (s->writes == 0 || s->err)
      stream_abort(s);
  } else if (!s->closed && !tide__wl_empty(&s->writers) &&
             uv_stream_get_write_queue_size(&s->h.stream) < HIGH_WATER) {
    tide__wl_wake_all(s->rt->L, &s->writers);
  }
}

/* Back from a park in wl (NULL: the stream is gone): the I/O it counted
 * (a virtual clock waits for that) is done; a cancel takes the task out of
 * wl and is raised. ok: the index of the park's first value. */
static void unparked(lua_State *L, tide_waitlist *wl, int ok, int counted) {
  tide_task *t = tide__rt(L)->current;
  if (counted)
    t->s->io_pending--;
  if (!lua_toboolean(L, ok)) {
    if (wl)
      tide__wl_remove(wl, t);
    lua_pushvalue(L, ok + 1);
    lua_error(L);
  }
}

static int write_k(lua_State *L, int status, lua_KContext ctx) {
  stream_box *b = lua_touserdata(L, 1);
  stream *s = b->s;
  (void)status;
  (void)ctx;
  unparked(L, s ? &s->writers : NULL, 3, 1); /* cancelled: the bytes stay queued */
  if (s == NULL || s->closed)
    return 0; /* closed while it waited: the bytes are still sent */
  if (s->err)
    return raise_uv(L, s->err, "write");
  return 0;
}

/* Suspends the task (returning via write_k) while libuv holds the
 * high-water mark or more; returns 0 at once below it. Stack: [stream,
 * data or nil]. */
static int wait_drained(lua_State *L, stream *s) {
  if (uv_stream_get_write_queue_size(&s->h.stream) >= HIGH_WATER) {
    tide_task *t = tide__current(L);
    tide__wl_push(L, &s->writers, t);
    t->s->io_pending++; /* a virtual clock waits for the drain */
    return tide__park(L, t, 0, write_k);
  }
  return 0;
}

/* write(data, ...): the strings (or numbers), in order, as one write,
 * queued at once; suspends while the kernel and libuv hold more than the
 * high-water mark (backpressure). */
static int st_write(lua_State *L) {
  stream *s = check_stream(L, 1);
  int i, n = lua_gettop(L);
  size_t len = 0, off = 0, l;
  wreq *w;
  uv_buf_t buf;
  int rc;
  luaL_checkstring(L, 2);
  for (i = 2; i <= n; i++) {
    luaL_checklstring(L, i, &l);
    len += l;
  }
  if (s->err)
    return raise_uv(L, s->err, "write");
  if (s->shut)
    return tide__raise_kind_at_user(L, "invalid_state",
                                    "write after write_eof()");
  if (!uv_is_writable(&s->h.stream)) /* a child's stdout or stderr */
    return tide__raise_kind_at_user(L, "invalid_state", "this pipe is read-only "
                                    "(a child's output: read it)");
  if (len == 0)
    return 0;
  w = malloc(sizeof(*w) + len);
  if (w == NULL)
    return luaL_error(L, "not enough memory");
  for (i = 2; i <= n; i++) {
    const char *p = lua_tolstring(L, i, &l);
    memcpy(w->data + off, p, l);
    off += l;
  }
  lua_settop(L, 2); /* write_k's stack: [stream, data, resume values] */
  w->s = s;
  buf = uv_buf_init(w->data, (unsigned)len);
  rc = uv_write(&w->req, &s->h.stream, &buf, 1, on_uv_write);
  if (rc < 0) {
    free(w);
    return raise_uv(L, rc, "write");
  }
  s->writes++;
  return wait_drained(L, s);
}

/* drain() -> waits while more than the high-water mark waits to be sent
 * (asyncio's drain); returns at once below it. */
static int st_drain(lua_State *L) {
  stream *s = check_stream(L, 1);
  lua_settop(L, 1);
  lua_pushnil(L); /* write_k's stack: [stream, data, resume values] */
  if (s->err)
    return raise_uv(L, s->err, "write");
  return wait_drained(L, s);
}

/* queued() -> bytes written and not yet taken by the peer: libuv's queue
 * plus, for TCP, the kernel's send queue (SIOCOUTQ: unsent and unacked).
 * It shrinks as the peer reads, even while the kernel, whose buffer may
 * be megabytes, does not yet take more from libuv. */
static int st_queued(lua_State *L) {
  stream *s = check_stream(L, 1);
  lua_Integer n = (lua_Integer)uv_stream_get_write_queue_size(&s->h.stream);
  uv_os_fd_t fd;
  int outq = 0;
  if (s->h.handle.type == UV_TCP && uv_fileno(&s->h.handle, &fd) == 0 &&
      ioctl(fd, SIOCOUTQ, &outq) == 0 && outq > 0)
    n += outq;
  lua_pushinteger(L, n);
  return 1;
}

typedef struct shut_req {
  uv_shutdown_t req;
  tide_task *t; /* NULL once the task stopped waiting */
  int status;
  int fired;    /* the callback ran */
} shut_req;

/* Whoever of the callback and the task comes last frees the request: the
 * callback sets fired; a task that stopped waiting sets t to NULL. (A
 * cancel's "woken" cannot tell: the callback may run after the cancel,
 * in the same turn, when its wake comes too late to count.) */
static void on_uv_shutdown(uv_shutdown_t *req, int status) {
  shut_req *r = (shut_req *)req;
  r->fired = 1;
  r->status = status;
  if (r->t) {
    lua_pushboolean(r->t->s->L, 1);
    tide__wake(r->t->s->L, r->t, 1);
  } else {
    free(r);
  }
}

static int write_eof_k(lua_State *L, int status, lua_KContext ctx) {
  shut_req *r = (shut_req *)ctx;
  int rc = r->status;
  (void)status;
  if (!lua_toboolean(L, 2)) {
    if (r->fired)
      free(r);
    else
      r->t = NULL; /* the callback, still to come, frees it */
    lua_pushvalue(L, 3);
    return lua_error(L);
  }
  free(r);
  if (rc < 0 && rc != UV_ENOTCONN)
    return raise_uv(L, rc, "write_eof");
  return 0;
}

/* write_eof(): waits for what was written, then shuts the sending side
 * (the peer reads the end); reading goes on (asyncio's write_eof). */
static int st_write_eof(lua_State *L) {
  stream *s = check_stream(L, 1);
  tide_task *t = tide__current(L);
  shut_req *r;
  int rc;
  lua_settop(L, 1);
  if (s->shut)
    return 0; /* once is enough, as asyncio's */
  s->shut = 1;
  r = calloc(1, sizeof(*r));
  if (r == NULL)
    return luaL_error(L, "not enough memory");
  r->t = t;
  rc = uv_shutdown(&r->req, &s->h.stream, on_uv_shutdown);
  if (rc < 0) {
    free(r);
    return raise_uv(L, rc, "write_eof");
  }
  return tide__park(L, t, (lua_KContext)r, write_eof_k);
}

static int st_close(lua_State *L) {
  stream_box *b = luaL_checkudata(L, 1, STREAM_MT);
  stream_close(b->s);
  return 0;
}

/* abort(): closes at once, dropping what is still queued (asyncio's
 * transport.abort()); for a peer that will not read. */
static int st_abort(lua_State *L) {
  stream_box *b = luaL_checkudata(L, 1, STREAM_MT);
  stream *s = b->s;
  if (s) {
    stream_close(s);
    stream_abort(s);
  }
  return 0;
}

static int wait_closed_k(lua_State *L, int status, lua_KContext flushing) {
  stream_box *b = lua_touserdata(L, 1);
  (void)status;
  unparked(L, b->s ? &b->s->closers : NULL, 2, (int)flushing);
  return 0;
}

/* wait_closed(): waits until the stream is closed for good: after close(),
 * when what write() took has gone to the kernel (or was dropped: abort(), a
 * write error, the run's end); before close(), until someone closes it
 * (asyncio's StreamWriter.wait_closed()). */
static int st_wait_closed(lua_State *L) {
  stream_box *b = luaL_checkudata(L, 1, STREAM_MT);
  stream *s = b->s;
  tide_task *t;
  lua_settop(L, 1);
  if (s == NULL)
    return 0;
  t = tide__current(L);
  tide__wl_push(L, &s->closers, t);
  if (s->closed) /* a flush: I/O a virtual clock waits for */
    t->s->io_pending++;
  return tide__park(L, t, s->closed, wait_closed_k);
}

/* __close: closes the stream and lets go of its struct. A reader waiting
 * at the close still reads the rest from the box. */
static int st_release(lua_State *L) {
  stream_box *b = luaL_checkudata(L, 1, STREAM_MT);
  if (b->s) {
    stream_close(b->s);
    b->s->box = NULL; /* the struct may outlive the box (a flush) */
    b->s = NULL;
  }
  return 0;
}

static int st_gc(lua_State *L) {
  stream_box *b = luaL_checkudata(L, 1, STREAM_MT);
  st_release(L);
  free(b->rest.buf);
  b->rest.buf = NULL;
  return 0;
}

static int st_tostring(lua_State *L) {
  stream_box *b = luaL_checkudata(L, 1, STREAM_MT);
  lua_pushfstring(L, "tide.Stream (%s)", b->s == NULL || b->s->closed
                                            ? "closed"
                                            : b->s->eof ? "at end" : "open");
  return 1;
}

/* [-0, +1, m] A new stream box over a fresh tcp handle on loop, or a pipe
 * handle if pipe is set (its box has a user value for its owner: see
 * tide__stream_new_pipe). */
static stream *new_stream(lua_State *L, tide_runtime *rt, uv_loop_t *loop,
                          int pipe) {
  stream_box *b = lua_newuserdatauv(L, sizeof(*b), pipe ? 1 : 0);
  stream *s = calloc(1, sizeof(*s));
  memset(b, 0, sizeof(*b));
  luaL_setmetatable(L, STREAM_MT);
  if (s == NULL)
    luaL_error(L, "not enough memory");
  if (pipe)
    uv_pipe_init(loop, &s->h.pipe, 0);
  else
    uv_tcp_init(loop, &s->h.tcp);
  s->h.handle.data = s;
  s->kind = NET_STREAM;
  s->in.limit = DEFAULT_LIMIT;
  s->rt = rt;
  s->box = b;
  b->s = s;
  s->live_next = rt->net_live;
  if (s->live_next)
    s->live_next->live_prev = s;
  rt->net_live = s;
  return s;
}

/* The runtime closes (its Lua state goes next) while streams still have
 * handles on an application's loop, whose close callbacks run at its next
 * turn: they are closed and cut from the runtime, so that those callbacks
 * touch neither. Their waiting tasks are gone already. */
void tide__net_detach(tide_runtime *rt) {
  stream *s;
  while ((s = rt->net_live) != NULL) {
    unlink_live(s);
    s->rt = NULL;
    if (s->box) {
      s->box->s = NULL;
      s->box = NULL;
    }
    s->reader = NULL;
    tide__wl_free(&s->writers);
    tide__wl_free(&s->closers);
    s->closed = 1;
    if (!uv_is_closing(&s->h.handle))
      uv_close(&s->h.handle, on_uv_stream_closed);
  }
}

static void on_run_end(tide_closer *c) {
  stream *s = (stream *)((char *)c - offsetof(stream, closer));
  stream_close(s);
  stream_abort(s); /* the run is over: pending writes go too */
}

/* [-0, +1, m] Pushes a new tide.Stream over an unopened pipe on sched's
 * loop (for uv_spawn to connect) and returns the pipe. The stream closes,
 * at the latest, when that run ends. */
uv_stream_t *tide__stream_new_pipe(lua_State *L, tide_sched *sched,
                                   size_t limit) {
  stream *s = new_stream(L, tide__rt(L), sched->loop, 1);
  s->in.limit = limit;
  s->closer.close = on_run_end;
  tide__closer_add(sched, &s->closer);
  return &s->h.stream;
}

/* Closes the tide.Stream at idx, if it is an open one. */
void tide__stream_close(lua_State *L, int idx) {
  stream_box *b = luaL_testudata(L, idx, STREAM_MT);
  if (b)
    stream_close(b->s);
}

/* ---- connect --------------------------------------------------------- */

/* One net.connect: resolving, then connecting to each address in turn
 * until one answers. The task waits with its deadline in the sched's timer
 * heap (as a sleep does); a callback that finds it gone (cancelled, timed
 * out) frees the request. */
typedef struct conn_req {
  union {
    uv_getaddrinfo_t gai;
    uv_connect_t connect;
  } u;
  tide_task *t;   /* NULL once the task stopped waiting */
  tide_sched *sched;
  uint64_t deadline; /* tide__now() time; 0: none */
  int status, fired; /* the last callback's result; whether it came */
  int used;          /* the stream tried an address already */
  size_t limit;      /* the stream's */
  struct addrinfo *ai, *next; /* every address; the next to try */
} conn_req;

static void conn_free(conn_req *c) {
  if (c->ai)
    uv_freeaddrinfo(c->ai);
  free(c);
}

/* Both callbacks: record the result and wake the task, or free c if the
 * task stopped waiting. io_pending counts c while the task waits for it (a
 * virtual clock does not jump over a connect). */
static void conn_fired(conn_req *c, int status) {
  if (c->t == NULL) {
    conn_free(c);
    return;
  }
  c->sched->io_pending--;
  c->status = status;
  c->fired = 1;
  lua_pushboolean(c->t->s->L, 1);
  tide__wake(c->t->s->L, c->t, 1);
}

static void on_uv_connect(uv_connect_t *req, int status) {
  conn_fired((conn_req *)req, status);
}

static void on_uv_resolved(uv_getaddrinfo_t *req, int status,
                           struct addrinfo *ai) {
  conn_req *c = (conn_req *)req;
  c->ai = c->next = ai;
  conn_fired(c, status);
}

static int connect_k(lua_State *L, int status, lua_KContext ctx);

/* Parks the task until c's callback or its deadline. */
static int conn_wait(lua_State *L, conn_req *c, lua_KContext ctx) {
  c->sched->io_pending++;
  c->fired = 0;
  if (c->deadline)
    tide__heap_push(c->sched, &c->t->tn, c->deadline);
  return tide__park(L, c->t, ctx, connect_k);
}

/* Connects the stream at 5 to the next address that takes the attempt;
 * a stream that tried one already is replaced by a fresh one. Raises the
 * last error when none is left. Stack: [host, port, timeout, c, stream]. */
static int conn_next(lua_State *L, conn_req *c) {
  while (c->next) {
    struct addrinfo *a = c->next;
    stream *s = ((stream_box *)lua_touserdata(L, 5))->s;
    int rc;
    c->next = a->ai_next;
    if (c->used) {
      stream_close(s);
      s = new_stream(L, tide__rt(L), c->sched->loop, 0);
      s->in.limit = c->limit;
      lua_replace(L, 5);
    }
    c->used = 1;
    uv_tcp_nodelay(&s->h.tcp, 1); /* see on_uv_connection */
    rc = uv_tcp_connect(&c->u.connect, &s->h.tcp, a->ai_addr, on_uv_connect);
    if (rc == 0)
      return conn_wait(L, c, 1);
    c->status = rc;
  }
  {
    int rc = c->status < 0 ? c->status : UV_EADDRNOTAVAIL;
    conn_free(c);
    stream_close(((stream_box *)lua_touserdata(L, 5))->s);
    return raise_uv(L, rc, lua_pushfstring(L, "connecting to %s:%s",
                                           lua_tostring(L, 1), lua_tostring(L, 2)));
  }
}

/* Stack: [host, port, timeout (s), c (light userdata), stream, resume
 * values]; ctx is 0 while resolving, 1 while connecting. */
static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  conn_req *c = lua_touserdata(L, 4);
  int cancelled = !lua_toboolean(L, 6);
  (void)status;
  if (cancelled || !c->fired) { /* cancelled, or the deadline came first */
    stream *s = ((stream_box *)lua_touserdata(L, 5))->s;
    tide__heap_remove(c->sched, &c->t->tn);
    if (c->fired) {
      conn_free(c);
    } else { /* the callback, still to come, frees c */
      c->sched->io_pending--;
      c->t = NULL;
      if (ctx == 0)
        uv_cancel((uv_req_t *)&c->u.gai);
    }
    stream_close(s); /* cancels a connect in progress */
    if (cancelled) {
      lua_pushvalue(L, 7);
      return lua_error(L);
    }
    return tide__err_raise(L, "timeout", "connecting to %s:%s: timed out "
                           "after %f s", lua_tostring(L, 1),
                           lua_tostring(L, 2), lua_tonumber(L, 3));
  }
  lua_settop(L, 5);
  if (c->status == 0 && ctx == 1) { /* connected */
    conn_free(c);
    keep_peer(((stream_box *)lua_touserdata(L, 5))->s);
    return 1;
  }
  if (c->status < 0 && ctx == 0) {
    int rc = c->status;
    conn_free(c);
    stream_close(((stream_box *)lua_touserdata(L, 5))->s);
    return raise_uv(L, rc, lua_pushfstring(L, "resolving %s", lua_tostring(L, 1)));
  }
  return conn_next(L, c);
}

/* opts.limit of the options table at arg (if it is one): the most bytes
 * read_line and read_until buffer looking for their separator. A positive
 * number (math.huge: none); nil: 64 KiB. */
size_t tide__stream_limit(lua_State *L, int arg) {
  size_t limit = DEFAULT_LIMIT;
  if (lua_istable(L, arg) && lua_getfield(L, arg, "limit") != LUA_TNIL) {
    lua_Number n = lua_tonumber(L, -1);
    if (!lua_isnumber(L, -1) || !(n >= 1))
      luaL_argerror(L, arg, lua_pushfstring(L, "opts.limit: a positive number "
                                            "of bytes expected, got %s",
                                            lua_type(L, -1) == LUA_TNUMBER
                                              ? lua_tostring(L, -1)
                                              : luaL_typename(L, -1)));
    limit = n >= (lua_Number)(SIZE_MAX / 2) ? SIZE_MAX : (size_t)n;
  }
  if (lua_istable(L, arg))
    lua_pop(L, 1);
  return limit;
}

/* The connect timeout from opts (index 3), in ns; 0: none. Refuses
 * anything but a table of known options. */
static uint64_t connect_opts(lua_State *L) {
  static const char *const known[] = {"timeout", "limit", NULL};
  lua_Number sec = 30; /* as the HTTP client's connect_timeout */
  tide__check_opts(L, 3, known, -1);
  if (lua_isnoneornil(L, 3))
    return (uint64_t)(sec * 1e9);
  lua_getfield(L, 3, "timeout");
  if (lua_toboolean(L, -1) == 0 && !lua_isnil(L, -1))
    sec = 0; /* false: none */
  else if (!lua_isnil(L, -1) && (!lua_isnumber(L, -1) ||
                                 !((sec = lua_tonumber(L, -1)) > 0)))
    luaL_argerror(L, 3, lua_pushfstring(L, "opts.timeout: a positive number or "
                                        "false expected, got %s",
                                        lua_type(L, -1) == LUA_TNUMBER
                                          ? lua_tostring(L, -1)
                                          : luaL_typename(L, -1)));
  lua_pop(L, 1);
  if (sec > 1e9)
    sec = 1e9;
  return (uint64_t)(sec * 1e9);
}

/* Checks the port (argument 2): from min (0 for serve: pick one) to 65535. */
static void check_port(lua_State *L, lua_Integer port, int min) {
  if (port < min || port > 65535)
    luaL_argerror(L, 2, lua_pushfstring(L, "port from %d to 65535 expected, "
                                        "got %I", min, port));
}

/* net.connect(host, port [, {timeout = 30, limit = 64 KiB}]) -> stream */
static int l_connect(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  uint64_t timeout = connect_opts(L);
  size_t limit = tide__stream_limit(L, 3);
  tide_task *t = tide__current(L);
  conn_req *c;
  struct addrinfo hints;
  char portstr[16];
  int rc;
  check_port(L, port, 1);
  lua_settop(L, 2);
  lua_pushnumber(L, (lua_Number)timeout / 1e9); /* for the message */
  c = calloc(1, sizeof(*c));
  if (c == NULL)
    return luaL_error(L, "not enough memory");
  lua_pushlightuserdata(L, c);
  c->t = t;
  c->sched = t->s;
  c->limit = limit;
  if (timeout)
    c->deadline = tide__now(t->s) + timeout;
  new_stream(L, rt, t->s->loop, 0)->in.limit = limit;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(portstr, sizeof portstr, "%d", (int)port);
  rc = uv_getaddrinfo(t->s->loop, &c->u.gai, on_uv_resolved, host, portstr,
                      &hints);
  if (rc < 0) {
    free(c);
    stream_close(((stream_box *)lua_touserdata(L, 5))->s);
    return raise_uv(L, rc, "resolve");
  }
  return conn_wait(L, c, 0);
}

/* ---- servers --------------------------------------------------------- */

static void on_uv_server_closed(uv_handle_t *h) {
  free(h->data);
}

static int conn_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L) - 2; /* the handler's results; the stream closes */
}

/* A connection's task: handler(stream). The stream is a to-be-closed slot,
 * so it closes however the handler ends (returns, raises, is cancelled)
 * and the peer is not left waiting for the collector. Stack: [handler,
 * stream]. */
static int conn_task(lua_State *L) {
  lua_toclose(L, 2);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_callk(L, 1, LUA_MULTRET, 0, conn_k);
  return conn_k(L, LUA_OK, 0);
}

static void on_uv_connection(uv_stream_t *h, int status) {
  server *sv = h->data;
  lua_State *L = sv->sched->L;
  stream *s;
  if (status < 0 || sv->closed)
    return;
  lua_pushcfunction(L, conn_task);
  lua_rawgeti(L, LUA_REGISTRYINDEX, sv->handler_ref);
  s = new_stream(L, sv->rt, h->loop, 0);
  s->in.limit = sv->limit;
  if (uv_accept(h, &s->h.stream) < 0) {
    lua_pop(L, 3);
    return;
  }
  /* TCP_NODELAY, as asyncio sets on every TCP connection: writes go out
   * at once (Nagle held a second small write back until the peer's delayed
   * ACK, 40 ms a reply of two writes) */
  uv_tcp_nodelay(&s->h.tcp, 1);
  keep_peer(s);
  tide__spawn(L, sv->sched, lua_gettop(L) - 2, 2); /* handler(stream) */
  lua_pop(L, 4);
}

static server *check_server(lua_State *L, int idx) {
  server_box *b = luaL_checkudata(L, idx, SERVER_MT);
  if (b->sv == NULL || b->sv->closed)
    closed_error(L, "server");
  return b->sv;
}

static void server_close(lua_State *L, server *sv) {
  if (sv && !sv->closed) {
    sv->closed = 1;
    if (sv->box)
      sv->box->sv = NULL;
    sv->box = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, sv->handler_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, sv->self_ref);
    sv->self_ref = LUA_NOREF;
    uv_close((uv_handle_t *)&sv->tcp, on_uv_server_closed);
  }
}

/* A run's end closes the servers it started (uv_walk on its loop). */
void tide__net_close_servers(uv_handle_t *h, void *sched) {
  if (h->type == UV_TCP && h->data && !uv_is_closing(h) &&
      ((server *)h->data)->kind == NET_SERVER &&
      ((server *)h->data)->sched == sched)
    server_close(((server *)h->data)->rt->L, h->data);
}

/* Loop teardown (loop.c) closes tide's TCP handles through here. */
void tide__net_close(uv_handle_t *h) {
  int kind = *(int *)h->data; /* both structs start with it */
  if (kind == NET_STREAM) {
    stream_close(h->data);
    stream_abort(h->data); /* the loop is going: pending writes go too */
  }
  else if (kind == NET_SERVER)
    server_close(((server *)h->data)->rt->L, h->data);
}

/* Listens on addr: pushes the new server. Stack: [host, port, handler,
 * opts]; s is the run whose loop it joins. */
static int listen_on(lua_State *L, tide_sched *s, const struct sockaddr *addr) {
  server_box *b;
  server *sv;
  int rc, backlog = 128;
  size_t limit = tide__stream_limit(L, 4);
  if (lua_istable(L, 4)) {
    lua_Integer n = 128;
    int isint = 1;
    if (lua_getfield(L, 4, "backlog") != LUA_TNIL)
      n = lua_tointegerx(L, -1, &isint);
    if (!isint || n < 1 || n > 65535)
      luaL_argerror(L, 4, lua_pushfstring(L, "opts.backlog: an integer from 1 "
                                          "to 65535 expected, got %s",
                                          lua_type(L, -1) == LUA_TNUMBER
                                            ? lua_tostring(L, -1)
                                            : luaL_typename(L, -1)));
    backlog = (int)n;
    lua_pop(L, 1);
  }
  b = lua_newuserdatauv(L, sizeof(*b), 0);
  b->sv = NULL;
  luaL_setmetatable(L, SERVER_MT);
  sv = calloc(1, sizeof(*sv));
  if (sv == NULL)
    return luaL_error(L, "not enough memory");
  sv->self_ref = LUA_NOREF; /* server_close may unref it */
  uv_tcp_init(s->loop, &sv->tcp);
  sv->tcp.data = sv;
  sv->kind = NET_SERVER;
  sv->box = b;
  sv->rt = tide__rt(L);
  sv->sched = s;
  sv->limit = limit;
  lua_pushvalue(L, 3);
  sv->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  sv->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  b->sv = sv;
  rc = uv_tcp_bind(&sv->tcp, addr, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&sv->tcp, backlog, on_uv_connection);
  if (rc < 0) {
    server_close(L, sv);
    return raise_uv(L, rc, lua_pushfstring(L, "listening on %s:%d",
                                           lua_tostring(L, 1),
                                           (int)lua_tointeger(L, 2)));
  }
  return 1;
}

/* Resolving a host name for net.serve; freed by whoever sees it last (the
 * task, or the callback when the task stopped waiting). */
typedef struct serve_req {
  uv_getaddrinfo_t gai;
  tide_task *t; /* NULL once the task stopped waiting */
  int status, fired;
  struct addrinfo *ai;
} serve_req;

static void on_uv_serve_resolved(uv_getaddrinfo_t *req, int status,
                                 struct addrinfo *ai) {
  serve_req *r = (serve_req *)req;
  if (r->t == NULL) {
    uv_freeaddrinfo(ai);
    free(r);
    return;
  }
  r->t->s->io_pending--;
  r->status = status;
  r->ai = ai;
  r->fired = 1;
  lua_pushboolean(r->t->s->L, 1);
  tide__wake(r->t->s->L, r->t, 1);
}

/* Stack: [host, port, handler, opts, resume values]. */
static int serve_k(lua_State *L, int status, lua_KContext ctx) {
  serve_req *r = (serve_req *)ctx;
  struct sockaddr_storage addr;
  int rc = r->status;
  (void)status;
  if (!lua_toboolean(L, 5)) { /* cancelled */
    if (r->fired) {
      uv_freeaddrinfo(r->ai);
      free(r);
    } else {
      r->t->s->io_pending--;
      r->t = NULL; /* the callback frees r */
      uv_cancel((uv_req_t *)&r->gai);
    }
    lua_pushvalue(L, 6);
    return lua_error(L);
  }
  lua_settop(L, 4);
  if (rc == 0)
    memcpy(&addr, r->ai->ai_addr, r->ai->ai_addrlen);
  uv_freeaddrinfo(r->ai);
  free(r);
  if (rc < 0)
    return raise_uv(L, rc, lua_pushfstring(L, "resolving %s", lua_tostring(L, 1)));
  return listen_on(L, tide__current(L)->s, (struct sockaddr *)&addr);
}

/* net.serve(host, port, handler [, {backlog =, limit =}]) -> server; port 0 picks
 * a free one (server:port()). A host name (not a numeric address) is
 * resolved first, which suspends the task; the server listens on its
 * first address. Each connection runs handler(stream) in a task of its
 * own; the stream closes when the handler ends. */
static int l_serve(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  struct sockaddr_storage addr;
  tide_sched *s = rt->current ? rt->current->s : rt->sched;
  check_port(L, port, 0);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  {
    static const char *const known[] = {"backlog", "limit", NULL};
    tide__check_opts(L, 4, known, -1);
    tide__stream_limit(L, 4); /* checked now, not after resolving */
  }
  lua_settop(L, 4);
  if (s == NULL)
    return tide__raise_no_loop(L);
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&addr) == 0 ||
      uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&addr) == 0)
    return listen_on(L, s, (struct sockaddr *)&addr);
  {
    tide_task *t = tide__current(L);
    struct addrinfo hints;
    char portstr[16];
    int rc;
    serve_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
      return luaL_error(L, "not enough memory");
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(portstr, sizeof portstr, "%d", (int)port);
    r->t = t;
    rc = uv_getaddrinfo(s->loop, &r->gai, on_uv_serve_resolved, host, portstr,
                        &hints);
    if (rc < 0) {
      free(r);
      return raise_uv(L, rc, lua_pushfstring(L, "resolving %s", host));
    }
    t->s->io_pending++;
    return tide__park(L, t, (lua_KContext)r, serve_k);
  }
}

/* Pushes the address of sa as ip, port. */
static int push_addr(lua_State *L, const struct sockaddr_storage *sa) {
  char ip[64] = "";
  int port;
  if (sa->ss_family == AF_INET6) {
    uv_ip6_name((const struct sockaddr_in6 *)sa, ip, sizeof(ip));
    port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
  } else {
    uv_ip4_name((const struct sockaddr_in *)sa, ip, sizeof(ip));
    port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
  }
  lua_pushstring(L, ip);
  lua_pushinteger(L, port);
  return 2;
}

static int sv_port(lua_State *L) {
  server *sv = check_server(L, 1);
  struct sockaddr_storage addr;
  int len = sizeof(addr);
  uv_tcp_getsockname(&sv->tcp, (struct sockaddr *)&addr, &len);
  push_addr(L, &addr);
  return 1; /* the port */
}

static int sv_close(lua_State *L) {
  server_box *b = luaL_checkudata(L, 1, SERVER_MT);
  server_close(L, b->sv);
  return 0;
}

static int sv_gc(lua_State *L) {
  server_box *b = luaL_checkudata(L, 1, SERVER_MT);
  server_close(L, b->sv);
  return 0;
}

/* stream:peer() -> ip, port of the other end (nil for a pipe) */
static int st_peer(lua_State *L) {
  stream_box *b = luaL_checkudata(L, 1, STREAM_MT);
  if (b->s && !b->s->closed)
    keep_peer(b->s);
  return b->has_peer ? push_addr(L, &b->peer) : 0; /* after close() too, as asyncio's */
}

static const luaL_Reg stream_methods[] = {
  {"peer", st_peer},
  {"abort", st_abort}, {"drain", st_drain}, {"queued", st_queued}, {"read", st_read}, {"read_all", st_read_all}, {"read_line", st_read_line},
  {"read_exactly", st_read_exactly}, {"read_until", st_read_until},
  {"write", st_write}, {"write_eof", st_write_eof}, {"close", st_close},
  {"wait_closed", st_wait_closed},
  {NULL, NULL}};

static const luaL_Reg server_methods[] = {
  {"port", sv_port}, {"close", sv_close}, {NULL, NULL}};

static const luaL_Reg net_funcs[] = {
  {"connect", l_connect}, {"serve", l_serve}, {NULL, NULL}};

int luaopen_tide_net(lua_State *L) {
  tide_open(L);
  tide__new_type(L, STREAM_MT, stream_methods, st_gc, st_release,
                 st_tostring);
  tide__new_type(L, SERVER_MT, server_methods, sv_gc, NULL, NULL);
  luaL_newlib(L, net_funcs);
  return 1;
}
