/*
 * task.c: tasks. Owns the "tide.Task" userdata, the ready queue, the step
 * that resumes a task's coroutine, and the three moves everything else is
 * built from:
 *
 *   park   the running task yields (a private sentinel) and waits;
 *   wake   a parked task becomes ready, with values for its park to return;
 *   cancel the task is made ready with an error of kind "cancelled" that its
 *          park raises (delivered at the suspension point, as in asyncio).
 *
 * A park returns `true, ...` when woken, or `false, err, woken` when
 * cancelled, where woken tells that a wake had arrived first and was dropped,
 * so a primitive can pass it on (nothing is lost). Tasks are never resumed
 * from inside another task: wake and cancel only queue, and the loop's
 * check callback runs the queue (see loop.c).
 *
 * While a task is not done, its userdata is anchored in the sched's task
 * table. A done task keeps its results (or error) in user value 1 instead of
 * its coroutine, which is then left to the collector.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static char sentinel_key, task_mt_key, gather_mt_key;
static char tailcall_key; /* a task function's "call this next" mark */
/* registry: task (light userdata) -> {error, traceback} of the last failed
 * task whose error an await in it raised again */
static char reraised_key;
static char sources_key;                   /* spawn sites (see source_id) */

/* A gather in progress: it waits on each child as a waiter (user value 1:
 * the first child that failed). */
typedef struct gather_state {
  tide_task *parent;
  int remaining;
  int return_exceptions;
  int live;
  int draining; /* cancelled: wakes the parent once every child ended */
} gather_state;

static void gather_child_done(lua_State *L, int g, int ud);

void *tide__sentinel(void) {
  return &sentinel_key;
}

static const char *state_name(const tide_task *t) {
  switch (t->state) {
    case TS_NEW: return "pending";
    case TS_READY: return "ready";
    case TS_RUNNING: return "running";
    case TS_PARKED: return "waiting";
    default:
      return (t->flags & TF_CANCELLED) ? "cancelled"
             : (t->flags & TF_FAILED)  ? "failed"
                                       : "done";
  }
}

/* The task metatable carries a private marker at [1] (a light userdata
 * only C can make), so telling a task needs no registry lookup. */
static int is_task(lua_State *L, int idx) {
  int r;
  if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx))
    return 0;
  r = lua_rawgeti(L, -1, 1) == LUA_TLIGHTUSERDATA &&
      lua_touserdata(L, -1) == (void *)&task_mt_key;
  lua_pop(L, 2);
  return r;
}

tide_task *tide__check_task(lua_State *L, int idx) {
  if (!is_task(L, idx))
    luaL_typeerror(L, idx, TIDE_TASK_MT);
  return lua_touserdata(L, idx);
}

/* The name of the C function running at level 0, as the user called it
 * (through pcall: as it is in its module); pushed on the stack. */
static const char *own_name(lua_State *L) {
  lua_Debug ar;
  if (lua_getstack(L, 0, &ar) && lua_getinfo(L, "n", &ar) && ar.name)
    return lua_pushstring(L, ar.name);
  if (lua_getstack(L, 0, &ar) && lua_getinfo(L, "f", &ar)) {
    const char *name = tide__global_name(L, -1);
    lua_remove(L, -2);
    return name;
  }
  return lua_pushliteral(L, "this function");
}

/* Raises kind "invalid_state" at the user's call: the running C function
 * needs a loop and none runs (outside tide.run under lua5.4). */
int tide__raise_no_loop(lua_State *L) {
  return tide__raise_kind_at_user(L, "invalid_state", "%s: no loop is running "
                                  "(call it inside tide.run or from a task)",
                                  own_name(L));
}

/* Raises kind "invalid_state": fn was called outside any task. */
static int outside_task(lua_State *L, const char *fn) {
  return tide__raise_kind_at_user(L, "invalid_state",
                                  "%s must be called from inside a task (the "
                                  "main chunk under tide, or a function run "
                                  "by tide.run or tide.spawn)", fn);
}

/* core.need_task(fname): for tide's Lua modules, whose functions suspend
 * in a C call with another name (the message names what the user called). */
static int l_need_task(lua_State *L) {
  const char *fn = luaL_checkstring(L, 1);
  if (tide__rt(L)->current == NULL)
    return outside_task(L, fn);
  return 0;
}

/* The task running now; raises if there is none or if L cannot yield. */
tide_task *tide__current(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  if (rt->current == NULL)
    outside_task(L, own_name(L));
  if (rt->current->state != TS_RUNNING)
    tide__raise_at_user(L, "the task is not running here (a coroutine of a "
                           "task resumed outside it?)");
  if (!lua_isyieldable(L) || rt->unyieldable)
    tide__raise_at_user(L, "cannot suspend the task here: a C function "
                           "without continuation is on the stack (a "
                           "metamethod such as __tostring or __gc, a "
                           "table.sort comparator, a string.gsub callback, "
                           "or a C module's callback)");
  return rt->current;
}

/* [-0, +1, -] Pushes t's userdata. Only for tasks not done (anchored). */
void tide__push_task(lua_State *L, tide_task *t) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->s->tasks_ref);
  lua_rawgeti(L, -1, t->ref);
  lua_remove(L, -2);
}

/* A task's waiters (nil, one waiter, or an array) live in the sched's
 * waiter table at the task's slot, not in a user value of every task. */
static void push_waiters(lua_State *L, tide_task *t) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->s->waiters_ref);
  lua_rawgeti(L, -1, t->ref);
  lua_remove(L, -2);
}

/* [-1, +0, -] Pops the value on top into t's waiter slot. */
static void set_waiters(lua_State *L, tide_task *t) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->s->waiters_ref);
  lua_insert(L, -2);
  lua_rawseti(L, -2, t->ref);
  lua_pop(L, 1);
}

/* A done task's error: TUV_CO holds {error, traceback} after a failure and
 * the error itself after a cancellation. */
void tide__push_error(lua_State *L, tide_task *t, int ud) {
  if (lua_getiuservalue(L, ud, TUV_CO) == LUA_TTABLE && (t->flags & TF_FAILED)) {
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
  }
}

void tide__push_trace(lua_State *L, tide_task *t, int ud) {
  if (t->flags & TF_FAILED) {
    lua_getiuservalue(L, ud, TUV_CO);
    lua_rawgeti(L, -1, 2);
    lua_remove(L, -2);
  } else {
    lua_pushnil(L);
  }
}

/* The ready queue is one FIFO of tasks and handles (call_soon's, and
 * call_later's once due), as asyncio's _ready: work runs in the order it
 * became ready. A handle's entry is its pointer with bit 0 set; a task
 * whose sleep ended has an entry with bit 1 set first, which queues the
 * task itself when its turn comes: asyncio's sleep is a timer callback
 * that wakes the task, so callbacks due at the same time run before it. */
#define RQ_HANDLE ((uintptr_t)1)
#define RQ_DUE ((uintptr_t)2)

static void rq_push(tide_sched *s, void *e) {
  if (s->rq_len == s->rq_cap) { /* grow the ring, unrolling it */
    int cap = s->rq_cap ? s->rq_cap * 2 : 256, i;
    void **rq = tide__big(NULL, 0, sizeof(*rq) * (size_t)cap);
    if (rq == NULL)
      abort(); /* out of memory in the scheduler: nothing sane to do */
    for (i = 0; i < s->rq_len; i++)
      rq[i] = s->rq[(s->rq_head + i) & (s->rq_cap - 1)];
    tide__big(s->rq, sizeof(*rq) * (size_t)s->rq_cap, 0);
    s->rq = rq;
    s->rq_cap = cap;
    s->rq_head = 0;
  }
  s->rq[(s->rq_head + s->rq_len++) & (s->rq_cap - 1)] = e; /* cap: 2^k */
  if (!s->idle_on)
    tide__sched_update(s);
}

static void *rq_pop(tide_sched *s) {
  void *e = s->rq[s->rq_head];
  s->rq_head = (s->rq_head + 1) & (s->rq_cap - 1);
  if (--s->rq_len == 0 && s->rq_cap > 4096) { /* a burst is over */
    tide__big(s->rq, sizeof(*s->rq) * (size_t)s->rq_cap, 0);
    s->rq = NULL;
    s->rq_cap = s->rq_head = 0;
  }
  return e;
}

void tide__enqueue(tide_sched *s, tide_task *t) {
  if (t->flags & TF_QUEUED)
    return;
  t->flags |= TF_QUEUED;
  rq_push(s, t);
}

/* t's sleep is over: it is ready (resumed with true) and queued when its
 * entry comes up, unless something queued it first (a cancel). */
void tide__enqueue_due(tide_sched *s, tide_task *t) {
  t->flags |= TF_IMMEDIATE;
  t->state = TS_READY;
  rq_push(s, (void *)((uintptr_t)t | RQ_DUE));
}

void tide__enqueue_handle(tide_sched *s, tide_handle *h) {
  h->queued = 1;
  rq_push(s, (void *)((uintptr_t)h | RQ_HANDLE));
}

/* [-0, +1, m] Pushes t's name: the one given, or "Task-<id>". */
static void push_name(lua_State *L, tide_task *t, int ud) {
  ud = lua_absindex(L, ud);
  lua_getfield(L, LUA_REGISTRYINDEX, "tide.names");
  lua_pushvalue(L, ud);
  if (lua_rawget(L, -2) == LUA_TSTRING) {
    lua_remove(L, -2);
    return;
  }
  lua_pop(L, 2);
  lua_pushfstring(L, "Task-%d", (int)t->id);
}

/* [-0, +1, m] Pushes "file:line" of where the task at ud was spawned. */
static void push_site(lua_State *L, tide_task *t, int ud) {
  (void)ud;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &sources_key);
  lua_rawgeti(L, -1, t->src);
  if (t->src > 0 && lua_type(L, -1) == LUA_TSTRING)
    lua_pushfstring(L, "%s:%d", lua_tostring(L, -1), t->line);
  else
    lua_pushliteral(L, "?");
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/* Where a task was spawned is kept as a line and a small source id (the
 * registry's source table maps ids to chunk names and back), not as a
 * reference per task. [-1, +0] Pops the spawning function; the last one is
 * remembered, so a loop of spawns looks its source up once. */
static uint32_t source_id(lua_State *L, tide_runtime *rt, lua_Debug *ar) {
  uint32_t id;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->last_fn_ref);
  if (lua_rawequal(L, -1, -2)) { /* the same spawner as last time */
    lua_pop(L, 2);
    return rt->last_src_id;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, -1);
  lua_rawseti(L, LUA_REGISTRYINDEX, rt->last_fn_ref);
  lua_getinfo(L, ">S", ar); /* pops the function */
  rt->last_src_internal = tide__is_own_source(ar->source);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &sources_key);
  lua_pushstring(L, ar->short_src);
  if (lua_rawget(L, -2) == LUA_TNUMBER) {
    id = (uint32_t)lua_tointeger(L, -1);
    lua_pop(L, 2);
  } else {
    lua_pop(L, 1);
    id = (uint32_t)lua_rawlen(L, -1) + 1;
    lua_pushstring(L, ar->short_src);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, id);
    lua_pushinteger(L, id);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  }
  rt->last_src_id = id;
  return id;
}

/* Slots of the task table: a C stack of free ones, else the next new. */
static int take_slot(tide_sched *s) {
  return s->nfree > 0 ? s->free[--s->nfree] : ++s->maxref;
}

static void give_slot(lua_State *L, tide_sched *s, int slot) {
  if (s->nfree == s->capfree) {
    int cap = s->capfree ? 2 * s->capfree : 256;
    int *f = realloc(s->free, sizeof(*f) * (size_t)cap);
    if (f == NULL)
      luaL_error(L, "not enough memory");
    s->free = f;
    s->capfree = cap;
  }
  s->free[s->nfree++] = slot;
}

/* ---- spawn ------------------------------------------------------------ */

/* [-0, +1, m] Makes a task running the function at fidx with the nargs
 * values above it, queued to start on the next loop turn. */
tide_task *tide__spawn(lua_State *L, tide_sched *s, int fidx, int nargs) {
  tide_runtime *rt = s->rt;
  tide_task *t;
  lua_Debug ar;
  int ud, i;
  fidx = lua_absindex(L, fidx);
  t = lua_newuserdatauv(L, sizeof(*t),
                        nargs <= SPAWN_UV_ARGS ? TUV_N + nargs : TUV_N);
  ud = lua_gettop(L);
  memset(t, 0, sizeof(*t));
  t->s = s;
  t->tn.idx = -1;
  t->tn.kind = TN_TASK;
  t->id = ++rt->next_id;
  t->parent = rt->current ? rt->current->id : 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->task_mt_ref);
  lua_setmetatable(L, -2);
  /* The coroutine is made when the task first runs (see start()), so a
   * burst of spawns costs no stacks, and finished tasks' coroutines are
   * reused. Until then user value 1 holds fn, and up to SPAWN_UV_ARGS
   * arguments follow it in user values 2...; more go in {fn, args...}. */
  if (nargs <= SPAWN_UV_ARGS) {
    for (i = 1; i <= nargs; i++) {
      lua_pushvalue(L, fidx + i);
      lua_setiuservalue(L, ud, TUV_CO + i);
    }
    lua_pushvalue(L, fidx);
  } else {
    lua_createtable(L, nargs + 1, 0);
    for (i = 0; i <= nargs; i++) {
      lua_pushvalue(L, fidx + i);
      lua_rawseti(L, -2, i + 1);
    }
  }
  lua_setiuservalue(L, ud, TUV_CO);
  t->co = NULL;
  t->nargs = nargs;
  t->ref = take_slot(s);
  /* the spawn site: the innermost Lua caller outside tide's own Lua
   * modules (gather, wait_for... spawn for the user; pcall(tide.spawn, f)
   * names the pcall's line) */
  for (i = 1; lua_getstack(L, i, &ar) && lua_getinfo(L, "fl", &ar); i++) {
    uint32_t src = source_id(L, rt, &ar);
    if (i == 1 || ar.currentline > 0) {
      t->line = ar.currentline;
      t->src = src <= 0xffff ? (uint16_t)src : 0; /* past 65535 chunks: "?" */
    }
    if (ar.currentline > 0 && !rt->last_src_internal)
      break;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->tasks_ref);
  lua_pushvalue(L, ud);
  lua_rawseti(L, -2, t->ref);
  lua_pop(L, 1);
  s->ntasks++;
  t->state = TS_NEW;
  tide__enqueue(s, t);
  return t;
}

/* ---- finishing -------------------------------------------------------- */

/* Moves the live tasks to a new anchor table sized for them: a Lua table
 * never shrinks on its own, and a burst of 100k tasks must not pin its
 * slots for the rest of the run. */
static void compact(lua_State *L, tide_sched *s) {
  int slot = 0;
  luaL_checkstack(L, 8, NULL);
  int base = lua_gettop(L);
  int old = base + 1, new = base + 2, oldw = base + 3, neww = base + 4;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->tasks_ref);
  lua_createtable(L, s->ntasks + 4, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->waiters_ref);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, old)) {
    tide_task *t = lua_touserdata(L, -1);
    lua_rawgeti(L, oldw, t->ref); /* its waiters move with it */
    lua_rawseti(L, neww, slot + 1);
    t->ref = ++slot;
    lua_rawseti(L, new, slot);
  }
  lua_pushvalue(L, new);
  lua_rawseti(L, LUA_REGISTRYINDEX, s->tasks_ref);
  lua_pushvalue(L, neww);
  lua_rawseti(L, LUA_REGISTRYINDEX, s->waiters_ref);
  lua_settop(L, base);
  s->maxref = slot;
  s->nfree = 0;
}

static void fire_waiter(lua_State *L, int ud, int w) {
  if (lua_type(L, w) == LUA_TUSERDATA) {
    if (is_task(L, w)) {
      lua_pushboolean(L, 1);
      tide__wake(L, lua_touserdata(L, w), 1);
    } else {
      gather_child_done(L, w, ud);
    }
  } else if (lua_type(L, w) == LUA_TFUNCTION) { /* as asyncio: call_soon */
    lua_pushvalue(L, w);
    lua_pushvalue(L, ud);
    tide__call_soon_on(L, ((tide_task *)lua_touserdata(L, ud))->s, 1);
  }
}

/* Unanchors the finished task at ud and wakes or calls its waiters. */
/* Pushes t's entry in the re-raised table ({error, traceback}) and returns
 * 1, or pushes nothing and returns 0. */
static int push_reraised(lua_State *L, tide_task *t) {
  if (t->s->rt->nreraised == 0)
    return 0;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &reraised_key);
  if (lua_rawgetp(L, -1, t) != LUA_TTABLE) {
    lua_pop(L, 2);
    return 0;
  }
  lua_remove(L, -2);
  return 1;
}

/* If the error at e, which ended t, is the one an await raised again in
 * t, appends the awaited task's traceback to the message on top and
 * returns 1. */
static int append_reraised(lua_State *L, tide_task *t, int e) {
  int same;
  if (lua_isnil(L, e) || !push_reraised(L, t)) /* [msg, {err, tb}] */
    return 0;
  lua_rawgeti(L, -1, 1);
  same = lua_rawequal(L, -1, e);
  if (same) {
    lua_rawgeti(L, -2, 2);
    lua_pushfstring(L, "%s\nre-raised from the awaited task:\n%s",
                    lua_tostring(L, -4), luaL_optstring(L, -1, "?"));
    lua_replace(L, -5);
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return same;
}

/* Drops t's entry in the re-raised table (it ended). */
static void drop_reraised(lua_State *L, tide_task *t) {
  if (push_reraised(L, t)) {
    lua_pop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &reraised_key);
    lua_pushnil(L);
    lua_rawsetp(L, -2, t);
    lua_pop(L, 1);
    t->s->rt->nreraised--;
  }
}

static void finish_common(lua_State *L, tide_task *t, int ud) {
  tide_sched *s = t->s;
  int w;
  drop_reraised(L, t);
  tide__wl_unlink(t); /* its wait was cut short (a closed coroutine...) */
  tide__heap_remove(s, &t->tn);
  t->state = TS_DONE;
  t->co = NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->tasks_ref);
  lua_pushnil(L);
  lua_rawseti(L, -2, t->ref);
  lua_pop(L, 1);
  push_waiters(L, t);
  w = lua_gettop(L);
  if (!lua_isnil(L, w)) {
    lua_pushnil(L);
    set_waiters(L, t);
  }
  give_slot(L, s, t->ref);
  t->ref = 0;
  s->ntasks--;
  if (s->maxref > 4096 && s->ntasks < s->maxref / 8)
    compact(L, s);
  if (lua_isnil(L, w)) {
    lua_pop(L, 1);
    goto stop;
  }
  if (lua_type(L, w) == LUA_TTABLE) {
    lua_Integer i, n = luaL_len(L, w);
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, w, i);
      fire_waiter(L, ud, lua_gettop(L));
      lua_pop(L, 1);
    }
  } else {
    fire_waiter(L, ud, w);
  }
  lua_pop(L, 1);
stop:
  /* (outside uv_run the flag would stay set and make the next run return
   * at once, before its close callbacks) */
  if (!s->outside_uv &&
      (t == s->main || (s->main && s->main->state == TS_DONE && s->ntasks == 0)))
    uv_stop(s->loop);
}

/* Finished coroutines wait in a pool (a registry table) to
 * run the next task: a coroutine that returned is empty and resumable. */
#define POOL_MAX 256

static void recycle(lua_State *L, tide_runtime *rt, lua_State *co) {
  if (rt->npool >= POOL_MAX || lua_status(co) != LUA_OK || lua_gettop(co) != 0)
    return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->pool_ref);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_rawseti(L, -2, ++rt->npool);
  lua_pop(L, 1);
}

/* ---- the base of a task's coroutine ------------------------------------
 * task_body(fn, ...) calls fn(...) in a protected call, so that an error or
 * a cancellation unwinds inside the task: its <close> handlers run as part
 * of it (current_task() is it) and may suspend, as asyncio's finally and
 * __aexit__ may await. Then the error is raised again to end the
 * coroutine; its traceback was taken where it was raised (task_msgh). */

static void push_message(lua_State *L, int e);

static int task_msgh(lua_State *co) {
  tide_runtime *rt = tide__rt(co);
  if (!tide__err_is_kind(co, 1, "cancelled")) {
    static const char base[] = "\n\t[C]: in ?"; /* task_body's frame */
    size_t n, k = sizeof(base) - 1;
    const char *tb;
    push_message(co, 1);
    luaL_traceback(co, co, lua_tostring(co, -1), 1);
    tb = lua_tolstring(co, -1, &n);
    if (n >= k && memcmp(tb + n - k, base, k) == 0)
      lua_pushlstring(co, tb, n - k);
    lua_rawgeti(co, LUA_REGISTRYINDEX, rt->tb_ref);
    lua_pushthread(co);
    lua_pushvalue(co, -3);
    lua_rawset(co, -3);
  }
  lua_settop(co, 1);
  return 1;
}

/* A task function that returns (core.tailcall, f, args...) has f(args...)
 * called in its place, at the base of the task: the command's main task
 * runs the script so, and the script then sees the stack lua5.4 gives a
 * main chunk (one C frame below it; error levels and debug.getinfo
 * agree), which a Lua tail call would not (a "(...tail calls...)" line). */
static int task_body_k(lua_State *co, int status, lua_KContext ctx) {
  (void)ctx;
  if (status != LUA_OK && status != LUA_YIELD)
    return lua_error(co); /* its <close> handlers have run */
  if (lua_gettop(co) >= 3 && lua_touserdata(co, 2) == &tailcall_key) {
    lua_remove(co, 2);
    return task_body_k(co, lua_pcallk(co, lua_gettop(co) - 2, LUA_MULTRET, 1,
                                      0, task_body_k), 0);
  }
  return lua_gettop(co) - 1; /* fn's results, above task_msgh */
}

static int task_body(lua_State *co) {
  lua_pushcfunction(co, task_msgh);
  lua_insert(co, 1);
  return task_body_k(co, lua_pcallk(co, lua_gettop(co) - 2, LUA_MULTRET, 1, 0,
                                    task_body_k), 0);
}

/* [-0, +(0|1), -] Pushes the traceback task_msgh kept for co; 0 if none. */
static int take_traceback(lua_State *L, tide_runtime *rt, lua_State *co) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->tb_ref);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_pushvalue(L, -1);
  if (lua_rawget(L, -3) != LUA_TSTRING) {
    lua_pop(L, 3);
    return 0;
  }
  lua_insert(L, -3);
  lua_pushnil(L);
  lua_rawset(L, -3); /* forget it: the thread may run another task */
  lua_pop(L, 1);
  return 1;
}

/* First step of a task: gives it a coroutine with fn and its arguments. */
static void start(lua_State *L, tide_task *t, int ud) {
  tide_runtime *rt = t->s->rt;
  lua_State *co;
  int i;
  if (rt->npool > 0) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->pool_ref);
    lua_rawgeti(L, -1, rt->npool);
    lua_pushnil(L);
    lua_rawseti(L, -3, rt->npool--);
    lua_remove(L, -2);
    co = lua_tothread(L, -1);
  } else {
    co = lua_newthread(L);
  }
  luaL_checkstack(co, t->nargs + 2, "too many arguments to spawn");
  /* The task itself sits below fn on its coroutine: when fn returns, step()
   * finds it there instead of in the sched's task table, whose slot for a
   * task is, among 1M, a cache miss. */
  lua_pushvalue(L, ud);
  lua_xmove(L, co, 1);
  if (t->nargs <= SPAWN_UV_ARGS) {
    luaL_checkstack(L, t->nargs + 1, "too many arguments to spawn");
    for (i = 0; i <= t->nargs; i++)
      lua_getiuservalue(L, ud, TUV_CO + i);
    lua_xmove(L, co, t->nargs + 1);
    for (i = 1; i <= t->nargs; i++) { /* the coroutine holds them now */
      lua_pushnil(L);
      lua_setiuservalue(L, ud, TUV_CO + i);
    }
  } else if (lua_getiuservalue(L, ud, TUV_CO) == LUA_TTABLE) {
    luaL_checkstack(L, t->nargs + 1, "too many arguments to spawn");
    for (i = 1; i <= t->nargs + 1; i++)
      lua_rawgeti(L, -i, i);
    lua_xmove(L, co, t->nargs + 1);
    lua_pop(L, 1);
  } else {
    lua_xmove(L, co, 1);
  }
  lua_setiuservalue(L, ud, TUV_CO); /* the thread, anchored by the task */
  lua_pushcfunction(co, task_body); /* [ud, task_body, fn, args...] */
  lua_insert(co, 2);
  t->nargs++; /* fn is task_body's first argument */
  t->co = co;
}

/* The coroutine returned nres values: keep them, drop the coroutine. */
static void finish_ok(lua_State *L, tide_task *t, int ud, int nres) {
  lua_State *co = t->co;
  luaL_checkstack(L, nres + 2, "too many results");
  if (nres == 0) {
    lua_pushnil(L);
  } else if (nres == 1) {
    lua_xmove(co, L, 1);
  } else {
    int i, tb;
    lua_createtable(L, nres, 0);
    tb = lua_gettop(L);
    lua_xmove(co, L, nres);
    for (i = nres; i >= 1; i--)
      lua_rawseti(L, tb, i);
  }
  t->nres = nres;
  lua_setiuservalue(L, ud, TUV_CO);
  lua_settop(co, 0); /* the task, below its results (see start) */
  recycle(L, t->s->rt, co);
  finish_common(L, t, ud);
}

static int tostring_p(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* [-0, +1, -] A message for the error value at e: its tostring, run in
 * protected mode (a __tostring that raises must not unwind the loop). */
static void push_message(lua_State *L, int e) {
  if (lua_type(L, e) == LUA_TSTRING || lua_type(L, e) == LUA_TNUMBER) {
    lua_pushvalue(L, e);
    lua_tostring(L, -1);
    return;
  }
  /* as lua5.4's message handler: __tostring, or say what the value is */
  if (luaL_getmetafield(L, e, "__tostring") != LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushcfunction(L, tostring_p);
    lua_pushvalue(L, e);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
      return;
    lua_pop(L, 1);
  }
  lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, e));
}

/* A coroutine that died by error has not closed its <close> variables
 * (Lua unwinds only up to a pcall): close them now, in protected mode, so a
 * guard held by a failed or cancelled task is released. An error raised by
 * a __close is reported; the task keeps its first error. The reset thread
 * is empty again and goes back to the pool. */
static void close_thread(lua_State *L, tide_task *t, int ud, lua_State *co) {
  int st;
  tide__push_error(L, t, ud); /* __close handlers get the error */
  lua_xmove(L, co, 1);
#if LUA_VERSION_RELEASE_NUM >= 50406
  st = lua_closethread(co, L);
#else
  st = lua_resetthread(co);
#endif
  if (st != LUA_OK && lua_gettop(co) > 0) {
    lua_xmove(co, L, 1);        /* what the closing left */
    tide__push_error(L, t, ud); /* the task's own error */
    if (!lua_rawequal(L, -1, -2)) {
      const char *why;
      push_message(L, lua_gettop(L) - 1);
      why = lua_tostring(L, -1);
      push_name(L, t, ud);
      fprintf(stderr, "tide: error in a __close handler of task '%s' "
                      "while it unwound: %s\n", lua_tostring(L, -1), why);
      fflush(stderr);
      lua_pop(L, 2); /* the message and the name */
    }
    lua_pop(L, 2);
  }
  lua_settop(co, 0);
  /* Not after the instruction limit's hook raised: Lua 5.4.4 leaves such
   * a thread with hooks disabled (allowhook), and resetting it does not
   * restore them, so the next task on it would run without the limit. */
  if (!t->s->rt->instruction_limit)
    recycle(L, t->s->rt, co);
}

/* The traceback on top without its last lines when they are tide's own
 * Lua frames (tide.main running the command's -e chunks and script: lua5.4
 * shows "[C]: in ?" there). */
static void drop_own_frames(lua_State *L) {
  size_t n;
  const char *tb = lua_tolstring(L, -1, &n), *end = tb + n, *nl;
  for (;;) {
    for (nl = end; nl > tb && nl[-1] != '\n'; nl--)
      ;
    if (nl == tb || strncmp(nl, "\tlua/tide/", 10) != 0)
      break;
    end = nl - 1; /* the line and its "\n" */
  }
  if (end != tb + n) {
    lua_pushlstring(L, tb, (size_t)(end - tb));
    lua_replace(L, -2);
  }
}

/* The coroutine raised: keep the error and, unless it is a cancellation,
 * a traceback taken from the dead coroutine, naming the task and where it
 * was spawned. */
static void finish_err(lua_State *L, tide_task *t, int ud) {
  lua_State *co = t->co;
  int e;
  if (co)
    lua_xmove(co, L, 1);
  else
    lua_getiuservalue(L, ud, TUV_CO); /* cancelled before it started */
  e = lua_gettop(L);
  if (tide__err_is_kind(L, e, "cancelled")) {
    t->flags |= TF_CANCELLED;
  } else {
    t->flags |= TF_FAILED;
    luaL_checkstack(L, 10, NULL);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->s->rt->task_gcmt_ref);
    lua_setmetatable(L, ud); /* reported when collected unless retrieved */
    if (co == NULL || !take_traceback(L, t->s->rt, co)) {
      push_message(L, e);
      luaL_traceback(L, co ? co : L, lua_tostring(L, -1), co ? 0 : 1);
      lua_remove(L, -2);
    }
    if (t->parent == 0)
      drop_own_frames(L);
    push_name(L, t, ud);
    push_site(L, t, ud);
    if (t->parent == 0) /* a run's main task: nobody spawned it */
      lua_pushfstring(L, "%s\n\tin task '%s'", lua_tostring(L, -3),
                      lua_tostring(L, -2));
    else if (t->s->main && t->parent == t->s->main->id) /* its name */
      lua_pushfstring(L, "%s\n\tin task '%s' (spawned at %s by task 'main')",
                      lua_tostring(L, -3), lua_tostring(L, -2),
                      lua_tostring(L, -1));
    else
      lua_pushfstring(L, "%s\n\tin task '%s' (spawned at %s by task %d)",
                      lua_tostring(L, -3), lua_tostring(L, -2),
                      lua_tostring(L, -1), (int)t->parent);
    lua_replace(L, -4);
    lua_pop(L, 2);
    /* An error re-raised by await, or from a to_thread worker (which
     * sent its traceback along): show where it came from, too. */
    if (!append_reraised(L, t, e) && tide__err_is_kind(L, e, "thread")) {
      if (lua_getfield(L, e, "traceback") == LUA_TSTRING) {
        lua_pushfstring(L, "%s\nre-raised from the to_thread worker:\n%s",
                        lua_tostring(L, -2), lua_tostring(L, -1));
        lua_replace(L, -3);
      }
      lua_pop(L, 1);
    }
    if (tide__iserror(L, e)) { /* tide errors carry their traceback */
      lua_pushvalue(L, -1);
      lua_setfield(L, e, "traceback");
    }
    lua_createtable(L, 2, 0); /* {error, traceback} */
    lua_insert(L, e);
    lua_rawseti(L, e, 2);
    lua_rawseti(L, e, 1);
  }
  lua_setiuservalue(L, ud, TUV_CO);
  if (co)
    close_thread(L, t, ud, co);
  finish_common(L, t, ud);
}

/* ---- the step --------------------------------------------------------- */

/* [-0, +1, -] Pops the pending cancel error of the task at ud. */
static void take_pending(lua_State *L, tide_sched *s, int ud) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->pending_ref);
  lua_pushvalue(L, ud);
  lua_rawget(L, -2);
  lua_pushvalue(L, ud);
  lua_pushnil(L);
  lua_rawset(L, -4);
  lua_remove(L, -2);
}

/* [-0, +1, m] Pushes "file:line" where co is, in the user's code (a task
 * waiting in Lock:acquire is at the caller's line, not in sync.lua), else
 * its innermost Lua frame; nil if it has none. */
static void push_where(lua_State *L, lua_State *co) {
  lua_Debug ar;
  if (tide__user_frame(co, 0, 1, &ar))
    lua_pushfstring(L, "%s:%d", ar.short_src, ar.currentline);
  else
    lua_pushnil(L);
}

static void warn_slow(lua_State *L, tide_task *t, int ud, uint64_t ns) {
  if (t->co) {
    lua_pushliteral(L, "now at ");
    push_where(L, t->co);
  } else { /* the step ended the task */
    lua_pushliteral(L, "it ended; spawned at ");
    push_site(L, t, ud);
  }
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushliteral(L, "?");
  }
  lua_concat(L, 2);
  push_name(L, t, ud);
  fprintf(stderr, "tide: warning: task '%s' held the loop for %.0f ms (%s)\n",
          lua_tostring(L, -1), (double)ns / 1e6, lua_tostring(L, -2));
  lua_pop(L, 2);
}

/* The instruction cap (tide_options.instruction_limit): a task step that
 * runs that many instructions without suspending fails with kind "limit".
 * The count hook fires every LIMIT_QUANTUM instructions of any thread: the
 * task's coroutine and those it resumes (which inherit the hook) count
 * against one budget per step, so nesting coroutines does not multiply
 * it. */
#define LIMIT_QUANTUM 1000
/* A coroutine the task resumes counts in smaller steps, and each resume is
 * charged one step up front: one that ends before its hook fires would
 * else run uncounted (a loop resuming short coroutines ran 28x the cap). */
#define LIMIT_CHILD_QUANTUM 100

static void limit_hook(lua_State *L, lua_Debug *ar);

/* Raises the limit in L, sticky: from now on every instruction of L fails
 * in this step, so a pcall in a loop cannot swallow the limit. */
static void limit_raise(lua_State *L) {
  lua_sethook(L, limit_hook, LUA_MASKCOUNT, 1);
  tide__err_raise(L, "limit", "the task ran %I instructions without "
                  "suspending (the runtime's instruction limit)",
                  (LUA_INTEGER)tide__rt(L)->instruction_limit);
}

static void limit_hook(lua_State *L, lua_Debug *ar) {
  tide_runtime *rt = tide__rt(L);
  (void)ar;
  rt->limit_used += (unsigned long)lua_gethookcount(L);
  if (rt->limit_used >= rt->instruction_limit)
    limit_raise(L);
}

/* Before coroutine.resume (coroutine.c) resumes co in a runtime with an
 * instruction limit: charges the resume LIMIT_CHILD_QUANTUM, then counts
 * co's instructions from zero in steps of that size, so whatever co runs
 * is counted, at most one step too much. */
void tide__limit_child(lua_State *L, lua_State *co) {
  tide_runtime *rt = tide__rt(L);
  if (rt->instruction_limit == 0 || co == L)
    return;
  rt->limit_used += LIMIT_CHILD_QUANTUM;
  if (rt->limit_used >= rt->instruction_limit)
    limit_raise(L);
  lua_sethook(co, limit_hook, LUA_MASKCOUNT,
              lua_gethookcount(co) == 1 ? 1 : LIMIT_CHILD_QUANTUM);
}

/* As that resume returns: past the step's budget the resumer fails too,
 * and so on up to the task (a coroutine that failed of it would else be
 * resumed again by a loop, each new one counting a while before it
 * fails). */
void tide__limit_after(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  if (rt->instruction_limit && rt->limit_used >= rt->instruction_limit)
    limit_raise(L);
}

/* Starts a step's count on L (a task's coroutine, or a callback's state). */
void tide__limit_arm(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  rt->limit_used = 0;
  lua_sethook(L, limit_hook, LUA_MASKCOUNT,
              rt->instruction_limit < LIMIT_QUANTUM ? (int)rt->instruction_limit
                                                    : LIMIT_QUANTUM);
}

static void step(tide_sched *s, tide_task *t) {
  tide_runtime *rt = s->rt;
  lua_State *L = s->L, *co;
  tide_task *prev = rt->current;
  uint64_t t0 = 0;
  int ud = 0, st, nres = 0, top = lua_gettop(L);
  if (t->state == TS_DONE)
    return;
  luaL_checkstack(L, 40, NULL); /* finishing and reporting need room */
  /* The task's userdata is pushed only when needed (start, a pending
   * cancel, the end): a plain resume does not touch the task table. */
#define UD() (ud ? ud : (tide__push_task(L, t), ud = lua_gettop(L)))
  if (t->state == TS_NEW) {
    if (t->flags & TF_CANCEL_QUEUED) {
      finish_err(L, t, UD()); /* cancelled before it started: never runs */
      lua_settop(L, top);
      return;
    }
    start(L, t, UD());
  }
  co = t->co;
  if (t->flags & TF_CANCEL_PENDING) { /* asked while it was running */
    int woken = t->nargs > 0 || (t->flags & TF_IMMEDIATE);
    tide__heap_remove(s, &t->tn); /* it may have parked in a sleep */
    take_pending(L, s, UD());
    lua_pop(co, t->nargs);
    lua_pushboolean(co, 0);
    lua_xmove(L, co, 1);
    lua_pushboolean(co, woken);
    t->nargs = 3;
  } else if (t->flags & TF_IMMEDIATE) {
    lua_pushboolean(co, 1);
    t->nargs = 1;
  }
  t->flags &= ~(TF_CANCEL_PENDING | TF_CANCEL_QUEUED | TF_IMMEDIATE |
                TF_LUA_PARK);
  t->state = TS_RUNNING;
  rt->current = t;
  if (rt->instruction_limit) /* counts anew at every step */
    tide__limit_arm(co);
  if (rt->debug) {
    UD();
    t0 = uv_hrtime();
  }
  st = lua_resume(co, L, t->nargs, &nres);
  rt->current = prev;
  t->nargs = 0;
  if (st == LUA_YIELD) {
    int ours = nres >= 1 && lua_touserdata(co, -1) == tide__sentinel();
    lua_pop(co, nres);
    if (!ours) { /* a bare coroutine.yield in a task: acts as sleep(0) */
      t->state = TS_READY;
      t->flags |= TF_IMMEDIATE;
      tide__enqueue(s, t);
    }
  } else if (st == LUA_OK) { /* co: the task (see start), then results */
    if (!ud && lua_checkstack(co, 1)) {
      lua_pushvalue(co, 1);
      lua_xmove(co, L, 1);
      ud = lua_gettop(L);
    }
    if (t->flags & TF_CANCEL_PENDING) {
      /* it asked for its own cancellation and returned without suspending
       * again: it ends cancelled (asyncio's _must_cancel), results dropped */
      t->flags &= ~TF_CANCEL_PENDING;
      lua_settop(co, 0);
      take_pending(L, s, UD());
      lua_xmove(L, co, 1);
      finish_err(L, t, UD());
    } else {
      finish_ok(L, t, UD(), nres - 1);
    }
  } else {
    finish_err(L, t, UD());
  }
  if (rt->debug) {
    uint64_t ns = uv_hrtime() - t0;
    if (ns > 100000000u)
      warn_slow(L, t, ud, ns);
  }
#undef UD
  lua_settop(L, top);
}

/* Runs the ready queue in rounds: each round runs the tasks ready at its
 * start (FIFO), and tasks made ready meanwhile run in the next round. The
 * rounds go on in this loop turn until the queue is empty or a budget is
 * spent (steps, or 10 ms of wall time, checked between rounds), so
 * ping-ponging tasks do not pay a poll syscall per switch, and tasks that
 * keep yielding (a loop of work chunks with sleep(0) between) still let
 * I/O and signals in within milliseconds. */
#define STEP_BUDGET 4096
#define TIME_BUDGET_NS 10000000u

/* Runs the entries ready now (one asyncio loop iteration); those made
 * ready meanwhile wait for the next round. Returns how many ran. */
int tide__run_round(tide_sched *s) {
  int n = s->rq_len, ran = n;
  while (n-- > 0 && s->rq_len > 0) {
    uintptr_t e = (uintptr_t)rq_pop(s);
    if (e & RQ_HANDLE) {
      tide__handle_run(s, (tide_handle *)(e & ~RQ_HANDLE));
    } else if (e & RQ_DUE) {
      tide_task *t = (tide_task *)(e & ~RQ_DUE);
      if (t->state == TS_READY)
        tide__enqueue(s, t); /* a no-op if a cancel queued it already */
    } else {
      tide_task *t = (tide_task *)e;
      t->flags &= ~TF_QUEUED;
      step(s, t);
    }
  }
  return ran;
}

void tide__run_ready(tide_sched *s) {
  int steps = 0;
  uint64_t start = uv_hrtime();
  while (s->rq_len > 0 && steps < STEP_BUDGET &&
         (steps == 0 || uv_hrtime() - start < TIME_BUDGET_NS)) {
    /* a round is a loop iteration as far as tasks can tell: timers due
     * by now join the queue's end first (call_soon then sleep(0) runs it) */
    if (steps > 0 && s->nheap > 0 && s->heap[0].when <= tide__now(s))
      tide__fire_due(s);
    steps += tide__run_round(s);
    /* the run stops one round after the one its main task ended in, as
     * asyncio's does (main's done callback, queued then, stops the loop
     * when its turn comes): what is ready later meets the shutdown */
    if (s->main && s->main->state == TS_DONE && s->rounds_after_main++ > 0)
      break;
  }
}

/* Empties the ready queue without running it: tasks stay as they are,
 * handles count as cancelled (their anchors go with the sched's). */
void tide__rq_drop(tide_sched *s) {
  while (s->rq_len > 0) {
    uintptr_t e = (uintptr_t)rq_pop(s);
    if (e & RQ_HANDLE) {
      tide_handle *h = (tide_handle *)(e & ~RQ_HANDLE);
      h->queued = 0;
      h->cancelled = 1;
    } else if (!(e & RQ_DUE)) {
      ((tide_task *)e)->flags &= ~TF_QUEUED;
    }
  }
}

/* Tasks still there when their run closes (they swallowed cancellation
 * and wait on something nobody will do) end here as cancelled, without
 * running again: out of every list, with no pointer left to their sched. */
void tide__abandon_all(tide_sched *s) {
  lua_State *L = s->L;
  luaL_checkstack(L, 6, NULL);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->tasks_ref);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    tide_task *t = lua_touserdata(L, -1);
    tide__wl_unlink(t);
    tide__heap_remove(s, &t->tn);
    t->state = TS_DONE;
    t->co = NULL;
    t->ref = 0;
    t->flags |= TF_CANCELLED | TF_RETRIEVED;
    t->flags &= ~(TF_FAILED | TF_QUEUED);
    tide__err_push(L, "cancelled", "abandoned: still waiting when its run ended");
    lua_setiuservalue(L, -2, TUV_CO);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  s->ntasks = 0;
  tide__rq_drop(s);
  tide__abandon_pending(s);
}

/* ---- park / wake / cancel --------------------------------------------- */

/* Suspends the running task (see the file comment). Called as the tail of a
 * C function: `return tide__park(L, tide__current(L), ctx, k);`, with the
 * task the caller got from tide__current. */
int tide__park(lua_State *L, tide_task *t, lua_KContext ctx, lua_KFunction k) {
  if (t->flags & (TF_CANCEL_PENDING | TF_IMMEDIATE)) {
    t->state = TS_READY; /* step delivers the pending cancel or the yield */
    tide__enqueue(t->s, t);
  } else {
    t->state = TS_PARKED;
  }
  lua_pushlightuserdata(L, tide__sentinel());
  return lua_yieldk(L, 1, ctx, k);
}

/* Pops nvals values; if t is parked, they become what its park returns and
 * t is queued. Returns whether t was woken. */
int tide__wake(lua_State *L, tide_task *t, int nvals) {
  if (t->state != TS_PARKED) {
    lua_pop(L, nvals);
    return 0;
  }
  if (!lua_checkstack(t->co, nvals + 3)) { /* too many values to hand over */
    lua_pop(L, nvals);
    return 0;
  }
  tide__heap_remove(t->s, &t->tn);
  lua_xmove(L, t->co, nvals);
  t->nargs = nvals;
  t->state = TS_READY;
  tide__enqueue(t->s, t);
  return 1;
}

/* Asks the task at tidx to cancel with the error at erridx. Returns 0 if
 * it is done already. A parked or ready task gets the error as the values
 * its park returns (false, err, woken), pushed on its coroutine now; only
 * a running task (cancelling itself) keeps it in the sched's pending table
 * until it parks. */
/* Adds d to the count of cancels asked of the task at tidx, if it is
 * counted (see l_cancelling); never below 0. */
static void count_cancel(lua_State *L, tide_sched *s, int tidx, int d) {
  lua_Integer n;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->counts_ref);
  lua_pushvalue(L, tidx);
  if (lua_rawget(L, -2) == LUA_TNUMBER && (n = lua_tointeger(L, -1) + d) >= 0) {
    lua_pushvalue(L, tidx);
    lua_pushinteger(L, n);
    lua_rawset(L, -4);
  }
  lua_pop(L, 2);
}

/* A second cancel of a task whose first comes to it as it resumes from a
 * wake (a result, sleep(0)), or that cancelled itself and still runs (or
 * yielded in sleep(0)): the new error (at erridx) replaces the first, as
 * asyncio's _cancel_message does then; the first stays when it cancelled
 * what the task waited on. (A deadline's or a task group's own error, once
 * replaced, ends their scope the way the new cancel would have anyway: the
 * scope raises that cancel.) */
/* The cancel error that waits for the task at tidx (asked while it ran)
 * becomes the value at vidx. */
static void set_pending(lua_State *L, tide_sched *s, int tidx, int vidx) {
  vidx = lua_absindex(L, vidx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->pending_ref);
  lua_pushvalue(L, tidx);
  lua_pushvalue(L, vidx);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static void last_message_wins(lua_State *L, tide_task *t, int tidx, int erridx) {
  lua_State *co = t->co;
  if (t->state == TS_READY && (t->flags & TF_CANCEL_QUEUED) && co && t->nargs == 3 &&
      lua_toboolean(co, -1)) {
    lua_pushvalue(L, erridx);
    lua_xmove(L, co, 1);
    lua_replace(co, -3);
  } else if ((t->flags & TF_CANCEL_PENDING) &&
             (t->state == TS_RUNNING || (t->flags & TF_IMMEDIATE))) {
    set_pending(L, t->s, tidx, erridx);
  }
}

int tide__cancel(lua_State *L, int tidx, int erridx) {
  tide_task *t = lua_touserdata(L, tidx);
  tide_sched *s = t->s;
  lua_State *co = t->co;
  int woken;
  if (t->state == TS_DONE)
    return 0;
  tidx = lua_absindex(L, tidx);
  erridx = lua_absindex(L, erridx);
  count_cancel(L, s, tidx, 1);
  last_message_wins(L, t, tidx, erridx);
  if (t->state == TS_NEW && (t->flags & TF_CANCEL_QUEUED)) {
    /* not started: the last request's error is the one it ends with, as
     * asyncio's _cancel_message */
    lua_pushvalue(L, erridx);
    lua_setiuservalue(L, tidx, TUV_CO);
    return 1;
  }
  if (t->flags & (TF_CANCEL_PENDING | TF_CANCEL_QUEUED)) {
    /* the first request's error stands; a later one is remembered (the
     * first of them), so that a deadline's own cancel does not swallow it
     * (asyncio counts requests: Timeout raises TimeoutError only if no
     * other cancel was asked) */
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->extra_ref);
    lua_pushvalue(L, tidx);
    if (lua_rawget(L, -2) == LUA_TNIL) {
      lua_pushvalue(L, tidx);
      lua_pushvalue(L, erridx);
      lua_rawset(L, -4);
    }
    lua_pop(L, 2);
    return 1;
  }
  switch (t->state) {
    case TS_NEW: /* it will never run: the error replaces fn */
      lua_pushvalue(L, erridx);
      lua_setiuservalue(L, tidx, TUV_CO);
      t->flags |= TF_CANCEL_QUEUED;
      break;
    case TS_PARKED:
    case TS_READY:
      luaL_checkstack(co, 4, "cancelling a task");
      woken = t->state == TS_READY && (t->nargs > 0 || (t->flags & TF_IMMEDIATE));
      tide__heap_remove(s, &t->tn);
      lua_pop(co, t->nargs);
      lua_pushboolean(co, 0);
      lua_pushvalue(L, erridx);
      lua_xmove(L, co, 1);
      lua_pushboolean(co, woken);
      t->nargs = 3;
      t->flags = (unsigned char)((t->flags & ~TF_IMMEDIATE) | TF_CANCEL_QUEUED);
      t->state = TS_READY;
      tide__enqueue(s, t);
      break;
    default: /* running: it is cancelling itself */
      set_pending(L, s, tidx, erridx);
      t->flags |= TF_CANCEL_PENDING;
  }
  return 1;
}

/* ---- waiters (user value 2: nil, one waiter, or an array) -------------- */

/* Adds the value on top (a task or a function) as a waiter of the task at
 * ud; pops it. */
static void waiters_add(lua_State *L, int ud) {
  tide_task *t = lua_touserdata(L, ud);
  switch (push_waiters(L, t), lua_type(L, -1)) {
    case LUA_TNIL:
      lua_pop(L, 1);
      set_waiters(L, t);
      return;
    case LUA_TTABLE:
      lua_insert(L, -2);
      lua_rawseti(L, -2, luaL_len(L, -2) + 1);
      lua_pop(L, 1);
      return;
    default:
      lua_createtable(L, 4, 0);
      lua_insert(L, -2);
      lua_rawseti(L, -2, 1);
      lua_insert(L, -2);
      lua_rawseti(L, -2, 2);
      set_waiters(L, t);
  }
}

/* Removes the first waiter of the task at ud equal to the value at v. */
static int waiters_remove(lua_State *L, int ud, int v) {
  tide_task *t = lua_touserdata(L, ud);
  int found = 0;
  if (t->state == TS_DONE)
    return 0; /* its waiters have been fired and forgotten */
  v = lua_absindex(L, v);
  switch (push_waiters(L, t), lua_type(L, -1)) {
    case LUA_TTABLE: {
      lua_Integer i, n = luaL_len(L, -1);
      for (i = 1; i <= n && !found; i++) {
        lua_rawgeti(L, -1, i);
        found = lua_rawequal(L, -1, v);
        lua_pop(L, 1);
        if (found) {
          for (; i < n; i++) {
            lua_rawgeti(L, -1, i + 1);
            lua_rawseti(L, -2, i);
          }
          lua_pushnil(L);
          lua_rawseti(L, -2, n);
        }
      }
      break;
    }
    case LUA_TNIL:
      break;
    default:
      if (lua_rawequal(L, -1, v)) {
        found = 1;
        lua_pushnil(L);
        set_waiters(L, t);
      }
  }
  lua_pop(L, 1);
  return found;
}

/* ---- results ---------------------------------------------------------- */

/* A failed task's error about to be raised again in the running task,
 * which awaits it (await, gather): remembered for that task, so that its
 * traceback, if that very error ends it, shows the failed task's too. One
 * entry per awaiting task, dropped when it ends. */
static void remember_reraise(lua_State *L, tide_task *t, int ud) {
  tide_runtime *rt = tide__rt(L);
  tide_task *cur = rt->current;
  if (!(t->flags & TF_FAILED) || cur == NULL)
    return;
  ud = lua_absindex(L, ud);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &reraised_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &reraised_key);
  }
  if (lua_rawgetp(L, -1, cur) == LUA_TNIL)
    rt->nreraised++;
  lua_pop(L, 1);
  lua_createtable(L, 2, 0);
  tide__push_error(L, t, ud);
  lua_rawseti(L, -2, 1);
  tide__push_trace(L, t, ud);
  lua_rawseti(L, -2, 2);
  lua_rawsetp(L, -2, cur);
  lua_pop(L, 1);
}

/* Pushes the done task's results, or raises its error as it was raised. */
static int push_results(lua_State *L, tide_task *t, int ud) {
  int n;
  remember_reraise(L, t, ud);
  if (tide__push_outcome(L, t, ud, &n) != LUA_OK)
    return lua_error(L);
  return n;
}

/* For C callers: pushes a done task's results (LUA_OK, *n of them) or its
 * error (LUA_ERRRUN, *n = 1), without raising. */
int tide__push_outcome(lua_State *L, tide_task *t, int ud, int *n) {
  ud = lua_absindex(L, ud);
  if (t->flags & (TF_FAILED | TF_CANCELLED)) {
    t->flags |= TF_RETRIEVED;
    tide__push_error(L, t, ud);
    *n = 1;
    return LUA_ERRRUN;
  }
  *n = t->nres;
  if (t->nres == 0)
    return LUA_OK;
  lua_getiuservalue(L, ud, TUV_CO);
  if (t->nres > 1) {
    int i, tb = lua_gettop(L);
    luaL_checkstack(L, t->nres, "too many results");
    for (i = 1; i <= t->nres; i++)
      lua_rawgeti(L, tb, i);
    lua_remove(L, tb);
  }
  return LUA_OK;
}

static int await_k(lua_State *L, int status, lua_KContext ctx) {
  tide_task *t = lua_touserdata(L, 1);
  (void)status;
  (void)ctx;
  if (!lua_toboolean(L, 2) && t->state != TS_DONE &&
      !tide__err_is_kind(L, 3, "deadlock")) {
    /* cancelled while waiting: as in asyncio, the awaited task is
     * cancelled too, and the await ends as that task ends (shield() is
     * the way to keep it running). A deadlock report to the main task is
     * not a request to stop what it waits for. */
    tide__cancel(L, 1, 3);
    lua_settop(L, 1);
    return tide__park(L, tide__rt(L)->current, 0, await_k);
  }
  if (!lua_toboolean(L, 2)) { /* cancelled as the task ended */
    tide_task *me = tide__rt(L)->current;
    tide__push_task(L, me);
    waiters_remove(L, 1, -1);
    lua_pushvalue(L, 3);
    return lua_error(L);
  }
  return push_results(L, t, 1);
}

/* The caller (a task of t's loop, not t) becomes a waiter of the task t
 * at 1, woken straight from t's end, and parks with k. */
static int wait_task(lua_State *L, tide_task *t, lua_KFunction k) {
  tide_task *me = tide__current(L);
  if (me == t)
    return tide__raise_kind_at_user(L, "invalid_state", "a task cannot await itself");
  if (t->s != me->s)
    return tide__raise_kind_at_user(L, "invalid_state",
                                    "cannot await a task of another tide.run loop");
  tide__push_task(L, me);
  waiters_add(L, 1);
  return tide__park(L, me, 0, k);
}

/* t:await() -> the task's results, or raises its error */
static int t_await(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  lua_settop(L, 1);
  if (t->state == TS_DONE)
    return push_results(L, t, 1);
  return wait_task(L, t, await_k);
}

static int join_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (lua_toboolean(L, 2))
    return 0;
  tide__push_task(L, tide__rt(L)->current); /* cancelled: stop waiting */
  waiters_remove(L, 1, -1);
  lua_pushvalue(L, 3);
  return 1;
}

/* core.join(t) -> nothing once t is done, or the error that cancelled the
 * caller meanwhile (t goes on). The caller waits as t:await()'s do (a done
 * callback would take one more turn). */
static int l_join(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  lua_settop(L, 1);
  if (t->state == TS_DONE)
    return 0;
  return wait_task(L, t, join_k);
}

/* t:result() -> results without suspending; error if not done */
static int t_result(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  lua_settop(L, 1);
  if (t->state != TS_DONE)
    return tide__err_raise(L, "invalid_state", "task is not done yet");
  return push_results(L, t, 1);
}

/* t:error() -> the error value the task ended with, or nil */
static int t_error(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  if (t->state != TS_DONE)
    return tide__err_raise(L, "invalid_state", "task is not done yet");
  if (!(t->flags & (TF_FAILED | TF_CANCELLED))) {
    lua_pushnil(L); /* one value, as asyncio's exception() gives None */
    return 1;
  }
  t->flags |= TF_RETRIEVED;
  tide__push_error(L, t, 1);
  return 1;
}

/* t:cancel([msg]) -> whether the request was made (false once done) */
static int t_cancel(lua_State *L) {
  tide__check_task(L, 1);
  if (tide__iserror(L, 2)) /* internal: a prepared error (timeouts) */
    lua_settop(L, 2);
  else
    tide__err_push(L, "cancelled", "%s", luaL_optstring(L, 2, "task cancelled"));
  lua_pushboolean(L, tide__cancel(L, 1, -1));
  return 1;
}

static int t_done(lua_State *L) {
  lua_pushboolean(L, tide__check_task(L, 1)->state == TS_DONE);
  return 1;
}

static int t_cancelled(lua_State *L) {
  lua_pushboolean(L, (tide__check_task(L, 1)->flags & TF_CANCELLED) != 0);
  return 1;
}

static int t_failed(lua_State *L) {
  lua_pushboolean(L, (tide__check_task(L, 1)->flags & TF_FAILED) != 0);
  return 1;
}

/* t:traceback() -> the failed task's traceback, or where it is now */
static int t_traceback(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  if (t->flags & TF_FAILED)
    tide__push_trace(L, t, 1);
  else if (t->co && t->co != L && t->state != TS_RUNNING)
    luaL_traceback(L, t->co, NULL, 0);
  else if (t->co)
    luaL_traceback(L, L, NULL, 1);
  else
    lua_pushnil(L);
  return 1;
}

/* t:add_done_callback(fn): fn(t) runs when t is done (soon, if it is). */
static int t_add_done_callback(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  if (t->state == TS_DONE) { /* call_soon(fn, t) */
    lua_getfield(L, lua_upvalueindex(1), "call_soon");
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 1);
    lua_call(L, 2, 0);
    return 0;
  }
  waiters_add(L, 1);
  return 0;
}

/* t:remove_done_callback(cb) -> how many registrations of cb it removed
 * (all of them, as asyncio's) */
static int t_remove_done_callback(lua_State *L) {
  lua_Integer n = 0;
  tide__check_task(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  while (waiters_remove(L, 1, 2))
    n++;
  lua_pushinteger(L, n);
  return 1;
}

static int t_index(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  const char *k;
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
    return 1; /* a method */
  k = lua_tostring(L, 2);
  if (k && strcmp(k, "name") == 0) {
    push_name(L, t, 1);
    return 1;
  }
  if (k && strcmp(k, "id") == 0) {
    lua_pushinteger(L, t->id);
    return 1;
  }
  return 1; /* nil */
}

static int t_newindex(lua_State *L) {
  tide__check_task(L, 1);
  luaL_argcheck(L, lua_type(L, 2) == LUA_TSTRING &&
                     strcmp(lua_tostring(L, 2), "name") == 0,
                2, "only 'name' can be set on a task");
  luaL_checkstring(L, 3);
  lua_getfield(L, LUA_REGISTRYINDEX, "tide.names");
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  return 0;
}

static int t_tostring(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  push_name(L, t, 1);
  lua_pushfstring(L, "tide.Task<%s, %s>", lua_tostring(L, -1), state_name(t));
  return 1;
}

/* __gc: a failure nobody looked at is reported once, with its traceback. */
static int t_gc(lua_State *L) {
  tide_task *t;
  if (!is_task(L, 1))
    return 0;
  t = lua_touserdata(L, 1);
  if ((t->flags & TF_FAILED) && !(t->flags & TF_RETRIEVED)) {
    t->flags |= TF_RETRIEVED;
    tide__push_trace(L, t, 1);
    fprintf(stderr, "tide: error in a task that nobody awaited:\n%s\n",
            lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    fflush(stderr);
  }
  return 0;
}

/* __close: a task bound to a <close> variable is cancelled on scope exit. */
static int t_close(lua_State *L) {
  tide__check_task(L, 1);
  tide__err_push(L, "cancelled", "task cancelled (its <close> scope ended)");
  tide__cancel(L, 1, -1);
  return 0;
}

/* ---- module functions ------------------------------------------------- */

/* tide.spawn([opts,] fn, ...) -> task; opts.name names it */
static int l_spawn(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  int fidx = 1, named = 0;
  if (lua_type(L, 1) == LUA_TTABLE) {
    static const char *const known[] = {"name", NULL};
    tide__check_opts(L, 1, known, -1);
    fidx = 2;
    lua_getfield(L, 1, "name");
    named = !lua_isnil(L, -1);
    if (named && lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, 1, lua_pushfstring(L, "opts.name: string expected, got %s",
                                          luaL_typename(L, -1)));
    lua_replace(L, 1); /* slot 1 now holds the name (or nil) */
  }
  luaL_checktype(L, fidx, LUA_TFUNCTION);
  if (rt->sched == NULL)
    return tide__raise_no_loop(L);
  tide__spawn(L, rt->current ? rt->current->s : rt->sched, fidx,
              lua_gettop(L) - fidx);
  if (named) {
    lua_getfield(L, LUA_REGISTRYINDEX, "tide.names");
    lua_pushvalue(L, -2);
    lua_pushvalue(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  }
  return 1;
}

/* current_task() -> the running task, or nil (one value, as asyncio's
 * None: print(tide.current_task()) prints it) outside any */
static int l_current_task(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  if (rt->current == NULL)
    lua_pushnil(L);
  else
    tide__push_task(L, rt->current);
  return 1;
}

static int l_all_tasks(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  int n = 0;
  lua_newtable(L);
  if (rt->sched == NULL)
    return 1;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->sched->tasks_ref);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (lua_type(L, -1) == LUA_TUSERDATA)
      lua_rawseti(L, -4, ++n);
    else
      lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 1;
}

static int park_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  return lua_gettop(L) - (int)ctx;
}

/* core.park() -> true, ... (woken) | false, err, woken (cancelled) */
static int l_park(lua_State *L) {
  tide_task *t = tide__current(L);
  lua_settop(L, 0);
  t->flags |= TF_LUA_PARK;
  return tide__park(L, t, 0, park_k);
}

/* core.wake(task, ...) -> whether the task was parked and is now ready */
static int l_wake(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  int n = lua_gettop(L) - 1;
  if (!(t->flags & TF_LUA_PARK) || t->state != TS_PARKED) {
    lua_pushboolean(L, 0); /* only a core.park is woken by core.wake */
    return 1;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, 2);
  lua_pushboolean(L, tide__wake(L, t, n + 1));
  return 1;
}

/* core.other_cancel(task) -> the cancel asked while another was on its way
 * (see tide__cancel), or nil: a scope notes it at entry so that it honours
 * only one asked during the scope (asyncio compares cancelling() counts) */
static int l_other_cancel(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->s->extra_ref);
  lua_pushvalue(L, 1);
  lua_rawget(L, -2);
  return 1;
}

/* core.cancelling(task [, delta]) -> how many cancels were asked of task
 * since its first call here (which starts counting them), after adding
 * delta (asyncio's uncancel() is -1): a tide.timeout scope that sees more at
 * its end than at its start, its own one taken back, ends cancelled, not
 * timed out, as asyncio.timeout compares cancelling() counts. */
static int l_cancelling(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  lua_Integer d = luaL_optinteger(L, 2, 0);
  lua_settop(L, 1);
  if (d != 0)
    count_cancel(L, t->s, 1, (int)d);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->s->counts_ref);
  lua_pushvalue(L, 1);
  if (lua_rawget(L, -2) != LUA_TNUMBER) {
    lua_pop(L, 1);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 0);
    lua_rawset(L, -3);
    lua_pushinteger(L, 0);
  }
  return 1;
}

/* core.uncancel(task, token): withdraws a cancel request made with token
 * that has not been delivered yet (a timeout scope that ended in time).
 * -> whether it did, and the cancel asked while token's was on its way, if
 * any (now forgotten: the caller decides whether to raise it) */
static int l_uncancel(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  int mine = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->s->extra_ref);
  lua_pushvalue(L, 1);
  lua_rawget(L, -2);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  lua_rawset(L, -4);
  lua_replace(L, 3); /* the extra request, or nil */
  lua_settop(L, 3);
  if (t->flags & TF_CANCEL_PENDING) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->s->pending_ref);
    lua_pushvalue(L, 1);
    lua_rawget(L, -2);
    mine = lua_rawequal(L, -1, 2);
    lua_pop(L, 1);
    if (mine) {
      lua_pushvalue(L, 1);
      lua_pushnil(L);
      lua_rawset(L, -3);
      t->flags &= ~TF_CANCEL_PENDING;
    }
    lua_pop(L, 1);
  }
  lua_pushboolean(L, mine);
  lua_pushvalue(L, 3);
  return 2;
}

/* ---- gather ------------------------------------------------------------ */

/* Wakes the gather's caller (its park returns true) a loop turn later, as
 * asyncio's: a child's done callback completes the outer future, whose own
 * callback wakes the task. */
static void gather_wake(gather_state *gs) {
  tide_task *t = gs->parent;
  if (t->state == TS_PARKED) {
    tide__heap_remove(t->s, &t->tn);
    tide__enqueue_due(t->s, t);
  }
}

static void gather_child_done(lua_State *L, int g, int ud) {
  gather_state *gs = lua_touserdata(L, g);
  tide_task *child = lua_touserdata(L, ud);
  if (!gs->live) { /* its outcome is set: as asyncio's, a later failure */
    child->flags |= TF_RETRIEVED; /* counts as looked at */
    return;
  }
  gs->remaining--;
  if (gs->draining) {
    /* cancelled: without return_exceptions the first child that ends
     * cancelled or failed ends the gather (asyncio's future completes
     * then: with that child's error if it failed, else the cancel), with
     * them once every child has ended (and their errors count as looked
     * at, as asyncio's gather collects them) */
    if (child->flags & TF_FAILED) {
      if (gs->return_exceptions)
        child->flags |= TF_RETRIEVED;
      else {
        lua_pushvalue(L, ud);
        lua_setiuservalue(L, g, 1);
      }
    }
    if (gs->remaining == 0 ||
        (!gs->return_exceptions && (child->flags & (TF_FAILED | TF_CANCELLED)))) {
      gs->live = gs->draining = 0;
      gather_wake(gs);
    }
  } else if (!gs->return_exceptions && (child->flags & (TF_FAILED | TF_CANCELLED))) {
    gs->live = 0;
    lua_pushvalue(L, ud);
    lua_setiuservalue(L, g, 1);
    gather_wake(gs);
  } else if (gs->remaining == 0) {
    gs->live = 0;
    gather_wake(gs);
  }
}

/* [-0, +1, m] Pushes the slot value of a done task for gather's results:
 * its first result, or its error as a tide error. */
static void push_slot(lua_State *L, tide_task *t, int ud) {
  if (t->flags & (TF_FAILED | TF_CANCELLED)) {
    t->flags |= TF_RETRIEVED;
    tide__push_error(L, t, ud);
    if (!tide__iserror(L, -1)) { /* wrapped, the message made safely */
      int v = lua_gettop(L);
      push_message(L, v);
      tide__err_push(L, "error", "%s", lua_tostring(L, -1));
      lua_remove(L, -2);
      lua_pushvalue(L, v);
      lua_setfield(L, -2, "value");
      lua_remove(L, v);
    }
  } else if (t->nres == 0) {
    lua_pushnil(L);
  } else if (lua_getiuservalue(L, ud, TUV_CO) == LUA_TTABLE && t->nres > 1) {
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
  }
}

/* Raises the error of the child that ended the gather (the state is at
 * index 4), if one did. */
static void raise_failed_child(lua_State *L) {
  if (lua_getiuservalue(L, 4, 1) == LUA_TUSERDATA) {
    tide_task *f = lua_touserdata(L, -1);
    f->flags |= TF_RETRIEVED;
    remember_reraise(L, f, -1);
    tide__push_error(L, f, lua_gettop(L));
    lua_error(L);
  }
  lua_pop(L, 1);
}

/* Gather's end: raise the failed child's error, or return the results. */
static int gather_finish(lua_State *L) {
  lua_Integer i, n = lua_tointeger(L, 2);
  raise_failed_child(L);
  lua_createtable(L, (int)n, 0); /* a plain array, as asyncio's list */
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    push_slot(L, lua_touserdata(L, -1), -1);
    lua_remove(L, -2);
    lua_rawseti(L, -2, i);
  }
  return 1;
}

/* A cancelled gather: once its children have ended as far as
 * gather_child_done asks, raise the cancellation, kept at index 6. A
 * cancel meanwhile just goes on waiting. */
static int gather_drain_k(lua_State *L, int status, lua_KContext ctx) {
  gather_state *gs = lua_touserdata(L, 4);
  (void)status;
  (void)ctx;
  if (gs->draining && gs->remaining > 0) {
    lua_settop(L, 6);
    return tide__park(L, gs->parent, 0, gather_drain_k);
  }
  gs->draining = 0;
  raise_failed_child(L); /* a child failed while cancelling: its error */
  lua_pushvalue(L, 6);
  return lua_error(L);
}

static int gather_k(lua_State *L, int status, lua_KContext ctx) {
  gather_state *gs = lua_touserdata(L, 4);
  (void)status;
  (void)ctx;
  if (!lua_toboolean(L, 5) && gs->live) { /* cancelled: so are children */
    lua_Integer i, n = lua_tointeger(L, 2);
    const char *msg = "the gather awaiting it was cancelled";
    lua_settop(L, 6);
    /* the children get the gather's cancel message, as asyncio's */
    if (tide__err_is_kind(L, 6, "cancelled") &&
        lua_getfield(L, 6, "message") == LUA_TSTRING)
      msg = lua_tostring(L, 7);
    gs->live = gs->draining = 1;
    gs->remaining = 0; /* recounted: the wake may have stopped the count */
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, 1, i);
      if (((tide_task *)lua_touserdata(L, -1))->state != TS_DONE)
        gs->remaining++; /* each entry is a waiter that will fire */
      tide__err_push(L, "cancelled", "%s", msg);
      tide__cancel(L, -2, -1);
      lua_pop(L, 2);
    }
    lua_settop(L, 6);
    return gather_drain_k(L, LUA_OK, 0);
  }
  if (!lua_toboolean(L, 5)) { /* cancelled once its outcome was set */
    lua_pushvalue(L, 6);
    return lua_error(L);
  }
  gs->live = 0;
  lua_settop(L, 4);
  return gather_finish(L);
}

/* core.gather_wait(tasks, n, return_exceptions, array) -> results (see
 * tide.gather; array: the tasks came as one table, for the messages) */
static int l_gather_wait(lua_State *L) {
  lua_Integer i, n = luaL_checkinteger(L, 2);
  gather_state *gs;
  tide_task *me = tide__current(L);
  int funcs = 0, array = lua_toboolean(L, 4);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 3);
  lua_rawgeti(L, LUA_REGISTRYINDEX, tide__rt(L)->task_mt_ref); /* 4 */
  /* 5: the metatable of a failed task (reports it when collected) */
  lua_rawgeti(L, LUA_REGISTRYINDEX, tide__rt(L)->task_gcmt_ref);
  for (i = 1; i <= n; i++) { /* all checks before spawning or registering */
    int ok = 0;
    switch (lua_rawgeti(L, 1, i)) {
      case LUA_TFUNCTION:
        ok = 1;
        funcs = 1;
        break;
      case LUA_TUSERDATA:
        if (lua_getmetatable(L, -1)) {
          ok = lua_rawequal(L, -1, 4) || lua_rawequal(L, -1, 5);
          lua_pop(L, 1);
        }
        if (ok && ((tide_task *)lua_touserdata(L, -1))->s != me->s)
          return tide__raise_at_user(L, "gather: task %d belongs to another "
                                        "tide.run loop", (int)i);
        break;
    }
    if (!ok && array)
      return tide__raise_at_user(L, "bad argument #1 to 'gather' (element %d: "
                                    "task or function expected, got %s)",
                                 (int)i, luaL_typename(L, -1));
    if (!ok)
      return tide__raise_at_user(L, "bad argument #%d to 'gather' (task or "
                                    "function expected, got %s)", (int)i,
                                 luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  if (funcs) { /* functions become tasks, in a list of our own */
    lua_createtable(L, (int)n, 0);
    for (i = 1; i <= n; i++) {
      if (lua_rawgeti(L, 1, i) == LUA_TFUNCTION) {
        tide__spawn(L, me->s, lua_gettop(L), 0);
        lua_remove(L, -2);
      }
      lua_rawseti(L, -2, i);
    }
    lua_replace(L, 1);
  }
  gs = lua_newuserdatauv(L, sizeof(*gs), 1); /* index 4 */
  lua_rawgetp(L, LUA_REGISTRYINDEX, &gather_mt_key);
  lua_setmetatable(L, -2);
  gs->parent = me;
  gs->remaining = 0;
  gs->return_exceptions = lua_toboolean(L, 3);
  gs->live = 1;
  gs->draining = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, me->s->waiters_ref); /* 5 */
  for (i = 1; i <= n; i++) {
    tide_task *t;
    lua_rawgeti(L, 1, i);
    t = lua_touserdata(L, -1);
    if (t->state != TS_DONE) {
      gs->remaining++;
      if (lua_rawgeti(L, 5, t->ref) == LUA_TNIL) { /* the usual: no waiter */
        lua_pop(L, 1);
        lua_pushvalue(L, 4);
        lua_rawseti(L, 5, t->ref);
      } else {
        lua_pop(L, 1);
        lua_pushvalue(L, 4);
        waiters_add(L, -2);
      }
    } else if (!gs->return_exceptions && (t->flags & (TF_FAILED | TF_CANCELLED))) {
      lua_setiuservalue(L, 4, 1);
      gs->live = 0;
      break;
    }
    lua_pop(L, 1);
  }
  lua_settop(L, 4);
  if (!gs->live || gs->remaining == 0) {
    gs->live = 0;
    return gather_finish(L);
  }
  return tide__park(L, me, 0, gather_k);
}

/* core.task_info(task) -> state, id, parent id, "file:line" it waits at */
static int l_task_info(lua_State *L) {
  tide_task *t = tide__check_task(L, 1);
  lua_pushstring(L, state_name(t));
  lua_pushinteger(L, t->id);
  lua_pushinteger(L, t->parent);
  if (t->co && t->state != TS_DONE)
    push_where(L, t->state == TS_RUNNING ? L : t->co);
  else
    lua_pushnil(L);
  return 4;
}

static int l_istask(lua_State *L) {
  lua_pushboolean(L, is_task(L, 1));
  return 1;
}

static const luaL_Reg task_methods[] = {
  {"await", t_await}, {"result", t_result}, {"error", t_error},
  {"cancel", t_cancel}, {"done", t_done}, {"cancelled", t_cancelled},
  {"failed", t_failed}, {"traceback", t_traceback},
  {"add_done_callback", t_add_done_callback},
  {"remove_done_callback", t_remove_done_callback}, {NULL, NULL}};

/* ---- the command's main chunk as Lua's main thread -------------------
 * The `tide` command runs the main chunk in a task, yet lua5.4 runs it on
 * the main thread, and scripts (and Lua's own tests) ask: there
 * coroutine.running() says it is the main one, isyieldable() is false and
 * a yield is an error. main.lua marks its task so; other tasks are
 * coroutines as before. */

int tide__is_lua_main(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  tide_task *t = rt->current;
  return rt->lua_main != 0 && t != NULL && t->id == rt->lua_main && t->co == L;
}

/* The coroutine of the task that plays Lua's main thread (a run's main
 * task), while it is not done; NULL otherwise. */
lua_State *tide__lua_main_co(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  tide_sched *s;
  for (s = rt->sched; rt->lua_main && s; s = s->outer)
    if (s->main && s->main->id == rt->lua_main && s->main->state != TS_DONE)
      return s->main->co;
  return NULL;
}

/* core.set_lua_main(): the running task plays Lua's main thread */
static int l_set_lua_main(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  rt->lua_main = rt->current && rt->current->co == L ? rt->current->id : 0;
  return 0;
}

/* coroutine.running(), as Lua's but for the task that plays the main thread */
static int l_running(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  int ismain;
  if (rt->current && rt->current->co == L)
    tide__co_own(L); /* no other task may resume it (coroutine.c) */
  ismain = lua_pushthread(L);
  lua_pushboolean(L, ismain || tide__is_lua_main(L));
  return 2;
}

/* coroutine.isyieldable([co]), likewise */
static int l_isyieldable(lua_State *L) {
  lua_State *co = lua_isnone(L, 1) ? L : lua_tothread(L, 1);
  luaL_argexpected(L, co != NULL, 1, "thread");
  lua_pushboolean(L, lua_isyieldable(co) && !tide__is_lua_main(co));
  return 1;
}

static const luaL_Reg task_funcs[] = {
  {"set_lua_main", l_set_lua_main}, {"running", l_running},
  {"isyieldable", l_isyieldable},
  {"spawn", l_spawn}, {"current_task", l_current_task}, {"need_task", l_need_task},
  {"all_tasks", l_all_tasks}, {"park", l_park}, {"wake", l_wake},
  {"uncancel", l_uncancel}, {"other_cancel", l_other_cancel}, {"istask", l_istask},
  {"cancelling", l_cancelling}, {"join", l_join},
  {"gather_wait", l_gather_wait},
  {"task_info", l_task_info},
  {NULL, NULL}};

/* [-1, +1, m] Adds the task functions to the module table on top. */
int tide__open_task(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  int mod = lua_gettop(L);
  if (luaL_newmetatable(L, TIDE_TASK_MT)) {
    lua_newtable(L); /* methods */
    lua_pushvalue(L, mod);
    luaL_setfuncs(L, task_methods, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "methods");
    lua_pushcclosure(L, t_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, t_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, t_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, t_close);
    lua_setfield(L, -2, "__close");
    lua_pushlightuserdata(L, &task_mt_key); /* the marker is_task reads */
    lua_rawseti(L, -2, 1);
  }
  if (rt->task_mt_ref == 0) {
    /* A task gets the same metatable plus __gc only when it fails (see
     * finish_err): a finalizer costs every object that has one a GC cycle
     * more and a call, and only an unretrieved failure needs it. */
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, -3)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
    lua_pushcfunction(L, t_gc);
    lua_setfield(L, -2, "__gc");
    rt->task_gcmt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    rt->task_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushboolean(L, 0); /* a slot of its own, nil-free, for source_id */
    rt->last_fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, LUA_REGISTRYINDEX, "tide.names") == LUA_TNIL) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_newtable(L);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "tide.names");
  } else {
    lua_pop(L, 1);
  }
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &gather_mt_key) == LUA_TNIL) {
    lua_newtable(L);
    lua_pushliteral(L, "tide.Gather");
    lua_setfield(L, -2, "__name");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &gather_mt_key);
  }
  lua_pop(L, 1);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &sources_key) == LUA_TNIL) {
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &sources_key);
  }
  lua_pop(L, 1);
  if (rt->pool_ref == 0) {
    lua_newtable(L);
    rt->pool_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  if (rt->tb_ref == 0) {
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    rt->tb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  luaL_setfuncs(L, task_funcs, 0);
  lua_pushlightuserdata(L, tide__sentinel());
  lua_setfield(L, mod, "sentinel");
  lua_pushlightuserdata(L, &tailcall_key);
  lua_setfield(L, mod, "tailcall");
  return 1;
}
