/*
 * thread.c: "tide.thread", tide.to_thread: functions run on libuv's thread pool in worker Lua states. (stub)
 */
#include "internal.h"

int luaopen_tide_thread(lua_State *L) {
  lua_newtable(L);
  return 1;
}
