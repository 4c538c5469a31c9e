/*
 * runtime.c: the per-state runtime. Owns the tide_runtime (kept in a
 * userdata in the registry, so it lives exactly as long as its lua_State),
 * the preloading of tide's embedded Lua modules, the "tide.core" C module,
 * and the one helper through which C calls into Lua outside a task
 * (tide__call_protected), so an error there is reported, never unwound
 * through libuv frames.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "internal.h"

static char rt_key;

tide_runtime *tide__rt(lua_State *L) {
  tide_runtime *rt;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &rt_key);
  rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (rt == NULL)
    luaL_error(L, "tide is not initialised in this Lua state");
  return rt;
}

/* Prints "tide: <what>: <error>" for the value at idx. */
void tide__report(lua_State *L, const char *what, int idx) {
  const char *msg;
  idx = lua_absindex(L, idx);
  msg = luaL_tolstring(L, idx, NULL);
  fprintf(stderr, "tide: error in %s: %s\n", what, msg);
  fflush(stderr);
  lua_pop(L, 1);
}

static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)",
                            luaL_typename(L, 1));
  }
  luaL_checkstack(L, 10, NULL);
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* [-(nargs+1), +0, -] Calls the function below nargs arguments in
 * protected mode; an error is reported with its traceback and dropped.
 * Returns the pcall status. */
int tide__call_protected(lua_State *L, int nargs, const char *what) {
  int base = lua_gettop(L) - nargs, st;
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  st = lua_pcall(L, nargs, 0, base);
  if (st != LUA_OK) {
    fprintf(stderr, "tide: error in %s: %s\n", what,
            lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    fflush(stderr);
    lua_pop(L, 1);
  }
  lua_remove(L, base);
  return st;
}

/* ---- the tide.core module -------------------------------------------- */

static const luaL_Reg loop_funcs[] = {
  {"run", tide__run}, {NULL, NULL}};

static tide_runtime *make_rt(lua_State *L);

int luaopen_tide_core(lua_State *L) {
  make_rt(L);
  lua_newtable(L);
  tide__open_err(L);
  tide__open_timer(L);
  tide__open_task(L);
  tide__open_waitlist(L);
  tide__open_queue(L);
  luaL_setfuncs(L, loop_funcs, 0);
  return 1;
}

/* package.preload loader for an embedded module (upvalue: its index). */
static int load_embedded(lua_State *L) {
  const tide_embedded *m = &tide__lua_modules[lua_tointeger(L,
                                                lua_upvalueindex(1))];
  const char *name = luaL_checkstring(L, 1);
  if (luaL_loadbuffer(L, m->src, m->len, m->chunkname) != LUA_OK)
    return lua_error(L);
  lua_pushstring(L, name);
  lua_call(L, 1, 1);
  return 1;
}

static void preload(lua_State *L) {
  int i;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_tide_core);
  lua_setfield(L, -2, "tide.core");
  for (i = 0; tide__lua_modules[i].name; i++) {
    lua_pushinteger(L, i);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, tide__lua_modules[i].name);
  }
  lua_pop(L, 1);
}

/* Makes (once) the runtime of this state. */
static tide_runtime *make_rt(lua_State *L) {
  tide_runtime *rt;
  const char *dbg;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &rt_key);
  rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (rt)
    return rt;
  rt = lua_newuserdatauv(L, sizeof(*rt), 0);
  memset(rt, 0, sizeof(*rt));
  rt->L = L;
  dbg = getenv("TIDE_DEBUG");
  rt->debug = dbg && *dbg && strcmp(dbg, "0") != 0;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &rt_key);
  preload(L);
  return rt;
}

tide_runtime *tide_open(lua_State *L) {
  tide_runtime *rt = make_rt(L);
  luaL_requiref(L, "tide.core", luaopen_tide_core, 0);
  lua_pop(L, 1);
  return rt;
}

tide_runtime *tide_runtime_new(uv_loop_t *loop) {
  lua_State *L = luaL_newstate();
  tide_runtime *rt;
  if (L == NULL)
    return NULL;
  signal(SIGPIPE, SIG_IGN);
  luaL_openlibs(L);
  rt = tide_open(L);
  rt->loop = loop;
  rt->owns_L = 1;
  return rt;
}

lua_State *tide_runtime_L(tide_runtime *rt) {
  return rt->L;
}

void tide_runtime_close(tide_runtime *rt) {
  if (rt && rt->owns_L)
    lua_close(rt->L); /* frees rt: it lives in a userdata of this state */
}
