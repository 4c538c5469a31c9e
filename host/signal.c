/*
 * signal.c: "tide.signal", tide.signal(name): waiting for POSIX signals. (stub)
 */
#include "internal.h"

int luaopen_tide_signal(lua_State *L) {
  lua_newtable(L);
  return 1;
}
