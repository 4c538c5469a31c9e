/*
 * thread.c: "tide.thread", tide.to_thread(fn, ...): runs fn(...) on libuv's
 * thread pool in a worker Lua state while the calling task is suspended.
 *
 * Owns the worker states and the copying of values between states; it does
 * not own the thread pool (libuv's, process-wide, shared with fs and DNS).
 *
 * - The function travels as bytecode (lua_dump with debug info, so worker
 *   tracebacks name the original file and lines). Its upvalues may only be
 *   _ENV (bound to the worker's globals) or the function itself (a local
 *   recursive function); anything else is refused at the call.
 * - Values are serialised into a C buffer on the loop thread (arguments
 *   before queueing, results in the after-work callback decoded into the
 *   main state) and rebuilt in the worker state on the worker thread: the
 *   main lua_State is never touched off the loop thread. nil, booleans,
 *   integers, floats, strings and tables (nested; shared subtables and
 *   cycles preserved; metatables dropped) travel; functions, userdata and
 *   threads are refused with the argument position and the path inside the
 *   table (of a long one, the first and last keys: "a.b.c ... x.y.z").
 * - Worker states (standard libraries, the caller's package.path/cpath) are
 *   made lazily on the worker thread and kept in a mutex-protected pool of
 *   at most the thread-pool size (UV_THREADPOOL_SIZE, libuv's default 4, the
 *   tide command's cores + 4, max 1024).
 *   The pool hangs off the runtime's registry in a userdata; its __gc closes
 *   the idle states and marks the pool closed. The pool struct is counted:
 *   one reference for that userdata and one per job in flight, so a job that
 *   outlives lua_close (an application's loop run after tide_runtime_close)
 *   still finds its pool; it then touches no Lua state of the runtime, closes
 *   its worker state and frees itself.
 * - The thread pool is shared with fs requests and DNS, so jobs never take
 *   all of it: per loop at most max(1, pool size - 1) jobs are on the pool
 *   at once; the others wait in a FIFO lane (one per loop, in the pool
 *   struct, loop thread only) and are queued as running ones end. Per loop,
 *   not per process: a job completes on its own loop only, and a nested
 *   tide.run must not wait on an outer loop that cannot turn meanwhile.
 * - Cancellation resumes the caller at once (a "cancelled" error); a job
 *   waiting in its lane is dropped, never run; one on the pool is
 *   uv_cancel'led if not started, otherwise it runs to its end in the
 *   background and its results are dropped (threads cannot be killed). A
 *   job still running keeps its loop alive: the end of a tide.run (and of
 *   the `tide` command) waits for it, as asyncio.run waits for its executor.
 *   While a job runs it counts as real I/O for a virtual clock.
 * - A failure inside the worker comes back as a tide error of kind
 *   "thread" (always, whatever was raised) with message (a string error as
 *   is, else __tostring, else a string field `message`), traceback (the
 *   worker's) and value (a copy of the raised value, when it can travel).
 *   Results that cannot travel fail the same way, without traceback.
 * - stats() reports the pool (states alive, idle, cap), for tests.
 */
#define _GNU_SOURCE /* gettid */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <lualib.h>

#include "internal.h"

#define MAX_DEPTH 100        /* table nesting copied, both ways (said in why) */
#define PATH_KEEP 3          /* a refusal's path: first and last keys shown */
#define BOX_MT    "tide.thread.job"
#define POOL_MT   "tide.thread.pool"
#define TB_KEY    "tide.thread.traceback" /* worker registry: last traceback */

/* ---- byte buffers and the value encoding ------------------------------ */

typedef tide_buf buf;


/* Tags of the encoding: one byte, then the payload. */
enum { V_NIL = 'n', V_FALSE = 'f', V_TRUE = 't', V_INT = 'i', V_FLT = 'd',
       V_STR = 's', V_TABLE = 'T', V_END = 'e', V_REF = 'r' };

/* The encoder raises on memory errors: the buffers belong to a job, which
 * frees them whatever happens. Refusals are returned, to be explained. */
typedef struct enc {
  lua_State *L;
  buf *b;
  int seen;          /* stack index: table -> its id */
  lua_Integer ntab;  /* tables numbered so far */
  const char *why;   /* what could not be sent (a static string) */
  int keyed;         /* it is a key (of the table its path ends at) */
  int pathlen;       /* keys in the path to it */
} enc;

static int put(enc *e, char tag, const void *payload, size_t len) {
  if (tide__buf_add(e->b, &tag, 1) < 0 || (len && tide__buf_add(e->b, payload, len) < 0))
    luaL_error(e->L, "not enough memory");
  return 0;
}

/* [-0, +1, m] Pushes how a key reads in a path: .name or [key]. */
static void push_key(lua_State *L, int k) {
  const char *s;
  size_t i, n;
  switch (lua_type(L, k)) {
    case LUA_TSTRING:
      s = lua_tolstring(L, k, &n);
      for (i = 0; i < n && (s[i] == '_' || (s[i] >= 'a' && s[i] <= 'z') ||
                            (s[i] >= 'A' && s[i] <= 'Z') ||
                            (i > 0 && s[i] >= '0' && s[i] <= '9'));
           i++)
        ;
      if (n > 0 && i == n)
        lua_pushfstring(L, ".%s", s);
      else
        lua_pushfstring(L, "[\"%s\"]", s);
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, k))
        lua_pushfstring(L, "[%I]", (LUAI_UACINT)lua_tointeger(L, k));
      else
        lua_pushfstring(L, "[%f]", (LUAI_UACNUMBER)lua_tonumber(L, k));
      break;
    default:
      lua_pushfstring(L, "[%s]", luaL_typename(L, k));
  }
}

static int enc_value(enc *e, int idx, int depth);

/* [-1, +1, m] Prepends key k (0: "(key)", the path goes on inside the
 * key at that place), at position pos of a path of e->pathlen keys, to the
 * path on top; of a long path only the first and the last PATH_KEEP keys
 * are kept, with " ... " for those between. */
static void prepend_key(enc *e, int k, int pos) {
  lua_State *L = e->L;
  int tail = e->pathlen - PATH_KEEP; /* from here on, kept */
  if (pos >= PATH_KEEP && pos < tail) {
    if (pos == tail - 1) { /* the last one left out */
      const char *rest = lua_tostring(L, -1);
      lua_pushfstring(L, " ... %s", *rest == '.' ? rest + 1 : rest);
      lua_replace(L, -2);
    }
    return;
  }
  if (k)
    push_key(L, k);
  else
    lua_pushliteral(L, "(key)");
  lua_insert(L, -2);
  lua_concat(L, 2);
}

static const char too_deep[] = "table nested more than 100 deep";

/* A refusal met at key index k of a traversal: only the path on top
 * stays, at k (the key and the value go), so that a refusal deep down
 * leaves the stack as high as it found it. */
static int refused(lua_State *L, int k) {
  lua_replace(L, k);
  lua_settop(L, k);
  return -1;
}

/* Encodes the table at idx. On failure the path below it is on top. */
static int enc_table(enc *e, int idx, int depth) {
  lua_State *L = e->L;
  lua_Integer id;
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->seen) == LUA_TNUMBER) {
    id = lua_tointeger(L, -1);
    lua_pop(L, 1);
    return put(e, V_REF, &id, sizeof(id));
  }
  lua_pop(L, 1);
  if (depth >= MAX_DEPTH) {
    e->why = too_deep;
    e->pathlen = depth;
    lua_pushliteral(L, "");
    return -1;
  }
  luaL_checkstack(L, 8, NULL);
  id = ++e->ntab;
  lua_pushvalue(L, idx);
  lua_pushinteger(L, id);
  lua_rawset(L, e->seen);
  put(e, V_TABLE, NULL, 0);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int k = lua_gettop(L) - 1;
    if (enc_value(e, k, depth + 1) < 0) { /* the key, or a value in it */
      if (*lua_tostring(L, -1) == '\0' && !e->keyed && e->why != too_deep) {
        e->keyed = 1; /* the key itself: "a function key" */
        e->pathlen = depth;
      } else {
        prepend_key(e, 0, depth);
      }
      return refused(L, k);
    }
    if (enc_value(e, k + 1, depth + 1) < 0) {
      prepend_key(e, k, depth);
      return refused(L, k);
    }
    lua_pop(L, 1);
  }
  return put(e, V_END, NULL, 0);
}

/* Appends the value at idx. Returns 0, or -1 with e->why naming what
 * cannot be sent and its path ("" or ".a[2]") pushed. */
static int enc_value(enc *e, int idx, int depth) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      return put(e, V_NIL, NULL, 0);
    case LUA_TBOOLEAN:
      return put(e, lua_toboolean(L, idx) ? V_TRUE : V_FALSE, NULL, 0);
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        lua_Integer i = lua_tointeger(L, idx);
        return put(e, V_INT, &i, sizeof(i));
      } else {
        lua_Number d = lua_tonumber(L, idx);
        return put(e, V_FLT, &d, sizeof(d));
      }
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      put(e, V_STR, &len, sizeof(len));
      if (tide__buf_add(e->b, s, len) < 0)
        luaL_error(L, "not enough memory");
      return 0;
    }
    case LUA_TTABLE:
      return enc_table(e, lua_absindex(L, idx), depth);
    default: /* function, userdata, thread */
      e->why = lua_typename(L, lua_type(L, idx));
      e->pathlen = depth;
      lua_pushliteral(L, "");
      return -1;
  }
}

/* [-0, +0, m] Appends the n values from `first` to b: a count, then each.
 * On a refusal calls fail(L, pos, "cannot send a function[ at a.b[2]]"),
 * which raises; pos is the refused value's index in the list plus `pos0`. */
static void enc_list(lua_State *L, buf *b, int first, int n, int pos0,
                     void (*fail)(lua_State *L, int pos, const char *msg)) {
  enc e;
  int i, count = n;
  memset(&e, 0, sizeof(e));
  e.L = L;
  e.b = b;
  luaL_checkstack(L, 8, NULL);
  lua_newtable(L);
  e.seen = lua_gettop(L);
  if (tide__buf_add(b, &count, sizeof(count)) < 0)
    luaL_error(L, "not enough memory");
  for (i = 0; i < n; i++) {
    if (enc_value(&e, first + i, 0) < 0) {
      const char *path = lua_tostring(L, -1);
      if (*path == '.')
        path++;
      fail(L, pos0 + i, lua_pushfstring(L, "cannot send a %s%s%s%s", e.why,
                                        e.keyed ? " key" : "",
                                        *path ? " at " : "", path));
    }
  }
  lua_settop(L, e.seen - 1);
}

typedef struct dec {
  const char *p, *end;
  int refs;          /* stack index: id -> table */
  lua_Integer ntab;
} dec;

static void dec_take(lua_State *L, dec *d, void *dst, size_t len) {
  if ((size_t)(d->end - d->p) < len)
    luaL_error(L, "to_thread: corrupt value encoding");
  memcpy(dst, d->p, len);
  d->p += len;
}

/* [-0, +1, m] Decodes one value. */
static void dec_value(lua_State *L, dec *d, int depth) {
  char tag;
  lua_Integer i;
  lua_Number n;
  size_t len;
  dec_take(L, d, &tag, 1);
  switch (tag) {
    case V_NIL: lua_pushnil(L); break;
    case V_FALSE: lua_pushboolean(L, 0); break;
    case V_TRUE: lua_pushboolean(L, 1); break;
    case V_INT: dec_take(L, d, &i, sizeof(i)); lua_pushinteger(L, i); break;
    case V_FLT: dec_take(L, d, &n, sizeof(n)); lua_pushnumber(L, n); break;
    case V_STR:
      dec_take(L, d, &len, sizeof(len));
      if ((size_t)(d->end - d->p) < len)
        luaL_error(L, "to_thread: corrupt value encoding");
      lua_pushlstring(L, d->p, len);
      d->p += len;
      break;
    case V_REF:
      dec_take(L, d, &i, sizeof(i));
      lua_rawgeti(L, d->refs, i);
      break;
    case V_TABLE:
      if (depth >= MAX_DEPTH)
        luaL_error(L, "to_thread: corrupt value encoding");
      luaL_checkstack(L, 6, NULL);
      lua_newtable(L);
      lua_pushvalue(L, -1);
      lua_rawseti(L, d->refs, ++d->ntab);
      while (d->p < d->end && *d->p != V_END) {
        dec_value(L, d, depth + 1);
        dec_value(L, d, depth + 1);
        lua_rawset(L, -3);
      }
      dec_take(L, d, &tag, 1);
      break;
    default:
      luaL_error(L, "to_thread: corrupt value encoding");
  }
}

/* [-0, +n, m] Decodes a list made by enc_list; returns its length n. */
static int dec_list(lua_State *L, const buf *b) {
  dec d;
  int count, i;
  d.p = b->p;
  d.end = b->p + b->n;
  d.ntab = 0;
  lua_newtable(L);
  d.refs = lua_gettop(L);
  dec_take(L, &d, &count, sizeof(count));
  luaL_checkstack(L, count + 4, "too many values for to_thread");
  for (i = 0; i < count; i++)
    dec_value(L, &d, 0);
  lua_remove(L, d.refs);
  return count;
}

/* ---- the pool of worker states ---------------------------------------- */

typedef struct job job;

/* The jobs of one loop (loop thread only): running on the pool (queued
 * there or in the work callback, until the after-work callback), at most
 * pool->maxrun; the others wait in FIFO order. Freed once empty. */
typedef struct lane {
  struct lane *next;
  uv_loop_t *loop;
  int running;
  job *first, *last; /* waiting, linked through job->next */
} lane;

typedef struct pool {
  uv_mutex_t mu;         /* guards idle, nidle, nstates, closed */
  lua_State **idle;      /* states waiting for a job, at most cap */
  int nidle, nstates, cap;
  int maxrun;            /* jobs of one loop on the thread pool at once */
  int closed;            /* the runtime's state is gone */
  int refs;              /* the registry userdata + jobs (loop thread) */
  lane *lanes;           /* loop thread only */
  lua_State *L;          /* the runtime's main state, while not closed */
  struct { void *p; size_t len; } maps[16]; /* unmapped big blocks kept */
  int nmaps;             /* (guarded by mu) */
  size_t mapped;         /* bytes in maps, at most MAPS_MAX */
} pool;

static void unmap(void *p, size_t len);

static void pool_unref(pool *pl) {
  if (--pl->refs == 0) {
    assert(pl->lanes == NULL); /* every job holds a reference */
    while (pl->nmaps > 0) {
      pl->nmaps--;
      unmap(pl->maps[pl->nmaps].p, pl->maps[pl->nmaps].len);
    }
    uv_mutex_destroy(&pl->mu);
    free(pl->idle);
    free(pl);
  }
}

/* os.exit in a worker would end the process from a pool thread, under
 * the loop's feet (libuv aborts at exit then). */
static int w_no_exit(lua_State *W) {
  return luaL_error(W, "os.exit cannot be called in a to_thread worker "
                       "(return from fn, and exit from the task)");
}

/* A worker is plain Lua: tide's modules (tasks, the loop) are not there. */
static const char no_tide[] =
    "table.insert(package.searchers, 1, function(name)\n"
    "  if name == 'tide' or name:find('^tide%.') then\n"
    "    error(('module %q is not available in a to_thread worker: a worker '\n"
    "      .. 'runs plain Lua (pass values in, return values out)'):format(name), 0)\n"
    "  end\n"
    "end)";

static int open_worker(lua_State *W) {
  luaL_openlibs(W);
  lua_getglobal(W, "os");
  lua_pushcfunction(W, w_no_exit);
  lua_setfield(W, -2, "exit");
  lua_pop(W, 1);
  if (luaL_dostring(W, no_tide) != LUA_OK)
    return lua_error(W);
  return 0;
}

/* Worker thread: an idle state, or a new one (NULL when out of memory). */
/* The worker states' allocator. Blocks of BIG_BLOCK bytes or more (the
 * array of a table with millions of entries) get their own mapping and go
 * back to the system a megabyte at a time: one munmap of 64 MB holds the
 * process's memory-map lock for ~10 ms, and the loop thread, if it takes a
 * page fault meanwhile, waits that long (a ticking task was 10-30 ms late
 * while sieves ran). They are on 2 MB pages (alloc.c's tide__map_big): a
 * sieve's random writes into 64 MB missed the TLB on nearly every one.
 * Smaller blocks are malloc's. */
#define BIG_BLOCK ((size_t)1 << 20)

static size_t page_round(size_t n) {
  size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  return (n + pg - 1) / pg * pg;
}

/* Unmaps a megabyte at a time (each piece holds the lock briefly). */
static void unmap(void *p, size_t len) {
  size_t off;
  for (off = 0; off < len; off += BIG_BLOCK)
    munmap((char *)p + off, len - off < BIG_BLOCK ? len - off : BIG_BLOCK);
}

/* Freed big blocks are kept (up to MAPS_MAX bytes, 16 blocks) for the next
 * block of the same size: a worker running a like job again then touches
 * no new page and unmaps nothing (4 sieves: ~1.8x -> ~2.2x on 2 cores).
 * The kept blocks go when the pool does, i.e. when the runtime closes. */
#define MAPS_MAX ((size_t)128 << 20)

static void big_free(pool *pl, void *p, size_t n) {
  size_t len = page_round(n);
  uv_mutex_lock(&pl->mu);
  if (pl->nmaps < (int)(sizeof(pl->maps) / sizeof(pl->maps[0])) &&
      pl->mapped + len <= MAPS_MAX) {
    pl->maps[pl->nmaps].p = p;
    pl->maps[pl->nmaps].len = len;
    pl->nmaps++;
    pl->mapped += len;
    p = NULL;
  }
  uv_mutex_unlock(&pl->mu);
  if (p)
    unmap(p, len);
}

static void *big_alloc(pool *pl, size_t n) {
  size_t len = page_round(n);
  void *p = NULL;
  int i;
  uv_mutex_lock(&pl->mu);
  for (i = 0; i < pl->nmaps; i++)
    if (pl->maps[i].len == len) {
      p = pl->maps[i].p;
      pl->mapped -= len;
      pl->maps[i] = pl->maps[--pl->nmaps];
      break;
    }
  uv_mutex_unlock(&pl->mu);
  return p ? p : tide__map_big(len);
}

static void *w_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  pool *pl = ud;
  void *np;
  if (ptr == NULL)
    osize = 0; /* then osize tells the type of object, not a size */
  if (nsize == 0) {
    if (osize >= BIG_BLOCK)
      big_free(pl, ptr, osize);
    else
      free(ptr);
    return NULL;
  }
  if (osize < BIG_BLOCK && nsize < BIG_BLOCK)
    return realloc(ptr, nsize);
  np = nsize >= BIG_BLOCK ? big_alloc(pl, nsize) : malloc(nsize);
  if (np == NULL)
    return NULL;
  if (ptr) {
    memcpy(np, ptr, osize < nsize ? osize : nsize);
    if (osize >= BIG_BLOCK)
      big_free(pl, ptr, osize);
    else
      free(ptr);
  }
  return np;
}

static int w_panic(lua_State *W) {
  fprintf(stderr, "tide: worker state panic: %s\n", lua_tostring(W, -1));
  return 0; /* then abort, as lua.c's */
}

static lua_State *pool_get(pool *pl) {
  lua_State *W = NULL;
  uv_mutex_lock(&pl->mu);
  if (pl->nidle > 0)
    W = pl->idle[--pl->nidle];
  uv_mutex_unlock(&pl->mu);
  if (W)
    return W;
  W = lua_newstate(w_alloc, pl);
  if (W == NULL)
    return NULL;
  lua_atpanic(W, w_panic);
  lua_pushcfunction(W, open_worker);
  if (lua_pcall(W, 0, 0, 0) != LUA_OK) {
    lua_close(W);
    return NULL;
  }
  uv_mutex_lock(&pl->mu);
  pl->nstates++;
  uv_mutex_unlock(&pl->mu);
  return W;
}

/* Worker thread: keeps W for the next job, or closes it when the pool is
 * full or closed. */
static void pool_put(pool *pl, lua_State *W) {
  int keep;
  lua_settop(W, 0);
  lua_gc(W, LUA_GCCOLLECT); /* don't keep a job's garbage while idle */
  uv_mutex_lock(&pl->mu);
  keep = !pl->closed && pl->nidle < pl->cap;
  if (keep)
    pl->idle[pl->nidle++] = W;
  else
    pl->nstates--;
  uv_mutex_unlock(&pl->mu);
  if (!keep)
    lua_close(W);
}

/* __gc of the registry userdata: the runtime's state is closing. */
static int pool_gc(lua_State *L) {
  pool **box = luaL_checkudata(L, 1, POOL_MT);
  pool *pl = *box;
  int i, n;
  lua_State **idle;
  if (pl == NULL)
    return 0;
  *box = NULL;
  uv_mutex_lock(&pl->mu); /* running jobs close their states themselves */
  pl->closed = 1;
  pl->L = NULL;
  idle = pl->idle;
  n = pl->nidle;
  pl->nstates -= n;
  pl->nidle = 0;
  uv_mutex_unlock(&pl->mu);
  for (i = 0; i < n; i++) /* nobody else sees them now */
    lua_close(idle[i]);
  pool_unref(pl);
  return 0;
}

/* The size of libuv's thread pool, read as libuv 1.44 reads it. */
static int threadpool_size(void) {
  const char *v = getenv("UV_THREADPOOL_SIZE");
  long n = v ? strtol(v, NULL, 10) : 4;
  if (n == 0)
    n = 1;
  if (n < 0 || n > 1024)
    n = 1024;
  return (int)n;
}

static char pool_key;

/* The runtime's pool, made on first use. */
static pool *get_pool(lua_State *L) {
  pool **box, *pl;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &pool_key) == LUA_TUSERDATA) {
    pl = *(pool **)lua_touserdata(L, -1);
    lua_pop(L, 1);
    return pl;
  }
  lua_pop(L, 1);
  box = lua_newuserdatauv(L, sizeof(*box), 0);
  *box = NULL;
  luaL_setmetatable(L, POOL_MT);
  pl = calloc(1, sizeof(*pl));
  if (pl == NULL)
    luaL_error(L, "not enough memory");
  pl->cap = threadpool_size();
  pl->maxrun = pl->cap > 1 ? pl->cap - 1 : 1; /* one left for fs and DNS */
  pl->idle = calloc((size_t)pl->cap, sizeof(*pl->idle));
  if (pl->idle == NULL || uv_mutex_init(&pl->mu) != 0) {
    free(pl->idle);
    free(pl);
    luaL_error(L, "cannot create the worker pool");
  }
  pl->refs = 1;
  pl->L = tide__rt(L)->L;
  *box = pl;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &pool_key);
  return pl;
}

/* ---- jobs --------------------------------------------------------------- */

struct job {
  uv_work_t req;
  pool *pl;          /* set once queued */
  lane *ln;          /* its loop's lane */
  job *prev, *next;  /* while waiting in the lane */
  int waiting;       /* in the lane, not yet on the thread pool */
  tide_pending *p;   /* NULL once cancelled (or never suspended) */
  tide_task *t;      /* the caller, counted in t->s->io_pending while p */
  int task_ref;      /* keeps t alive until after_work */
  buf in;            /* package.path, package.cpath, upvalue kinds, code, args */
  buf out;           /* true, results... | false, message, traceback, value */
  const char *fatal; /* the worker could not even report (no state) */
};

static void job_free(job *j) {
  free(j->in.p);
  free(j->out.p);
  free(j);
}

/* __gc of the box that owns a job until it is queued (errors while
 * encoding the arguments free it). */
static int box_gc(lua_State *L) {
  job **box = lua_touserdata(L, 1);
  if (*box)
    job_free(*box);
  *box = NULL;
  return 0;
}

/* Message handler in the worker: keeps the traceback aside, passes the
 * error value through unchanged. */
static void push_message(lua_State *W, int e);

static int w_msgh(lua_State *W) {
  luaL_checkstack(W, 10, NULL);
  push_message(W, 1);
  luaL_traceback(W, W, lua_tostring(W, -1), 1);
  lua_setfield(W, LUA_REGISTRYINDEX, TB_KEY);
  lua_settop(W, 1);
  return 1;
}

/* [-0, +1, m] The text of an error value: a string or number as is, then
 * __tostring, then a string field `message`. */
static void push_message(lua_State *W, int e) {
  int top = lua_gettop(W);
  e = lua_absindex(W, e);
  if (lua_type(W, e) == LUA_TSTRING || lua_type(W, e) == LUA_TNUMBER) {
    lua_pushvalue(W, e);
    lua_tostring(W, -1); /* the copy becomes a string: e stays a number */
    return;
  }
  if (luaL_callmeta(W, e, "__tostring") && lua_type(W, -1) == LUA_TSTRING)
    return;
  lua_settop(W, top);
  if (lua_type(W, e) == LUA_TTABLE) {
    if (lua_getfield(W, e, "message") == LUA_TSTRING)
      return;
    lua_settop(W, top);
  }
  lua_pushfstring(W, "(error object is a %s value)", luaL_typename(W, e));
}

static void result_fail(lua_State *W, int pos, const char *msg) {
  luaL_error(W, "cannot return result #%d from to_thread: %s", pos, msg);
}

/* Worker thread, protected: (j, values...) -> j->out holds the values. */
static int w_encode(lua_State *W) {
  job *j = lua_touserdata(W, 1);
  j->out.n = 0;
  enc_list(W, &j->out, 2, lua_gettop(W) - 1, 0, result_fail);
  return 0;
}

/* Worker thread, in protected mode on W: loads the function, rebuilds the
 * arguments, calls it, and encodes in j->out its results (true, ...) or its
 * failure (false, message, traceback, value; the value nil when it cannot
 * travel). */
static int w_run(lua_State *W) {
  job *j = lua_touserdata(W, 1);
  size_t nups, len;
  const char *ups, *code;
  int n, i, st;
  lua_settop(W, 0);
  n = dec_list(W, &j->in); /* 1 path, 2 cpath, 3 ups, 4 code, 5.. args */
  lua_getglobal(W, "package");
  if (lua_istable(W, -1)) {
    lua_pushvalue(W, 1);
    lua_setfield(W, -2, "path");
    lua_pushvalue(W, 2);
    lua_setfield(W, -2, "cpath");
  }
  lua_pop(W, 1);
  ups = lua_tolstring(W, 3, &nups);
  code = lua_tolstring(W, 4, &len);
  if (luaL_loadbufferx(W, code, len, "=to_thread", "b") != LUA_OK)
    return lua_error(W);
  for (i = 0; i < (int)nups; i++) {
    if (ups[i] == 'S')
      lua_pushvalue(W, -1);
    else
      lua_pushglobaltable(W);
    lua_setupvalue(W, -2, i + 1);
  }
  lua_replace(W, 2); /* msgh fn args... */
  lua_pushcfunction(W, w_msgh);
  lua_replace(W, 1);
  lua_remove(W, 3);
  lua_remove(W, 3);
  lua_pushnil(W);
  lua_setfield(W, LUA_REGISTRYINDEX, TB_KEY);
  st = lua_pcall(W, n - 4, LUA_MULTRET, 1);
  j->out.n = 0;
  if (st == LUA_OK) {
    lua_pushboolean(W, 1);
    lua_replace(W, 1); /* true r1 r2 ... */
    enc_list(W, &j->out, 1, lua_gettop(W), 0, result_fail);
    return 0;
  }
  lua_settop(W, 2); /* msgh err */
  lua_pushcfunction(W, w_encode);
  lua_pushlightuserdata(W, j);
  lua_pushboolean(W, 0);
  push_message(W, 2);
  lua_getfield(W, LUA_REGISTRYINDEX, TB_KEY);
  lua_pushvalue(W, 2);
  if (lua_pcall(W, 5, 0, 0) != LUA_OK) { /* the value cannot travel */
    lua_settop(W, 2);
    lua_pushboolean(W, 0);
    push_message(W, 2);
    lua_getfield(W, LUA_REGISTRYINDEX, TB_KEY);
    j->out.n = 0;
    enc_list(W, &j->out, 3, 3, 0, result_fail);
  }
  return 0;
}

/* Worker thread, protected: reports a failure outside the function (its
 * results could not be sent, or the worker ran out of memory). */
static int w_fail(lua_State *W) {
  job *j = lua_touserdata(W, 2);
  j->out.n = 0;
  lua_pushboolean(W, 0);
  lua_insert(W, 1); /* false message */
  lua_settop(W, 2);
  enc_list(W, &j->out, 1, 2, 0, result_fail);
  return 0;
}

/* A job runs at a lower CPU priority than the loop (nice + WORKER_NICE,
 * this thread only), so CPU-bound jobs on every core do not starve the loop
 * thread: a ticking task stays on time. The pool thread gets its priority
 * back after the job where the system lets it (raising it again needs
 * privilege; an unprivileged pool thread then stays a background thread). */
#define WORKER_NICE 5

static int set_nice(int nice) {
  return setpriority(PRIO_PROCESS, (id_t)gettid(), nice);
}

static void run_job(job *j) {
  lua_State *W = pool_get(j->pl);
  if (W == NULL) {
    j->fatal = "cannot create a worker Lua state (not enough memory)";
    return;
  }
  lua_pushcfunction(W, w_run);
  lua_pushlightuserdata(W, j);
  if (lua_pcall(W, 1, 0, 0) != LUA_OK) {
    lua_pushcfunction(W, w_fail);
    lua_insert(W, -2);
    lua_pushlightuserdata(W, j);
    if (lua_pcall(W, 2, 0, 0) != LUA_OK)
      j->fatal = "the worker failed and could not say why (not enough memory)";
  }
  pool_put(j->pl, W);
}

static void on_uv_work(uv_work_t *req) {
  int before, base, lowered = 0;
  errno = 0;
  before = getpriority(PRIO_PROCESS, (id_t)gettid());
  base = getpriority(PRIO_PROCESS, (id_t)getpid()); /* the main thread's */
  if (errno == 0 && before < base + WORKER_NICE)
    lowered = set_nice(base + WORKER_NICE) == 0;
  run_job(req->data);
  if (lowered)
    set_nice(before);
}

/* ---- lanes: at most maxrun jobs of a loop on the thread pool ------------ */

static void on_uv_after_work(uv_work_t *req, int status);

/* The lane of loop, made on first use; NULL when out of memory. */
static lane *get_lane(pool *pl, uv_loop_t *loop) {
  lane *ln;
  for (ln = pl->lanes; ln; ln = ln->next)
    if (ln->loop == loop)
      return ln;
  ln = calloc(1, sizeof(*ln));
  if (ln) {
    ln->loop = loop;
    ln->next = pl->lanes;
    pl->lanes = ln;
  }
  return ln;
}

/* Frees ln once no job of it runs or waits. */
static void lane_release(pool *pl, lane *ln) {
  lane **pp;
  if (ln->running > 0 || ln->first)
    return;
  for (pp = &pl->lanes; *pp != ln; pp = &(*pp)->next)
    ;
  *pp = ln->next;
  free(ln);
}

/* Puts j on the thread pool (uv_queue_work fails only without a work
 * callback). */
static void submit(job *j) {
  int rc = uv_queue_work(j->ln->loop, &j->req, on_uv_work, on_uv_after_work);
  assert(rc == 0);
  (void)rc;
  j->waiting = 0;
  j->ln->running++;
}

/* Puts j on the thread pool if its lane has room, else at the lane's end. */
static void lane_add(job *j) {
  lane *ln = j->ln;
  if (ln->running < j->pl->maxrun) {
    submit(j);
    return;
  }
  j->waiting = 1;
  j->next = NULL;
  j->prev = ln->last;
  if (ln->last)
    ln->last->next = j;
  else
    ln->first = j;
  ln->last = j;
}

static void lane_remove(job *j) {
  lane *ln = j->ln;
  if (j->prev)
    j->prev->next = j->next;
  else
    ln->first = j->next;
  if (j->next)
    j->next->prev = j->prev;
  else
    ln->last = j->prev;
  j->prev = j->next = NULL;
  j->waiting = 0;
}

/* A job of ln left the thread pool: the first waiting one takes its place. */
static void lane_next(pool *pl, lane *ln) {
  ln->running--;
  if (ln->first) {
    job *j = ln->first;
    lane_remove(j);
    submit(j);
  }
  lane_release(pl, ln);
}

/* Loop thread, protected on the main state: pushes the results, or the
 * tide error (upvalue-less; returns it with a false first). */
static int deliver(lua_State *L) {
  job *j = lua_touserdata(L, 1);
  int n, base = 1;
  if (j->fatal) {
    lua_pushboolean(L, 0);
    tide__err_push(L, "thread", "%s", j->fatal);
    return 2;
  }
  n = dec_list(L, &j->out);
  if (lua_toboolean(L, base + 1))
    return n;
  tide__err_push(L, "thread", "%s", luaL_optstring(L, base + 2, "?"));
  lua_pushvalue(L, base + 3);
  lua_setfield(L, -2, "traceback");
  if (n > 3) {
    lua_pushvalue(L, base + 4);
    lua_setfield(L, -2, "value");
  }
  lua_replace(L, base + 2);
  lua_settop(L, base + 2);
  return 2;
}

static void on_uv_after_work(uv_work_t *req, int status) {
  job *j = req->data;
  pool *pl = j->pl;
  lua_State *L = pl->L;
  lane_next(pl, j->ln);
  /* Once the runtime's state is closed (pl->closed) nothing of it is
   * touched. A task abandoned by its run (TS_DONE, never resumed, so
   * on_cancel never ran) has a sched that may be gone: left alone too. */
  if (!pl->closed) {
    if (j->p && j->t->state != TS_DONE && status == 0) {
      int top = lua_gettop(L), n;
      j->t->s->io_pending--;
      lua_pushcfunction(L, deliver);
      lua_pushlightuserdata(L, j);
      if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) {
        tide_fail(j->p);
      } else {
        n = lua_gettop(L) - top;
        if (lua_toboolean(L, top + 1)) {
          lua_remove(L, top + 1);
          tide_complete(j->p, n - 1);
        } else {
          lua_remove(L, top + 1);
          tide_fail(j->p);
        }
      }
      lua_settop(L, top);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, j->task_ref);
  }
  job_free(j);
  pool_unref(pl);
}

/* The task was cancelled: the caller resumes now. A job still waiting in
 * its lane goes at once; one on the pool ends alone. */
static void on_cancel(tide_pending *p, void *data) {
  job *j = data;
  pool *pl = j->pl;
  j->p = NULL;
  j->t->s->io_pending--;
  if (j->waiting) {
    lane_remove(j);
    luaL_unref(tide_pending_L(p), LUA_REGISTRYINDEX, j->task_ref);
    lane_release(pl, j->ln);
    job_free(j);
    pool_unref(pl);
    return;
  }
  uv_cancel((uv_req_t *)&j->req);
}

static int writer(lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L;
  return tide__buf_add(ud, p, sz);
}

/* Raises "bad argument #pos to 'to_thread' (<fmt>)" at the user's call. */
static int arg_error(lua_State *L, int pos, const char *fmt, ...) {
  va_list ap;
  lua_pushfstring(L, "bad argument #%d to 'to_thread' (", pos);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_pushliteral(L, ")");
  lua_concat(L, 3);
  return tide__raise_at_user(L, "%s", lua_tostring(L, -1));
}

static void arg_fail(lua_State *L, int pos, const char *msg) {
  arg_error(L, pos, "%s", msg);
}

/* tide.to_thread(fn, ...) -> fn's results, computed on a worker thread */
static int l_to_thread(lua_State *L) {
  tide_task *t = tide__current(L);
  int nargs = lua_gettop(L) - 1, i, top;
  const char *name;
  job **box, *j;
  pool *pl;
  char ups[256];
  if (lua_type(L, 1) != LUA_TFUNCTION || lua_iscfunction(L, 1))
    return arg_error(L, 1, "Lua function expected, got %s",
                     lua_iscfunction(L, 1) ? "C function"
                                           : luaL_typename(L, 1));
  pl = get_pool(L);
  luaL_checkstack(L, nargs + 10, "too many arguments to to_thread");
  box = lua_newuserdatauv(L, sizeof(*box), 0);
  *box = NULL;
  luaL_setmetatable(L, BOX_MT);
  lua_insert(L, 2); /* fn box args... */
  top = lua_gettop(L);
  *box = j = calloc(1, sizeof(*j));
  if (j == NULL)
    return luaL_error(L, "not enough memory");
  /* package.path, package.cpath */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "package");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "path");
    lua_getfield(L, -2, "cpath");
  } else {
    lua_pushnil(L);
    lua_pushnil(L);
  }
  lua_rotate(L, -4, 2);
  lua_pop(L, 2);
  /* upvalues: _ENV, which becomes the worker's globals whatever table it
   * was (busted gives a spec file's functions one of its own), or the
   * function itself */
  for (i = 1; (name = lua_getupvalue(L, 1, i)) != NULL; i++) {
    int self = lua_rawequal(L, -1, 1);
    lua_pop(L, 1);
    if (strcmp(name, "_ENV") != 0 && !self)
      return arg_error(L, 1, "the function uses upvalue '%s'; only "
                       "globals and the function itself can be used in a "
                       "worker: pass values as arguments", name);
    ups[i - 1] = self ? 'S' : 'E';
  }
  lua_pushlstring(L, ups, (size_t)(i - 1));
  /* the code */
  {
    buf code = {NULL, 0, 0};
    lua_pushvalue(L, 1);
    if (lua_dump(L, writer, &code, 0) != 0) {
      free(code.p);
      return luaL_error(L, "not enough memory");
    }
    lua_pop(L, 1);
    lua_pushlstring(L, code.p ? code.p : "", code.n);
    free(code.p);
  }
  /* path cpath ups code, then the arguments */
  for (i = 0; i < nargs; i++)
    lua_pushvalue(L, top - nargs + 1 + i);
  /* path is "argument -2", so the arguments count from 2 */
  enc_list(L, &j->in, top + 1, lua_gettop(L) - top, -2, arg_fail);
  lua_settop(L, top);
  tide__push_task(L, t);
  j->task_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  j->req.data = j;
  j->pl = pl;
  j->ln = get_lane(pl, t->s->loop);
  if (j->ln == NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, j->task_ref);
    return luaL_error(L, "not enough memory");
  }
  j->t = t;
  lane_add(j);
  pl->refs++;
  *box = NULL; /* on_uv_after_work (or on_cancel, if waiting) frees it */
  t->s->io_pending++; /* a virtual clock waits for it */
  return tide_suspend(L, on_cancel, j, &j->p);
}

/* stats() -> {states =, idle =, cap =}: worker states alive, idle, max */
static int l_stats(lua_State *L) {
  pool *pl = get_pool(L);
  int states, idle;
  uv_mutex_lock(&pl->mu);
  states = pl->nstates;
  idle = pl->nidle;
  uv_mutex_unlock(&pl->mu);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, states);
  lua_setfield(L, -2, "states");
  lua_pushinteger(L, idle);
  lua_setfield(L, -2, "idle");
  lua_pushinteger(L, pl->cap);
  lua_setfield(L, -2, "cap");
  return 1;
}

static const luaL_Reg funcs[] = {
  {"to_thread", l_to_thread}, {"stats", l_stats}, {NULL, NULL}};

int luaopen_tide_thread(lua_State *L) {
  if (luaL_newmetatable(L, BOX_MT)) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  if (luaL_newmetatable(L, POOL_MT)) {
    lua_pushcfunction(L, pool_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 2);
  luaL_newlib(L, funcs);
  return 1;
}
