/*
 * coroutine.c: coroutine.resume and coroutine.wrap as tide installs them
 * (lua/tide/coroutine.lua), so that a tide call made inside a user
 * coroutine (a generator made with coroutine.wrap, say) suspends the whole
 * task. A park yields a private sentinel (task.c); these pass such a yield
 * up to the scheduler and resume the inner coroutine with what the
 * scheduler sends back, so the coroutine and its task wait together.
 * Anything else is lcorolib.c's behaviour, messages included.
 *
 * Two guards keep that chain whole:
 * - a coroutine waiting that way is "passing" (a weak set in the
 *   registry), and so is a task's own coroutine while the task waits
 *   (marked when coroutine.running hands it out, the one way to get it):
 *   like a coroutine that resumed another, they are "normal" to
 *   coroutine.status, and resume and close refuse them, as Lua refuses a
 *   normal coroutine (another task resuming one would get the park's
 *   values);
 * - a resume made where the resumer cannot yield (under a string.gsub
 *   callback, say) counts in rt->unyieldable while it runs: a park below
 *   it fails at once (tide__current), as a park made there directly does,
 *   rather than parking a task whose yield can never reach the loop (a
 *   nested tide.run starts its count from 0: its loop is its own).
 */
#include <string.h>

#include "internal.h"

static char passing_key;

/* The coroutine being resumed: argument 1 of resume, upvalue 1 of a
 * wrap's function. */
#define CO_INDEX(wrap) ((wrap) ? lua_upvalueindex(1) : 1)

/* Marks the coroutine at idx passing (on) or not. */
static void set_passing(lua_State *L, int idx, int on) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &passing_key);
  lua_pushvalue(L, idx);
  if (on)
    lua_pushboolean(L, 1);
  else
    lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Whether co (at idx) waits in a tide call: passing, or a task's own
 * coroutine parked (see tide__co_own). */
static int waits(lua_State *L, lua_State *co, int idx) {
  int on;
  if (co == L || lua_status(co) != LUA_YIELD)
    return 0;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &passing_key);
  lua_pushvalue(L, idx);
  on = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return on;
}

/* L is a task's own coroutine, handed to Lua code (coroutine.running):
 * marked for good, as it yields only to the scheduler. A pooled coroutine
 * that runs another task later is a task's coroutine still. */
void tide__co_own(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &passing_key);
  lua_pushthread(L);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static int resume_k(lua_State *L, int status, lua_KContext wrap);

/* Ends a resume as lcorolib's luaB_coresume and luaB_auxwrap do: n
 * results of co on top (n >= 0), or its error (n < 0). */
static int finish(lua_State *L, lua_State *co, int n, int wrap) {
  if (!wrap) {
    lua_pushboolean(L, n >= 0);
    lua_insert(L, n >= 0 ? -(n + 1) : -2);
    return n >= 0 ? n + 1 : 2;
  }
  if (n >= 0)
    return n;
  n = lua_status(co);
  if (n != LUA_OK && n != LUA_YIELD) { /* it failed: close its <close>s */
    n = lua_resetthread(co);
    lua_xmove(co, L, 1); /* what the last of them raised, if any */
  }
  if (n != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
    luaL_where(L, 1);
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  return lua_error(L);
}

/* Resumes the coroutine with the values above index base, and again with
 * what the scheduler sends back for as long as it yields a park. */
static int step(lua_State *L, int base, int wrap) {
  tide_runtime *rt = tide__rt(L);
  lua_State *co = lua_tothread(L, CO_INDEX(wrap));
  int narg = lua_gettop(L) - base, status, nres, blocked;
  if (waits(L, co, CO_INDEX(wrap))) {
    lua_pushliteral(L, "cannot resume non-suspended coroutine");
    return finish(L, co, -1, wrap);
  }
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return finish(L, co, -1, wrap);
  }
  tide__limit_child(L, co);
  blocked = !lua_isyieldable(L);
  lua_xmove(L, co, narg);
  rt->unyieldable += blocked;
  status = lua_resume(co, L, narg, &nres);
  rt->unyieldable -= blocked;
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_xmove(co, L, 1); /* the error */
    tide__limit_after(L);
    return finish(L, co, -1, wrap);
  }
  tide__limit_after(L);
  if (!lua_checkstack(L, nres + 1)) {
    lua_pop(co, nres);
    lua_pushliteral(L, "too many results to resume");
    return finish(L, co, -1, wrap);
  }
  lua_xmove(co, L, nres);
  if (status == LUA_YIELD && nres >= 1 &&
      lua_touserdata(L, -nres) == tide__sentinel()) { /* a park: pass it up */
    set_passing(L, CO_INDEX(wrap), 1);
    return lua_yieldk(L, nres, wrap, resume_k);
  }
  return finish(L, co, nres, wrap);
}

/* Back from the scheduler: the values for the park are above the
 * function's own arguments (the coroutine for resume, none for wrap). */
static int resume_k(lua_State *L, int status, lua_KContext wrap) {
  (void)status;
  set_passing(L, CO_INDEX(wrap), 0);
  return step(L, wrap ? 0 : 1, (int)wrap);
}

/* coroutine.resume(co, ...) */
static int co_resume(lua_State *L) {
  luaL_argexpected(L, lua_tothread(L, 1) != NULL, 1, "thread");
  return step(L, 1, 0);
}

static int co_wrapped(lua_State *L) {
  return step(L, 0, 1);
}

/* coroutine.wrap(f) */
static int co_wrap(lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, co_wrapped, 1);
  return 1;
}

/* lcorolib's status of co (argument 1), a waiting one being "normal". */
static const char *status_of(lua_State *L, lua_State *co) {
  lua_Debug ar;
  if (co == L)
    return "running";
  switch (lua_status(co)) {
    case LUA_YIELD:
      return waits(L, co, 1) ? "normal" : "suspended";
    case LUA_OK:
      if (lua_getstack(co, 0, &ar)) /* it resumed another */
        return "normal";
      return lua_gettop(co) == 0 ? "dead" : "suspended"; /* not started */
    default: /* it failed */
      return "dead";
  }
}

/* coroutine.status(co) */
static int co_status(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co != NULL, 1, "thread");
  lua_pushstring(L, status_of(L, co));
  return 1;
}

/* coroutine.close(co) */
static int co_close(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  const char *st;
  luaL_argexpected(L, co != NULL, 1, "thread");
  st = status_of(L, co);
  if (strcmp(st, "dead") != 0 && strcmp(st, "suspended") != 0)
    return luaL_error(L, "cannot close a %s coroutine", st);
  if (lua_resetthread(co) == LUA_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_xmove(co, L, 1); /* its error */
  return 2;
}

static const luaL_Reg funcs[] = {
  {"co_resume", co_resume}, {"co_wrap", co_wrap}, {"co_status", co_status},
  {"co_close", co_close}, {NULL, NULL}};

/* [-0, +0, m] Adds co_resume, co_wrap, co_status and co_close to the
 * module table on top. */
int tide__open_coroutine(lua_State *L) {
  tide__registry_weak(L, &passing_key, "k"); /* the passing set */
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
  return 0;
}
