/*
 * embed.c: the C API for applications (tide.h) beyond creating a runtime.
 * Owns the runtime's root sched, where tasks started from C run as the
 * loop turns (the application's uv_run, or tide_loop_run), their done
 * callbacks, async C functions (tide_suspend / tide_complete / tide_fail)
 * and module registration. Blocking runs (tide_runtime_run, tide.run) are
 * loop.c's.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "internal.h"

/* The root sched, made on first use on the runtime's loop (or one of its
 * own). It has no main task: it runs as long as the loop does. Signals
 * stay the application's: with no main task to cancel, tide's defaults
 * would only swallow the first SIGINT/SIGTERM. */
static tide_sched *root(tide_runtime *rt) {
  if (rt->root == NULL) {
    tide_sched *s;
    tide__load_coroutine(rt->L);
    s = tide__sched_new(rt->L, rt, rt->loop, 0, 0);
    if (s == NULL)
      luaL_error(rt->L, "cannot start tide's loop");
    s->outer = rt->sched;
    rt->root = s;
    if (rt->sched == NULL)
      rt->sched = s;
  }
  return rt->root;
}

uv_loop_t *tide_runtime_loop(tide_runtime *rt) {
  return rt->loop ? rt->loop : root(rt)->loop;
}

int tide_loop_run(tide_runtime *rt, uv_run_mode mode) {
  return uv_run(root(rt)->loop, mode);
}

int tide_pending_tasks(tide_runtime *rt) {
  return rt->cpending;
}

/* ---- tasks started from C ---------------------------------------------- */

typedef struct cdone {
  tide_done_cb cb;
  void *data;
  int called;
} cdone;

static char cstarted_key; /* registry: task -> its cdone, until it ends */

typedef struct done_call {
  tide_runtime *rt;
  cdone *d;
  int status, n;
} done_call;

/* The application's done callback, under lua_pcall (upvalue: done_call). */
static int done_protected(lua_State *L) {
  done_call *c = lua_touserdata(L, lua_upvalueindex(1));
  c->d->cb(c->rt, c->status, L, c->n, c->d->data);
  return 0;
}

/* Calls d's callback with the n values on top of L. It is the
 * application's code: the memory cap does not apply to what it allocates;
 * the instruction limit does, with a budget of its own, since Lua calls it
 * makes on the values may run the script's metamethods (luaL_tolstring
 * calls __tostring). An error (a Lua call that raised) is reported and
 * ends the callback, rather than unwinding the runtime with its limits
 * still set. */
static void call_done(tide_runtime *rt, lua_State *L, cdone *d, int status,
                      int n) {
  int top = lua_gettop(L) - n, in_cb = rt->in_callback;
  done_call c;
  d->called = 1;
  rt->cpending--;
  if (d->cb) {
    c.rt = rt, c.d = d, c.status = status, c.n = n;
    rt->in_callback = 0;
    lua_pushlightuserdata(L, &c);
    lua_pushcclosure(L, done_protected, 1);
    lua_insert(L, top + 1);
    tide__call_protected(L, n, "a done callback", CALL_APP);
    rt->in_callback = in_cb;
  }
  lua_settop(L, top);
}

/* Waiter of a task started from C (upvalue: its cdone). */
static int on_task_done(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  cdone *d = lua_touserdata(L, lua_upvalueindex(1));
  int n, status;
  if (d->called)
    return 0;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &cstarted_key);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  if (d->cb == NULL) { /* nobody looks at the outcome: a failure stays */
    d->called = 1;      /* unretrieved, so it is reported as for Lua tasks */
    rt->cpending--;
    return 0;
  }
  status = tide__push_outcome(L, lua_touserdata(L, 1), 1, &n);
  call_done(rt, L, d, status, n);
  return 0;
}

int tide_spawn(tide_runtime *rt, int nargs, tide_done_cb done, void *data) {
  lua_State *L = rt->L;
  int fidx = lua_gettop(L) - nargs;
  cdone *d;
  if (fidx < 1 || lua_type(L, fidx) != LUA_TFUNCTION)
    return -1;
  tide__spawn(L, root(rt), fidx, nargs); /* pushes the task */
  lua_replace(L, fidx);
  lua_settop(L, fidx);
  d = lua_newuserdatauv(L, sizeof(*d), 0);
  d->cb = done;
  d->data = data;
  d->called = 0;
  tide__registry_table(L, &cstarted_key);
  lua_pushvalue(L, fidx);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_pushcclosure(L, on_task_done, 1);
  lua_getfield(L, fidx, "add_done_callback");
  lua_pushvalue(L, fidx);
  lua_pushvalue(L, -3);
  lua_call(L, 2, 0);
  rt->cpending++;
  lua_settop(L, fidx - 1);
  return 0;
}

static int start_loaded(tide_runtime *rt, int st, tide_done_cb done,
                        void *data) {
  if (st != LUA_OK) {
    if (done)
      done(rt, st, rt->L, 1, data);
    lua_pop(rt->L, 1);
    return st;
  }
  return tide_spawn(rt, 0, done, data);
}

int tide_dostring(tide_runtime *rt, const char *code, const char *chunkname,
                  tide_done_cb done, void *data) {
  return start_loaded(rt, luaL_loadbuffer(rt->L, code, strlen(code),
                                          chunkname ? chunkname : code),
                      done, data);
}

int tide_dofile(tide_runtime *rt, const char *path, tide_done_cb done,
                void *data) {
  /* a sandbox runs source only: crafted bytecode can crash the VM */
  return start_loaded(rt, luaL_loadfilex(rt->L, path, rt->sandbox ? "t" : NULL),
                      done, data);
}

/* Cancels the root's tasks, runs the ready queue so they unwind (without
 * running an application's loop), tells the done callbacks of tasks that
 * still have not ended, and closes the root sched. */
static void on_close_deadline(uv_timer_t *h) {
  *(int *)h->data = 1;
}

/* Cancels the root's tasks and runs the loop while they clean up (as
 * asyncio.run does), for at most CLOSE_GRACE_MS and only while something
 * is alive on the loop: the deadline's timer does not keep it running, so
 * a task that swallowed its cancel and waits for nothing ends the wait at
 * once. Tasks still there are then abandoned. */
#define CLOSE_GRACE_MS 2000

void tide__root_close(tide_runtime *rt) {
  tide_sched *s = rt->root;
  lua_State *L = rt->L;
  uv_timer_t deadline;
  int expired = 0;
  tide__cancel_all(s, "the runtime is closing");
  tide__sched_update(s);
  uv_timer_init(s->loop, &deadline);
  deadline.data = &expired;
  uv_timer_start(&deadline, on_close_deadline, CLOSE_GRACE_MS, 0);
  uv_unref((uv_handle_t *)&deadline);
  while (s->ntasks > 0 && !expired && uv_run(s->loop, UV_RUN_ONCE) != 0)
    ;
  uv_close((uv_handle_t *)&deadline, NULL);
  uv_run(s->loop, UV_RUN_NOWAIT); /* its close completes: it is on our stack */
  tide__drain_ready(s, 100);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &cstarted_key) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      cdone *d = lua_touserdata(L, -1);
      if (!d->called) {
        tide__err_push(L, "cancelled", "the runtime closed before the task ended");
        call_done(rt, L, d, LUA_ERRRUN, 1);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  tide__abandon_all(s);
  if (rt->sched == s)
    rt->sched = s->outer;
  rt->root = NULL;
  tide__sched_close(s);
}

/* ---- async C functions ---------------------------------------------- */

enum { P_WAITING, P_COMPLETED, P_FAILED };

struct tide_pending {
  tide_runtime *rt;
  tide_task *t;
  tide_cancel_cb on_cancel;
  void *data;
  int state;
  int base; /* stack top of the suspended C function */
  int keep; /* registry ref: results that own a resource (TIDE_DROP_FIELD) */
  tide_pending *prev, *next; /* the runtime's live handles */
};

static void unlink_pending(tide_pending *p) {
  if (p->prev)
    p->prev->next = p->next;
  else
    p->rt->pendings = p->next;
  if (p->next)
    p->next->prev = p->prev;
}

/* A run ended with tasks still suspended in async C functions (they went
 * back to waiting after their cancel): their continuations never run, so
 * the handles end here, through their cancel callbacks. */
void tide__abandon_pending(tide_sched *s) {
  tide_pending *p = s->rt->pendings, *next;
  for (; p; p = next) {
    next = p->next;
    if (p->t->s != s)
      continue;
    unlink_pending(p);
    if (p->state == P_WAITING && p->on_cancel)
      p->on_cancel(p, p->data);
    luaL_unref(s->L, LUA_REGISTRYINDEX, p->keep);
    free(p);
  }
}

/* A cancel that comes after tide_complete, before the task resumed, drops
 * the results: those that own a resource (a File just opened: their
 * metatable's TIDE_DROP_FIELD) are released now, not when collected. */
static void release_dropped(lua_State *L, tide_pending *p) {
  int i, n;
  if (p->keep == LUA_NOREF)
    return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->keep);
  luaL_unref(L, LUA_REGISTRYINDEX, p->keep);
  p->keep = LUA_NOREF;
  n = (int)lua_rawlen(L, -1);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    if (luaL_getmetafield(L, -1, TIDE_DROP_FIELD) != LUA_TNIL) {
      lua_insert(L, -2);
      if (lua_pcall(L, 1, 0, 0) != LUA_OK) /* the cancel's error stands */
        lua_pop(L, 1);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

static int pending_k(lua_State *L, int status, lua_KContext ctx) {
  tide_pending *p = (tide_pending *)ctx;
  int base = p->base, st = p->state;
  (void)status;
  unlink_pending(p);
  if (!lua_toboolean(L, base + 1)) { /* cancelled */
    if (st == P_WAITING && p->on_cancel)
      p->on_cancel(p, p->data);
    release_dropped(L, p);
    free(p);
    lua_pushvalue(L, base + 2);
    return lua_error(L);
  }
  luaL_unref(L, LUA_REGISTRYINDEX, p->keep);
  free(p);
  if (st == P_FAILED) {
    lua_pushvalue(L, base + 2);
    return lua_error(L);
  }
  return lua_gettop(L) - base - 1;
}

int tide_suspend(lua_State *L, tide_cancel_cb on_cancel, void *data,
                 tide_pending **pending) {
  tide_runtime *rt = tide__rt(L);
  tide_task *t = rt->current;
  tide_pending *p = NULL;
  if (t && t->state == TS_RUNNING && lua_isyieldable(L))
    p = malloc(sizeof(*p));
  if (p == NULL) { /* cannot suspend: let the app undo what it started */
    *pending = NULL;
    if (on_cancel)
      on_cancel(NULL, data);
    tide__current(L); /* raises the reason, if it is one of these */
    return luaL_error(L, "not enough memory");
  }
  p->rt = tide__rt(L);
  p->t = t;
  p->on_cancel = on_cancel;
  p->data = data;
  p->state = P_WAITING;
  p->keep = LUA_NOREF;
  p->base = lua_gettop(L);
  p->prev = NULL;
  p->next = p->rt->pendings;
  if (p->next)
    p->next->prev = p;
  p->rt->pendings = p;
  *pending = p;
  return tide__park(L, t, (lua_KContext)p, pending_k);
}

lua_State *tide_pending_L(tide_pending *p) {
  return p->rt->L;
}

static void finish(tide_pending *p, int state, int n) {
  lua_State *L = p->rt->L;
  int i, top = lua_gettop(L);
  for (i = top - n + 1; state == P_COMPLETED && i <= top; i++)
    if (luaL_getmetafield(L, i, TIDE_DROP_FIELD) != LUA_TNIL) {
      lua_pop(L, 1); /* one owns a resource: keep them all, for a cancel */
      lua_createtable(L, n, 0);
      for (i = 1; i <= n; i++) {
        lua_pushvalue(L, top - n + i);
        lua_rawseti(L, -2, i);
      }
      p->keep = luaL_ref(L, LUA_REGISTRYINDEX);
      break;
    }
  lua_pushboolean(L, 1);
  lua_insert(L, -(n + 1));
  p->state = state;
  tide__wake(L, p->t, n + 1); /* a task already cancelled drops them */
}

void tide_complete(tide_pending *p, int nresults) {
  finish(p, P_COMPLETED, nresults);
}

void tide_fail(tide_pending *p) {
  finish(p, P_FAILED, 1);
}

/* ---- modules -------------------------------------------------------- */

void tide_preload(tide_runtime *rt, const char *name, lua_CFunction open) {
  lua_State *L = rt->L;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, open);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

static int loaded_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L;
  (void)status;
  (void)ctx;
  return 1; /* the chunk's result */
}

/* The preload loader of tide_preload_lua: compiles the source, runs it
 * with a continuation, so its top level may suspend (as a file's may). */
static int load_source(lua_State *L) {
  size_t len;
  const char *src = lua_tolstring(L, lua_upvalueindex(1), &len);
  const char *name = luaL_checkstring(L, 1);
  lua_pushfstring(L, "=%s", name);
  if (luaL_loadbuffer(L, src, len, lua_tostring(L, -1)) != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, 1);
  lua_callk(L, 1, 1, 0, loaded_k);
  return loaded_k(L, LUA_OK, 0);
}

void tide_preload_lua(tide_runtime *rt, const char *name, const char *src,
                      size_t len) {
  lua_State *L = rt->L;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushlstring(L, src, len);
  lua_pushcclosure(L, load_source, 1);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}
