/*
 * module.c: the Lua module form of tide (tide.so), for Debian's lua5.4 and
 * any host that loads C modules: `require "tide"` creates the runtime in
 * that lua_State (once) and returns the tide module. Outside a task there
 * is no loop running; tide.run(main) starts one, as in asyncio.run.
 */
#include <stdlib.h>

#include <lauxlib.h>

#include "tide.h"

int luaopen_tide(lua_State *L);
int luaopen_tide_http(lua_State *L);
int luaopen_tide_busted(lua_State *L);

/* Opens the runtime and loads the embedded Lua module name (package.preload
 * has them once tide_open ran): what Lua's C searcher finds in tide.so for
 * the modules written in Lua, whichever is required first. */
static int open_lua(lua_State *L, const char *name) {
#ifdef TIDE_SANITIZE_BUILD
  /* The sanitizer test build starts lua5.4 with the sanitizer runtimes in
   * LD_PRELOAD (cmake/tests.cmake); the programs the specs start (curl,
   * python3, sh) must not inherit them. */
  unsetenv("LD_PRELOAD");
#endif
  tide_open(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  lua_pushstring(L, name);
  lua_call(L, 1, 1);
  return 1;
}

int luaopen_tide(lua_State *L) { return open_lua(L, "tide"); }
int luaopen_tide_http(lua_State *L) { return open_lua(L, "tide.http"); }
int luaopen_tide_busted(lua_State *L) { return open_lua(L, "tide.busted"); }
