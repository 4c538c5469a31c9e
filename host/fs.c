/*
 * fs.c: "tide.fs", files without blocking, on libuv fs requests. (stub)
 */
#include "internal.h"

int luaopen_tide_fs(lua_State *L) {
  lua_newtable(L);
  return 1;
}
