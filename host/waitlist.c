/*
 * waitlist.c: the FIFO of parked tasks that every queue, lock, event and
 * condition waits on ("tide.WaitList"). wait() parks the running task in
 * the list; wake_one() hands a wake to the first waiter that can still take
 * it (a waiter whose cancellation is already on its way cannot, and removes
 * itself when it runs), so no wake is lost and order is fair.
 *
 * The list holds plain task pointers: a task in it is parked, hence
 * anchored by its sched, and it leaves the list before it can end (woken:
 * popped by the waker; cancelled: removed by its own wait continuation).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define WAITLIST_MT "tide.WaitList"

typedef tide_waitlist waitlist;

static char mt_key; /* the metatable, by a key cheaper than its name */

static waitlist *check_wl(lua_State *L, int idx) {
  int ok = lua_getmetatable(L, idx);
  if (ok) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &mt_key);
    ok = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
  }
  if (!ok)
    luaL_typeerror(L, idx, WAITLIST_MT);
  return lua_touserdata(L, idx);
}

void tide__wl_push(lua_State *L, waitlist *w, tide_task *t) {
  if (w->last == w->cap) {
    if (w->first > 0 && w->first >= w->cap / 2) { /* slide down */
      memmove(w->items, w->items + w->first,
              sizeof(*w->items) * (size_t)(w->last - w->first));
      w->last -= w->first;
      w->base += (unsigned)w->first;
      w->first = 0;
    } else {
      int cap = w->cap ? w->cap * 2 : 4;
      tide_task **items = realloc(w->items, sizeof(*items) * (size_t)cap);
      if (items == NULL)
        luaL_error(L, "not enough memory");
      w->items = items;
      w->cap = cap;
    }
  }
  t->tn.idx = (int)((unsigned)w->last + w->base);
  w->items[w->last++] = t;
  w->live++;
  t->tn.kind = TN_WAITING;
  t->tn.wl = w;
}

/* Takes t out of w if it is still in it (a woken waiter is not): O(1),
 * so cancelling a crowd of waiters in any order stays linear. */
void tide__wl_remove(waitlist *w, tide_task *t) {
  int i;
  if (t->tn.kind != TN_WAITING || t->tn.wl != w)
    return;
  i = (int)((unsigned)t->tn.idx - w->base);
  t->tn.kind = TN_TASK;
  t->tn.wl = NULL;
  t->tn.idx = -1;
  if (i < w->first || i >= w->last || w->items[i] != t)
    return; /* cannot happen: the index is kept exact */
  w->items[i] = NULL;
  w->live--;
  while (w->first < w->last && w->items[w->first] == NULL)
    w->first++;
  while (w->last > w->first && w->items[w->last - 1] == NULL)
    w->last--;
  if (w->first == w->last)
    w->first = w->last = 0;
}

static tide_task *pop(waitlist *w) {
  while (w->first < w->last) {
    tide_task *t = w->items[w->first++];
    if (t) {
      if (w->first == w->last)
        w->first = w->last = 0;
      w->live--;
      t->tn.kind = TN_TASK;
      t->tn.wl = NULL;
      t->tn.idx = -1;
      return t;
    }
  }
  w->first = w->last = 0;
  return NULL;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (!lua_toboolean(L, 2)) { /* cancelled: leave the list */
    tide__wl_remove(lua_touserdata(L, 1), tide__rt(L)->current);
    return 3; /* false, err, woken */
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* wl:wait() -> true (woken) | false, err, woken (cancelled, and removed) */
static int wl_wait(lua_State *L) {
  waitlist *w = check_wl(L, 1);
  tide_task *t = tide__current(L);
  lua_settop(L, 1);
  tide__wl_push(L, w, t);
  return tide__park(L, t, 0, wait_k);
}

/* Wakes the first waiter that can take it with true; returns whether one
 * was woken. */
int tide__wl_wake_one(lua_State *L, waitlist *w) {
  tide_task *t;
  while ((t = pop(w)) != NULL) {
    lua_pushboolean(L, 1);
    if (tide__wake(L, t, 1))
      return 1;
  }
  return 0;
}

int tide__wl_wake_all(lua_State *L, waitlist *w) {
  int n = 0;
  while (tide__wl_wake_one(L, w))
    n++;
  return n;
}

/* Takes t out of the list it waits in, if any (it ended, or its run did). */
void tide__wl_unlink(tide_task *t) {
  if (t->tn.kind == TN_WAITING)
    tide__wl_remove(t->tn.wl, t);
}

int tide__wl_empty(const waitlist *w) {
  return w->live == 0;
}

void tide__wl_free(waitlist *w) {
  int i;
  for (i = w->first; i < w->last; i++)
    if (w->items[i] && w->items[i]->tn.kind == TN_WAITING) {
      w->items[i]->tn.kind = TN_TASK;
      w->items[i]->tn.wl = NULL;
      w->items[i]->tn.idx = -1;
    }
  free(w->items);
  memset(w, 0, sizeof(*w));
}

/* wl:wake_one() -> whether a waiter was woken */
static int wl_wake_one(lua_State *L) {
  lua_pushboolean(L, tide__wl_wake_one(L, check_wl(L, 1)));
  return 1;
}

/* wl:wake_all() -> how many were woken */
static int wl_wake_all(lua_State *L) {
  lua_pushinteger(L, tide__wl_wake_all(L, check_wl(L, 1)));
  return 1;
}

/* wl:head_leaving() -> whether the first waiter's cancellation is on its
 * way (it leaves the list when it runs; a wake would pass it by) */
static int wl_head_leaving(lua_State *L) {
  waitlist *w = check_wl(L, 1);
  int i;
  for (i = w->first; i < w->last && w->items[i] == NULL; i++)
    ;
  lua_pushboolean(L, i < w->last && w->items[i]->state != TS_PARKED);
  return 1;
}

static int wl_empty(lua_State *L) {
  lua_pushboolean(L, tide__wl_empty(check_wl(L, 1)));
  return 1;
}

static int wl_len(lua_State *L) {
  waitlist *w = check_wl(L, 1);
  int i, n = 0;
  for (i = w->first; i < w->last; i++)
    n += w->items[i] != NULL;
  lua_pushinteger(L, n);
  return 1;
}

static int wl_gc(lua_State *L) {
  tide__wl_free(check_wl(L, 1));
  return 0;
}

/* core.waitlist() -> a new empty list */
static int l_waitlist(lua_State *L) {
  waitlist *w = lua_newuserdatauv(L, sizeof(*w), 0);
  memset(w, 0, sizeof(*w));
  lua_rawgetp(L, LUA_REGISTRYINDEX, &mt_key);
  lua_setmetatable(L, -2);
  return 1;
}

static const luaL_Reg wl_methods[] = {
  {"wait", wl_wait}, {"wake_one", wl_wake_one}, {"wake_all", wl_wake_all},
  {"empty", wl_empty}, {"head_leaving", wl_head_leaving}, {"__len", wl_len},
  {"__gc", wl_gc}, {NULL, NULL}};

/* [-1, +1, m] Adds core.waitlist to the module table on top. */
int tide__open_waitlist(lua_State *L) {
  if (luaL_newmetatable(L, WAITLIST_MT)) {
    luaL_setfuncs(L, wl_methods, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &mt_key);
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_waitlist);
  lua_setfield(L, -2, "waitlist");
  return 1;
}
