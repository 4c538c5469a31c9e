/*
 * timer.c: time and deadlines. Owns the sched's timer heap (one 4-ary heap
 * of tide_tnode pointers (4-ary), ordered by deadline then start order, so equal
 * deadlines fire FIFO as in libuv) and the single uv_timer_t armed for its
 * top. Sleeping tasks cost one heap slot, not one uv handle. Also owns the
 * Lua functions sleep, time, call_soon, call_later and the "tide.Handle"
 * type they return. The virtual clock (tide.run{clock = "virtual"}) lives
 * here too: its time only moves when loop.c finds every task waiting on
 * timers.
 */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

uint64_t tide__now(tide_sched *s) {
  return s->virtual_clock ? s->vnow : uv_hrtime();
}

/* now + delay, saturating: a deadline never wraps to the past. */
static uint64_t deadline(tide_sched *s, uint64_t delay) {
  uint64_t now = tide__now(s);
  return now + delay < now ? UINT64_MAX : now + delay;
}

/* Heap entries carry their keys inline, so sifting compares a contiguous
 * array instead of chasing a pointer per comparison (1M sleepers). */
static int less(const tide_hentry *a, const tide_hentry *b) {
  return a->when < b->when || (a->when == b->when && a->n->seq < b->n->seq);
}

static void put(tide_sched *s, int i, tide_hentry e) {
  s->heap[i] = e;
  e.n->idx = i;
}

/* A 4-ary heap: half the levels of a binary one, and a node's children
 * share one cache line. With 1M sleepers each level a pop sifts through
 * is a cache miss or two (the slot, and the idx of the node moved), so the
 * depth is what a wake-up costs. */
#define ARITY 4

static void sift_up(tide_sched *s, int i) {
  tide_hentry e = s->heap[i];
  while (i > 0) {
    int p = (i - 1) / ARITY;
    if (!less(&e, &s->heap[p]))
      break;
    put(s, i, s->heap[p]);
    i = p;
  }
  put(s, i, e);
}

static void sift_down(tide_sched *s, int i) {
  tide_hentry e = s->heap[i];
  for (;;) {
    int c = ARITY * i + 1, k, last;
    if (c >= s->nheap)
      break;
    last = c + ARITY < s->nheap ? c + ARITY : s->nheap;
    for (k = c + 1; k < last; k++)
      if (less(&s->heap[k], &s->heap[c]))
        c = k;
    if (!less(&s->heap[c], &e))
      break;
    put(s, i, s->heap[c]);
    i = c;
  }
  put(s, i, e);
}

/* Adds n with deadline `when`; arms the uv timer if n is the new top. The
 * caller keeps n's owner alive while it is in the heap. */
void tide__heap_push(tide_sched *s, tide_tnode *n, uint64_t when) {
  if (s->nheap == s->capheap) {
    int cap = s->capheap ? s->capheap * 2 : 64;
    tide_hentry *h = tide__big(s->heap, sizeof(*h) * (size_t)s->capheap,
                               sizeof(*h) * (size_t)cap);
    if (h == NULL)
      abort(); /* out of memory in the scheduler: nothing sane to do */
    s->heap = h;
    s->capheap = cap;
  }
  n->seq = s->seq++;
  s->heap[s->nheap].when = when;
  s->heap[s->nheap].n = n;
  n->idx = s->nheap++;
  sift_up(s, s->nheap - 1);
  if (n->idx == 0)
    tide__timer_arm(s);
}

void tide__heap_remove(tide_sched *s, tide_tnode *n) {
  int i = n->idx;
  if (i < 0 || n->kind == TN_WAITING) /* a waiter's idx is its list slot */
    return;
  n->idx = -1;
  s->nheap--;
  if (i < s->nheap) {
    s->heap[i] = s->heap[s->nheap];
    s->heap[i].n->idx = i;
    if (i > 0 && less(&s->heap[i], &s->heap[(i - 1) / ARITY]))
      sift_up(s, i);
    else
      sift_down(s, i);
  }
  if (s->nheap == 0 && s->timer_on) {
    uv_timer_stop(&s->timer);
    s->timer_on = 0;
  }
}

static void on_uv_timer(uv_timer_t *h) {
  tide_sched *s = h->data;
  s->rt->incb++;
  s->timer_on = 0;
  tide__fire_due(s);
  tide__timer_arm(s);
  tide__sched_update(s);
  s->rt->incb--;
}

/* Arms the uv timer for the heap's top if it is not armed early enough. */
void tide__timer_arm(tide_sched *s) {
  uint64_t now, when, ms;
  if (s->virtual_clock || s->closing)
    return;
  if (s->nheap == 0) {
    if (s->timer_on) {
      uv_timer_stop(&s->timer);
      s->timer_on = 0;
    }
    return;
  }
  when = s->heap[0].when;
  if (s->timer_on && s->armed <= when)
    return;
  now = uv_hrtime();
  ms = when > now ? (when - now + 999999) / 1000000 : 0;
  uv_update_time(s->loop);
  uv_timer_start(&s->timer, on_uv_timer, ms, 0);
  s->timer_on = 1;
  s->armed = when;
}

/* Moves every due node out of the heap to the ready queue's end, in
 * deadline order: sleeping tasks and due handles alike. */
void tide__fire_due(tide_sched *s) {
  uint64_t now = tide__now(s);
  while (s->nheap > 0 && s->heap[0].when <= now) {
    tide_tnode *n = s->heap[0].n;
    tide__heap_remove(s, n);
    if (n->kind == TN_TASK) {
      tide_task *t = (tide_task *)((char *)n - offsetof(tide_task, tn));
      /* resumed with true (step() pushes it): its coroutine is not
       * touched until then, a cache miss less per wake-up when a burst of
       * timers is due at once */
      if (t->state == TS_PARKED)
        tide__enqueue_due(s, t);
    } else {
      tide__enqueue_handle(s, (tide_handle *)n);
    }
  }
}

/* Virtual clock: jump to the next deadline. */
int tide__virtual_advance(tide_sched *s) {
  if (s->nheap == 0)
    return 0;
  if (s->heap[0].when > s->vnow)
    s->vnow = s->heap[0].when;
  tide__fire_due(s);
  return 1;
}

static uint64_t to_ns(lua_State *L, int idx) {
  lua_Number sec = luaL_checknumber(L, idx);
  luaL_argcheck(L, sec == sec, idx, "delay is NaN");
  if (sec <= 0)
    return 0;
  if (sec > 1e9)
    sec = 1e9; /* about 31 years: effectively forever, and no overflow */
  return (uint64_t)(sec * 1e9);
}

static tide_sched *active_sched(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  if (rt->sched == NULL)
    tide__raise_no_loop(L);
  return rt->sched;
}

/* ---- sleep ---------------------------------------------------------- */

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  int n = (int)ctx; /* the extra arguments sit at 2..n+1 */
  (void)status;
  if (!lua_toboolean(L, n + 2)) {
    lua_pushvalue(L, n + 3);
    return lua_error(L);
  }
  lua_settop(L, n + 1);
  return n;
}

/* tide.sleep(seconds, ...) -> ... */
static int l_sleep(lua_State *L) {
  uint64_t ns = to_ns(L, 1);
  tide_task *t = tide__current(L);
  int n = lua_gettop(L) - 1;
  if (ns > 0)
    tide__heap_push(t->s, &t->tn, deadline(t->s, ns));
  else
    t->flags |= TF_IMMEDIATE; /* sleep(0): park and come straight back */
  return tide__park(L, t, n, sleep_k);
}

/* coroutine.yield as tide installs it (tide.coroutine): in a task's own
 * coroutine it is sleep(0), so a cancellation is delivered there as at any
 * suspension; in a user coroutine (a generator) it is the plain yield. */
static int l_yield(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  tide_task *t = rt->current;
  if (tide__is_lua_main(L)) { /* as on lua5.4's main thread (no position) */
    lua_pushliteral(L, "attempt to yield from outside a coroutine");
    return lua_error(L);
  }
  if (t == NULL || t->co != L || t->state != TS_RUNNING || !lua_isyieldable(L))
    return lua_yield(L, lua_gettop(L));
  lua_settop(L, 0);
  lua_pushnil(L); /* where sleep_k expects the seconds */
  t->flags |= TF_IMMEDIATE;
  return tide__park(L, t, 0, sleep_k);
}

/* tide.time() -> seconds on the loop's monotonic clock */
static int l_time(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  uint64_t ns = rt->sched ? tide__now(rt->sched) : uv_hrtime();
  lua_pushnumber(L, (lua_Number)ns / 1e9);
  return 1;
}

/* ---- handles: call_soon / call_later -------------------------------- */

/* A handle's callback and arguments are its user value 1, a table
 * {n = nargs, fn, a1, ...}; while armed it is anchored in the sched's
 * handle table at h->ref. */

static void handle_unanchor(tide_sched *s, tide_handle *h) {
  if (h->ref) {
    lua_State *L = s->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->handles_ref);
    luaL_unref(L, -1, h->ref);
    lua_pop(L, 1);
    h->ref = 0;
  }
}

/* Functions of tide's own (wakers, done callbacks of gathers and task
 * groups, deadlines), marked by core.runtime_callback: called as the
 * runtime's work, outside the script's memory and instruction limits. A
 * script over its memory cap must still be woken from its wait; a failed
 * allocation there lost the wake for good. (Weak keys.) */
static char runtime_key;

static int is_runtime(lua_State *L, int idx) {
  int yes;
  idx = lua_absindex(L, idx);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &runtime_key);
  lua_pushvalue(L, idx);
  yes = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return yes;
}

/* core.runtime_callback(fn) -> fn, marked (see runtime_key) */
static int l_runtime_callback(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &runtime_key);
  lua_pushvalue(L, 1);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  return 1;
}

/* A handle's turn in the ready queue: its callback runs (protected),
 * unless it was cancelled meanwhile. */
void tide__handle_run(tide_sched *s, tide_handle *h) {
  lua_State *L = s->L;
  int n, i, cb, ref = h->ref;
  h->queued = 0;
  if (h->cancelled) {
    handle_unanchor(s, h);
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->handles_ref);
  lua_rawgeti(L, -1, ref);          /* the handle userdata */
  handle_unanchor(s, h);
  h->cancelled = 1;                 /* fired: cancel() now returns false */
  lua_getiuservalue(L, -1, 1);      /* {n = nargs, fn, args...} */
  cb = lua_gettop(L);
  lua_getfield(L, cb, "n");
  n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n + 4, "too many callback arguments");
  for (i = 1; i <= n + 1; i++)
    lua_rawgeti(L, cb, i);
  tide__call_protected(L, n, "callback", is_runtime(L, -(n + 1)) ? CALL_RUNTIME : CALL_USER);
  lua_pop(L, 3);
}

static tide_handle *check_handle(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, TIDE_HANDLE_MT);
}

/* [-0, +1] A handle for fn at fidx with the values above it as arguments,
 * due after delay on s; soon: call_soon's, straight into the ready queue. */
static int schedule_on(lua_State *L, tide_sched *s, uint64_t delay, int fidx,
                       int soon) {
  int top = lua_gettop(L), n = top - fidx, i;
  tide_handle *h;
  luaL_checktype(L, fidx, LUA_TFUNCTION);
  h = lua_newuserdatauv(L, sizeof(*h), 1);
  h->tn.idx = -1;
  h->tn.kind = TN_HANDLE;
  h->s = s;
  h->ref = 0;
  h->cancelled = 0;
  h->queued = 0;
  luaL_setmetatable(L, TIDE_HANDLE_MT);
  lua_createtable(L, n + 1, 1);
  for (i = 0; i <= n; i++) {
    lua_pushvalue(L, fidx + i);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
  lua_setiuservalue(L, -2, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->handles_ref);
  lua_pushvalue(L, -2);
  h->ref = luaL_ref(L, -2);
  lua_pop(L, 1);
  h->when = deadline(s, delay);
  if (soon) {
    tide__enqueue_handle(s, h);
  } else {
    tide__heap_push(s, &h->tn, h->when);
    tide__sched_update(s);
  }
  return 1;
}

static int schedule(lua_State *L, uint64_t delay, int fidx) {
  return schedule_on(L, active_sched(L), delay, fidx, fidx == 1);
}

/* [-(nargs+1), +0] call_soon on s of the function below nargs values on
 * top (a finished task's done callbacks: asyncio schedules them so). */
void tide__call_soon_on(lua_State *L, tide_sched *s, int nargs) {
  int fidx = lua_gettop(L) - nargs;
  schedule_on(L, s, 0, fidx, 1);
  lua_settop(L, fidx - 1);
}

/* tide.call_soon(fn, ...) -> handle */
static int l_call_soon(lua_State *L) {
  return schedule(L, 0, 1);
}

/* tide.call_later(delay, fn, ...) -> handle */
static int l_call_later(lua_State *L) {
  return schedule(L, to_ns(L, 1), 2);
}

/* handle:cancel() -> true if it had not run yet */
static int h_cancel(lua_State *L) {
  tide_handle *h = check_handle(L, 1);
  if (h->cancelled) {
    lua_pushboolean(L, 0);
    return 1;
  }
  h->cancelled = 1;
  if (!h->queued) { /* queued: its entry drops the anchor when it comes up */
    tide__heap_remove(h->s, &h->tn);
    handle_unanchor(h->s, h);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int h_cancelled(lua_State *L) {
  lua_pushboolean(L, check_handle(L, 1)->cancelled);
  return 1;
}

static int h_when(lua_State *L) {
  lua_pushnumber(L, (lua_Number)check_handle(L, 1)->when / 1e9);
  return 1;
}

static int h_tostring(lua_State *L) {
  tide_handle *h = check_handle(L, 1);
  lua_pushfstring(L, "tide.Handle (%s, %p)",
                  h->cancelled ? "done" : "pending", (void *)h);
  return 1;
}

static const luaL_Reg handle_methods[] = {
  {"cancel", h_cancel}, {"cancelled", h_cancelled}, {"when", h_when},
  {NULL, NULL}};

static const luaL_Reg timer_funcs[] = {
  {"sleep", l_sleep}, {"yield", l_yield}, {"time", l_time}, {"call_soon", l_call_soon},
  {"call_later", l_call_later}, {"runtime_callback", l_runtime_callback},
  {NULL, NULL}};

/* [-1, +1, m] Adds the timer functions to the table on top. */
int tide__open_timer(lua_State *L) {
  if (luaL_newmetatable(L, TIDE_HANDLE_MT)) {
    luaL_newlib(L, handle_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, h_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  tide__registry_weak(L, &runtime_key, "k");
  lua_pop(L, 1);
  luaL_setfuncs(L, timer_funcs, 0);
  return 1;
}
