/*
 * internal.h: the structures shared by tide's C files. Not installed; the
 * public surface is tide.h.
 *
 * Ownership in one paragraph: a tide_runtime owns one lua_State and knows the
 * libuv loop it was given or made. Each tide.run() (the binary's main chunk
 * included) pushes a tide_sched: the ready queue, the timer heap and the
 * handles that drive them on one loop. Tasks are userdata ("tide.Task") that
 * belong to one sched; while not done they are anchored in the sched's task
 * table, so the collector never takes a runnable or parked task.
 */
#ifndef TIDE_INTERNAL_H
#define TIDE_INTERNAL_H

#include <stdint.h>
#include <uv.h>
#include <lua.h>
#include <lauxlib.h>

#include "tide.h"

#define TIDE_TASK_MT   "tide.Task"
#define TIDE_HANDLE_MT "tide.Handle"
#define TIDE_ERROR_MT  "tide.Error"

/* A node of the timer heap: embedded in a task (sleep) or a handle. */
struct tide_waitlist;

/* For a task the node doubles as "where it waits": in the heap (sleeping,
 * kind TN_TASK) or in a wait list (kind TN_WAITING, wl set), never both,
 * so a task that ends or is abandoned can always be unlinked. */
typedef struct tide_tnode {
  union {
    uint64_t seq;              /* in the heap: start order, for FIFO ties */
    struct tide_waitlist *wl;  /* TN_WAITING: the list it is in */
  };
  int idx;      /* position in the heap, -1 when not in it; TN_WAITING:
                 * its position in wl (items[idx - wl->base], unsigned) */
  int kind;     /* TN_TASK, TN_HANDLE or TN_WAITING */
} tide_tnode;

/* A heap slot: the deadline inline (ns on the sched clock), so sifting
 * compares a contiguous array; ties look at the node's seq. */
typedef struct tide_hentry {
  uint64_t when;
  tide_tnode *n;
} tide_hentry;

enum { TN_TASK = 1, TN_HANDLE = 2, TN_WAITING = 3 };

enum task_state {
  TS_NEW,     /* spawned, first step not run yet */
  TS_READY,   /* in the ready queue with nargs values pushed on co */
  TS_RUNNING, /* being resumed right now */
  TS_PARKED,  /* suspended, waiting for a wake or a cancel */
  TS_DONE
};

enum task_flags {
  TF_CANCEL_PENDING = 1, /* cancel asked while running: at the next park */
  TF_FAILED = 2,         /* ended with an error */
  TF_CANCELLED = 4,      /* ended with a "cancelled" error */
  TF_RETRIEVED = 8,      /* somebody looked at the error */
  TF_QUEUED = 16,        /* in the ready queue */
  TF_IMMEDIATE = 32,     /* parked only to yield: resume with true */
  TF_CANCEL_QUEUED = 64, /* the cancel error is pushed on co already */
  TF_LUA_PARK = 128      /* parked by core.park: core.wake may wake it */
};

typedef struct tide_sched tide_sched;

/* Something bound to one run that must be torn down before the run closes
 * its handles (the HTTP client's curl multi, http.c). */
typedef struct tide_closer {
  struct tide_closer *next, *prev;
  void (*close)(struct tide_closer *c);
} tide_closer;

typedef struct tide_task {
  lua_State *co;          /* the coroutine; NULL once done */
  tide_sched *s;          /* the sched the task runs on */
  tide_tnode tn;          /* sleep deadline */
  int ref;                /* slot in the sched's task table, 0 when done */
  union {
    int nargs;            /* values waiting on co for the next resume */
    int nres;             /* once done: results kept after success */
  };
  uint32_t id;
  uint32_t parent;        /* id of the spawning task, 0 for none */
  int line;               /* line of the spawn call */
  uint16_t src;           /* source id of the spawn call (task.c), 0: ? */
  unsigned char state, flags;
} tide_task; /* 56 bytes: its userdata fits the arena's 112-byte class */

/* Task user values */
/* Task user value: the function (and arguments) before the task starts,
 * its coroutine while it runs, then its results, its cancellation error,
 * or {error, traceback} after a failure. Waiters are kept in the sched. */
enum { TUV_CO = 1, TUV_N = 1 };
/* Spawn arguments kept in user values after fn (no table) up to this many */
#define SPAWN_UV_ARGS 3

/* call_soon / call_later handle */
typedef struct tide_handle {
  tide_tnode tn;
  uint64_t when;
  tide_sched *s;
  int ref; /* registry-ish ref in the sched's handle table while armed */
  int cancelled;
  int queued; /* in the ready queue (anchored until it leaves it) */
} tide_handle;

struct tide_sched {
  tide_runtime *rt;
  tide_sched *outer;  /* the sched this run is nested in */
  lua_State *L;       /* the thread that called run: callbacks run here */
  uv_loop_t *loop;
  int own_loop;
  uv_loop_t loop_storage;
  uv_prepare_t prepare;
  uv_check_t check;
  uv_idle_t idle;
  uv_timer_t timer;
  uv_signal_t sigint, sigusr1;
  int idle_on, timer_on, virtual_clock, closing;
  uint64_t armed;     /* deadline the uv timer is armed for */
  uint64_t vnow;      /* virtual clock, ns */
  uint64_t seq;
  void **rq;          /* ready queue: a ring of rq_cap slots, tasks and
                       * handles (tagged, see task.c) in one FIFO */
  int rq_head, rq_len, rq_cap;
  int rounds_after_main; /* rounds run since the main task ended */
  int outside_uv;        /* running the queue outside uv_run: no uv_stop */
  tide_hentry *heap;
  int nheap, capheap;
  int tasks_ref;      /* registry ref: table of live tasks */
  int handles_ref;    /* registry ref: table of armed handles */
  int pending_ref;    /* registry ref: task -> pending cancel error */
  int extra_ref;      /* registry ref: task -> a cancel asked while one was
                       * already on its way (tide.timeout honours it) */
  int counts_ref;     /* registry ref: task -> cancels asked of it since its
                       * first tide.timeout (asyncio's cancelling() count) */
  int waiters_ref;    /* registry ref: task slot -> its waiters */
  int io_pending;     /* operations waiting on real I/O (virtual clock) */
  int open_handles;   /* while closing: handles whose close is pending */
  int ntasks;
  int maxref;         /* highest slot used in the task table */
  int *free, nfree, capfree; /* free slots of the task table */
  tide_task *main;
  tide_closer closers; /* list head: torn down first at the run's end */
  int stop_watch;      /* looks for lua.c's Ctrl-C hook (loop.c) */
  lua_Hook debug_hook; /* debug.sethook's hook function: not lua.c's */
};

struct tide_runtime {
  lua_State *L;
  uv_loop_t *loop;       /* where top-level runs and C-started tasks go */
  uv_loop_t *owned_loop; /* the runtime's own loop (when none was handed in) */
  tide_sched *sched;     /* innermost active run */
  tide_task *current;    /* task being resumed */
  uint32_t next_id;
  uint32_t lua_main;     /* id of the task that plays Lua's main thread
                          * (the command's main chunk; task.c), 0: none */
  int debug;             /* TIDE_DEBUG */
  int sigints;           /* Ctrl-C count */
  int owns_L;
  int sandbox;           /* tide_options.sandbox: text chunks only */
  int npool;             /* finished coroutines kept for reuse */
  uint32_t last_src_id;  /* spawn-site cache (task.c, source_id) */
  int last_src_internal; /* ... and whether it is one of tide's Lua modules */
  unsigned long instruction_limit; /* per task step, 0: none */
  unsigned long limit_used; /* instructions counted in this step (task.c) */
  void *net_live; /* net.c: its streams whose handles are not closed yet */
  int nreraised;  /* task.c: entries in its table of re-raised errors */
  struct tide_mem *mem;  /* allocation accounting (runtime.c), or NULL */
  struct tide_arena *arena; /* L's allocator when tide made L (alloc.c) */
  /* registry slots of task.c's tables, read by index on hot paths (a
   * light-userdata key costs a hash lookup, ~3x an array read) */
  int task_mt_ref, task_gcmt_ref, pool_ref, last_fn_ref;
  int tb_ref;            /* thread -> traceback taken where it raised (weak) */
  struct tide_pending *pendings; /* live tide_suspend handles (embed.c) */
  tide_sched *root;      /* where tasks started from C run (embed.c) */
  int cpending;          /* tasks started from C not yet done */
  int incb;              /* inside one of tide's loop callbacks */
  int in_callback;       /* running a Lua callback (limits apply) */
  int closing;           /* in tide_runtime_close: a second one is refused */
  int co_installed;      /* tide's coroutine.wrap and resume are (sandbox, or
                          * tide__load_coroutine) */
  int unyieldable;       /* resumes running under a resumer that cannot
                          * yield (coroutine.c): no park may happen */
};

/* runtime.c */
tide_runtime *tide__rt(lua_State *L);
void tide__load_coroutine(lua_State *L);

/* alloc.c: the allocator of states tide creates (NULL arena: malloc's) */
typedef struct tide_arena tide_arena;
tide_arena *tide__arena_new(void); /* NULL under AddressSanitizer */
void tide__arena_free(tide_arena *a);
void *tide__arena_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
lua_State *tide__newstate(tide_arena *a);
tide_runtime *tide__arena_rt(lua_State *L); /* NULL: not on an arena */
void tide__arena_set_rt(tide_arena *a, tide_runtime *rt);
/* lua_Alloc's contract (nsize 0 frees; NULL, the old block kept: no memory)
 * for big arrays: from 1 MB up a mapping on 2 MB pages, grown by mremap */
void *tide__big(void *ptr, size_t osize, size_t nsize);
void *tide__map_big(size_t len); /* mmap'd, on 2 MB pages; NULL: none */

/* A growable byte buffer (C side of streams, parsers, encoders). */
typedef struct tide_buf {
  char *p;
  size_t n, cap;
} tide_buf;
int tide__buf_add(tide_buf *b, const void *p, size_t n); /* 0, or -1: no memory */
void tide__buf_free(tide_buf *b);

/* Makes (once) the metatable `name` of a userdata type: __index = methods,
 * __gc = gc, __close = close (gc when NULL), __tostring when given. */
void tide__new_type(lua_State *L, const char *name, const luaL_Reg *methods,
                    lua_CFunction gc, lua_CFunction close,
                    lua_CFunction tostring);
void tide__report(lua_State *L, const char *what, int idx);
enum { CALL_RUNTIME = 0, CALL_USER = 1, CALL_APP = 2 };
int tide__call_protected(lua_State *L, int nargs, const char *what, int who);

/* err.c */
void tide__err_push(lua_State *L, const char *kind, const char *fmt, ...);
int tide__err_raise(lua_State *L, const char *kind, const char *fmt, ...);
void tide__where_user(lua_State *L);
void tide__check_opts(lua_State *L, int arg, const char *const known[], int n);
const char *tide__global_name(lua_State *L, int idx);
int tide__is_own_source(const char *source);
int tide__raise_no_loop(lua_State *L);
void tide__take_stop_hook(tide_sched *s);
/* A metatable field: a function releasing the value's resource at once,
 * called when the value, the result of an async call, is dropped by a
 * cancel before its task resumed (embed.c). */
#define TIDE_DROP_FIELD "__tide_drop"
int tide__raise_at_user(lua_State *L, const char *fmt, ...);
int tide__user_frame(lua_State *co, int level, int fallback, lua_Debug *ar);
int tide__raise_kind_at_user(lua_State *L, const char *kind, const char *fmt, ...);
int tide__iserror(lua_State *L, int idx);
int tide__err_is_kind(lua_State *L, int idx, const char *kind);
int tide__open_err(lua_State *L);

/* timer.c */
uint64_t tide__now(tide_sched *s);
void tide__heap_push(tide_sched *s, tide_tnode *n, uint64_t when);
void tide__heap_remove(tide_sched *s, tide_tnode *n);
/* signal defaults (loop.c): script watchers of SIGINT/SIGTERM open (+1)
 * or closed (-1); forget the Ctrl-Cs counted so far (the REPL's prompt) */
void tide__signal_watching(int signum, int delta);
void tide__signals_forget(tide_runtime *rt);
void tide__fire_due(tide_sched *s);
void tide__timer_arm(tide_sched *s);
int tide__virtual_advance(tide_sched *s);
int tide__open_timer(lua_State *L);

/* require.c */
void tide__install_require(lua_State *L);
void tide__registry_table(lua_State *L, const void *key); /* runtime.c */
void tide__registry_weak(lua_State *L, const void *key, const char *mode);

/* task.c */
tide_task *tide__check_task(lua_State *L, int idx);
tide_task *tide__current(lua_State *L);
tide_task *tide__spawn(lua_State *L, tide_sched *s, int fidx, int nargs);
void tide__enqueue(tide_sched *s, tide_task *t);
void tide__limit_arm(lua_State *L);
void tide__limit_child(lua_State *L, lua_State *co);
void tide__limit_after(lua_State *L);
void tide__abandon_all(tide_sched *s);
void tide__abandon_pending(tide_sched *s); /* embed.c: suspended C calls */
void tide__run_ready(tide_sched *s);
int tide__run_round(tide_sched *s);
void tide__drain_ready(tide_sched *s, int max);
void tide__rq_drop(tide_sched *s);
void tide__enqueue_handle(tide_sched *s, tide_handle *h);
void tide__enqueue_due(tide_sched *s, tide_task *t);
void tide__handle_run(tide_sched *s, tide_handle *h);
int tide__park(lua_State *L, tide_task *t, lua_KContext ctx, lua_KFunction k);
int tide__wake(lua_State *L, tide_task *t, int nvals);
int tide__cancel(lua_State *L, int tidx, int erridx);
void tide__push_task(lua_State *L, tide_task *t);
void tide__push_error(lua_State *L, tide_task *t, int ud);
int tide__push_outcome(lua_State *L, tide_task *t, int ud, int *n);
void tide__push_trace(lua_State *L, tide_task *t, int ud);
void tide__task_line(lua_State *L, tide_task *t);
int tide__open_task(lua_State *L);
/* coroutine.c: coroutine.resume and wrap passing parks up */
int tide__open_coroutine(lua_State *L);
void tide__co_own(lua_State *L);
void *tide__sentinel(void);
int tide__is_lua_main(lua_State *L); /* L plays Lua's main thread */
lua_State *tide__lua_main_co(lua_State *L);
void tide__call_soon_on(lua_State *L, tide_sched *s, int nargs);

/* waitlist.c: a FIFO of parked tasks (see the file) */
typedef struct tide_waitlist {
  tide_task **items;
  int first, last; /* live range is [first, last), with holes */
  int cap;
  int live;        /* waiters in it (the range less its holes) */
  unsigned base;   /* a waiter's tn.idx less base is its index in items
                    * (unsigned: wraps harmlessly in a long-lived list) */
} tide_waitlist;
void tide__wl_push(lua_State *L, tide_waitlist *w, tide_task *t);
void tide__wl_remove(tide_waitlist *w, tide_task *t);
int tide__wl_wake_one(lua_State *L, tide_waitlist *w);
int tide__wl_wake_all(lua_State *L, tide_waitlist *w);
int tide__wl_empty(const tide_waitlist *w);
void tide__wl_free(tide_waitlist *w);
void tide__wl_unlink(tide_task *t);
int tide__open_waitlist(lua_State *L);

/* queue.c */
int tide__open_queue(lua_State *L);

/* net.c */
void tide__net_close(uv_handle_t *h);
void tide__net_detach(tide_runtime *rt);
void tide__net_close_servers(uv_handle_t *h, void *sched);
/* [-0, +1, m] A pipe stream for a child; its user value 1 is its owner. */
uv_stream_t *tide__stream_new_pipe(lua_State *L, tide_sched *sched,
                                   size_t limit);
size_t tide__stream_limit(lua_State *L, int arg);
void tide__stream_close(lua_State *L, int idx);
int luaopen_tide_net(lua_State *L);

/* http.c: the libcurl client core; httpparse.c: the server's parser */
int luaopen_tide_http_core(lua_State *L);
int luaopen_tide_http_parser(lua_State *L);

/* issue 5: fs.c, process.c, thread.c (to_thread), signal.c */
int luaopen_tide_fs(lua_State *L);
int luaopen_tide_process(lua_State *L);
int luaopen_tide_thread(lua_State *L);
int luaopen_tide_signal(lua_State *L);

/* loop.c */
tide_sched *tide__sched_new(lua_State *L, tide_runtime *rt, uv_loop_t *loop,
                            int virtual_clock, int signals);
void tide__sched_update(tide_sched *s);
int tide__sched_close(tide_sched *s);
int tide__run(lua_State *L);
void tide__cancel_all(tide_sched *s, const char *why);
void tide__walk_close(uv_handle_t *h, void *arg);
void tide__root_close(tide_runtime *rt);
int tide__dump_tasks(lua_State *L);
void tide__closer_add(tide_sched *s, tide_closer *c);
void tide__closer_remove(tide_closer *c);

/* embedded Lua sources, generated at build time */
typedef struct tide_embedded {
  const char *name;
  const char *chunkname;
  const char *src;
  size_t len;
} tide_embedded;
extern const tide_embedded tide__lua_modules[];

#endif
