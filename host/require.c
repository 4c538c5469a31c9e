/*
 * require.c: Lua 5.4's require (loadlib.c's ll_require and findloader),
 * rebuilt with continuations so that a module's top level may suspend its
 * task: a module that connects, sleeps or awaits while it loads. Lua's own
 * require calls the searchers and the loader with lua_call, and a yield
 * across it fails ("attempt to yield across a C-call boundary").
 *
 * The behaviour is the C function's, message for message: the package table
 * is an upvalue (the one given when it is made, as loadlib's), the loaded
 * table is the registry's, and it is a C function, so error levels,
 * debug.getinfo and tracebacks ("in main chunk", "in function 'require'")
 * read as they do under lua5.4.
 *
 * Because a loader may now suspend, two tasks could load one module at
 * once and get two copies of it. So while a task runs a module's loader,
 * the module is marked loading (a registry table, name -> a "loading"
 * userdata with the loading task and a waitlist, held in a to-be-closed
 * slot that unmarks it and wakes the waiters however the loader ends);
 * another task's require of it waits, then finds it loaded (or, if the
 * loader failed, tries itself), as Python's per-module import lock. The
 * loading task itself requiring it again (a cycle) is an error at once.
 *
 * Opening tide.core (tide_open, require "tide") installs it as the global
 * require (tide__install_require).
 */
#include <string.h>

#include <lauxlib.h>

#include "internal.h"

#define LOADING_MT "tide.loading"

typedef struct loading {
  tide_task *owner;  /* the task running the loader */
  tide_waitlist wl;  /* tasks waiting for it */
} loading;

static char loading_key; /* registry: name -> loading userdata */
static char waiting_key; /* registry: task (light) -> the mark it waits on */

/* Pushes the registry's table of modules being loaded. */
static void push_loading(lua_State *L) {
  tide__registry_table(L, &loading_key);
}

/* __close of a loading mark (user value 1: the name): unmarks the module
 * and wakes the tasks waiting for it, whether the loader returned or
 * raised. */
static int loading_close(lua_State *L) {
  loading *ld = luaL_checkudata(L, 1, LOADING_MT);
  push_loading(L);
  lua_getiuservalue(L, 1, 1);
  if (lua_rawget(L, -2) == LUA_TUSERDATA && lua_touserdata(L, -1) == ld) {
    lua_getiuservalue(L, 1, 1);
    lua_pushnil(L);
    lua_rawset(L, -4);
  }
  ld->owner = NULL;
  if (!tide__wl_empty(&ld->wl))
    tide__wl_wake_all(L, &ld->wl);
  return 0;
}

static void push_waiting(lua_State *L) {
  tide__registry_table(L, &waiting_key);
}

/* Records (mark at idx) or clears (idx 0) what task t waits for. */
static void set_waiting(lua_State *L, tide_task *t, int idx) {
  if (idx)
    idx = lua_absindex(L, idx);
  push_waiting(L);
  if (idx)
    lua_pushvalue(L, idx);
  else
    lua_pushnil(L);
  lua_rawsetp(L, -2, t);
  lua_pop(L, 1);
}

/* Whether waiting for ld would close a cycle of tasks waiting for each
 * other's modules (a requires b while another task's b requires a): then
 * the task loads the module itself, as a cycle within one task does. */
static int would_deadlock(lua_State *L, loading *ld, tide_task *self) {
  int hops = 0;
  push_waiting(L);
  while (ld != NULL && ld->owner != NULL && hops++ < 10000) {
    if (ld->owner == self) {
      lua_pop(L, 1);
      return 1;
    }
    lua_rawgetp(L, -1, ld->owner);
    ld = lua_touserdata(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 0;
}

static int loading_gc(lua_State *L) {
  tide__wl_free(&((loading *)luaL_checkudata(L, 1, LOADING_MT))->wl);
  return 0;
}

static int l_require(lua_State *L);

/* A task waiting for another's load of the module woke: asks again (it is
 * loaded now, or its loader failed and this task tries). Stack: name,
 * mark, resume values. */
static int waited_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  set_waiting(L, tide__rt(L)->current, 0);
  if (!lua_toboolean(L, 3)) { /* cancelled */
    tide__wl_remove(&((loading *)lua_touserdata(L, 2))->wl, tide__rt(L)->current);
    lua_pushvalue(L, 4);
    return lua_error(L);
  }
  lua_settop(L, 1);
  return l_require(L);
}

/* Another task is loading the module: waits for it (goes on in waited_k),
 * or returns -1 when there is nothing to wait for. Stack: name, LOADED. */
static int wait_loading(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  loading *ld;
  if (rt->current == NULL || !lua_isyieldable(L))
    return -1;
  push_loading(L);
  lua_pushvalue(L, 1);
  if (lua_rawget(L, -2) == LUA_TUSERDATA &&
      ((loading *)lua_touserdata(L, -1))->owner == rt->current)
    /* the task requires a module it is loading: Lua would load it again
     * and again until the C stack overflows; a loader that suspends has no
     * C stack to overflow, so the error is raised now (Lua 5.1's words) */
    return luaL_error(L, "loop or previous error loading module '%s' (it "
                         "requires itself, or a module that requires it)",
                      lua_tostring(L, 1));
  if (lua_type(L, -1) != LUA_TUSERDATA ||
      (ld = lua_touserdata(L, -1))->owner == NULL ||
      ld->owner->state == TS_DONE || ld->owner->s != rt->current->s ||
      would_deadlock(L, ld, rt->current)) {
    /* none, stale (its task ended without closing it, or
     * belongs to an outer run that cannot go on meanwhile): load it */
    lua_pop(L, 2);
    return -1;
  }
  lua_replace(L, 2); /* name, mark */
  lua_settop(L, 2);
  set_waiting(L, rt->current, 2);
  tide__wl_push(L, &ld->wl, tide__current(L));
  return tide__park(L, rt->current, 0, waited_k);
}

/* Marks the module loading by the running task: a to-be-closed mark at
 * index 5 (see loading_close). Nothing outside a task. */
static void mark_loading(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  loading *ld;
  /* only in the task's own coroutine: a loader in a user coroutine could be
   * abandoned mid-way (a plain yield, a coroutine never closed), and its
   * mark with it */
  if (rt->current == NULL || rt->current->co != L || !lua_isyieldable(L))
    return;
  ld = lua_newuserdatauv(L, sizeof(*ld), 2);
  memset(ld, 0, sizeof(*ld));
  ld->owner = rt->current;
  if (luaL_newmetatable(L, LOADING_MT)) {
    lua_pushcfunction(L, loading_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, loading_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  tide__push_task(L, rt->current); /* kept alive: ld->owner stays valid */
  lua_setiuservalue(L, -2, 2);
  push_loading(L);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_insert(L, 5); /* under the loader and its data */
  lua_toclose(L, 5);
}

/* The loader returned. Stack: name, LOADED, searchers, msg, data, result. */
static int loaded_k(lua_State *L, int status, lua_KContext ctx) {
  const char *name = lua_tostring(L, 1);
  (void)status;
  (void)ctx;
  if (!lua_isnil(L, -1))
    lua_setfield(L, 2, name); /* LOADED[name] = result */
  else
    lua_pop(L, 1);
  if (lua_getfield(L, 2, name) == LUA_TNIL) { /* the module set no value */
    lua_pushboolean(L, 1);
    lua_copy(L, -1, -2);
    lua_setfield(L, 2, name); /* LOADED[name] = true */
  }
  lua_rotate(L, -2, 1); /* data <-> result */
  return 2;
}

/* Raises "module 'name' not found:" and the searchers' messages, at the
 * caller's line as luaL_error does, but for tide's own Lua (the command's
 * -l), which is C as far as a user can tell: no position then. */
static int not_found(lua_State *L) {
  lua_Debug ar;
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "S", &ar) &&
      tide__is_own_source(ar.source))
    lua_pushliteral(L, "");
  else
    luaL_where(L, 1);
  lua_pushfstring(L, "module '%s' not found:%s", lua_tostring(L, 1),
                  lua_tostring(L, 4));
  lua_concat(L, 2);
  return lua_error(L);
}

/* Searcher i (ctx; 0: none yet) returned loader, data: runs the loader if
 * it is one, else notes its message and asks searcher i + 1. Stack: name,
 * LOADED, searchers, msg [, loader, data]. */
static int search_k(lua_State *L, int status, lua_KContext ctx) {
  lua_Integer i = (lua_Integer)ctx;
  (void)status;
  if (i > 0) {
    if (lua_isfunction(L, -2)) {
      mark_loading(L); /* name, LOADED, searchers, msg, [mark,] loader, data */
      lua_rotate(L, -2, 1); /* loader <-> data */
      lua_pushvalue(L, 1);  /* loader(name, data) */
      lua_pushvalue(L, -3);
      lua_callk(L, 2, 1, 0, loaded_k);
      return loaded_k(L, LUA_OK, 0);
    }
    if (lua_isstring(L, -2)) { /* msg = msg .. "\n\t" .. its message */
      lua_pop(L, 1);
      lua_pushliteral(L, "\n\t");
      lua_insert(L, -2);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 2);
    }
  }
  if (lua_rawgeti(L, 3, ++i) == LUA_TNIL)
    return not_found(L);
  lua_pushvalue(L, 1);
  lua_callk(L, 1, 2, (lua_KContext)i, search_k);
  return search_k(L, LUA_OK, (lua_KContext)i);
}

/* require(name) -> module, loader data */
static int l_require(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE); /* 2 */
  lua_getfield(L, 2, name);
  if (lua_toboolean(L, -1))
    return 1; /* loaded already */
  lua_pop(L, 1);
  {
    int w = wait_loading(L);
    if (w >= 0)
      return w;
  }
  if (lua_getfield(L, lua_upvalueindex(1), "searchers") != LUA_TTABLE) /* 3 */
    return luaL_error(L, "'package.searchers' must be a table");
  lua_pushliteral(L, ""); /* 4: the searchers' messages */
  return search_k(L, LUA_OK, 0);
}

/* Makes the global require this one, if the state has Lua's (a state
 * without the package library keeps what it has). */
void tide__install_require(lua_State *L) {
  int top = lua_gettop(L);
  if (lua_getglobal(L, "package") == LUA_TTABLE &&
      lua_getglobal(L, "require") == LUA_TFUNCTION) {
    lua_pop(L, 1); /* the package table, the closure's upvalue */
    lua_pushcclosure(L, l_require, 1);
    lua_setglobal(L, "require");
  }
  lua_settop(L, top);
}
