/*
 * tide.h: the public C API of tide, a Lua 5.4 runtime with asyncio-style
 * tasks on a libuv loop. This is the only installed header.
 *
 * A tide_runtime owns a lua_State with the standard libraries and the
 * "tide" module preloaded. Lua code runs as tasks; tide_runtime_run() runs a
 * function on the stack as the main task of a loop until it ends.
 */
#ifndef TIDE_H
#define TIDE_H

#include <lua.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TIDE_VERSION "tide 0.1.0"

typedef struct tide_runtime tide_runtime;

/* Creates a runtime with a fresh lua_State (standard libraries opened,
 * "tide" preloaded). `loop` is the libuv loop tide runs on; NULL makes tide
 * create and own one per run. Returns NULL when out of memory. The caller
 * owns the runtime and frees it with tide_runtime_close(). */
tide_runtime *tide_runtime_new(uv_loop_t *loop);

/* The runtime's lua_State. Owned by the runtime; valid until close. */
lua_State *tide_runtime_L(tide_runtime *rt);

/* Pops a function and `nargs` arguments from the runtime's state and runs
 * the function as the main task until it ends; tasks still running then are
 * cancelled and allowed to finish. Returns LUA_OK with the function's
 * results on the stack, or an error status with the error value on top. */
int tide_runtime_run(tide_runtime *rt, int nargs, int *nresults);

/* Closes the Lua state (collecting every object, which reports failed tasks
 * nobody looked at) and frees the runtime. */
void tide_runtime_close(tide_runtime *rt);

/* Installs tide into a lua_State made elsewhere (what `require "tide"`
 * does under plain lua5.4): creates the runtime on first call, keeps it in
 * the registry, and returns it. */
tide_runtime *tide_open(lua_State *L);

/* luaopen functions for the embedded modules. */
int luaopen_tide_core(lua_State *L);

#ifdef __cplusplus
}
#endif
#endif
