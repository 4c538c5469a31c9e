/*
 * process.c: "tide.process", subprocesses on uv_spawn, their pipes as tide streams. (stub)
 */
#include "internal.h"

int luaopen_tide_process(lua_State *L) {
  lua_newtable(L);
  return 1;
}
