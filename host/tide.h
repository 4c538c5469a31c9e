/*
 * tide.h: the public C API of tide, a Lua 5.4 runtime with asyncio-style
 * tasks on a libuv loop. This is the only installed header.
 *
 * A tide_runtime owns one lua_State (standard libraries, "tide" preloaded)
 * and runs Lua code as tasks on a libuv loop: its own, or one the
 * application already runs. Two ways to run code:
 *
 *   - blocking: tide_runtime_run() runs a function as the main task of a
 *     loop until it ends (like asyncio.run; what the `tide` command does);
 *   - in the background: tide_spawn(), tide_dostring(), tide_dofile() start
 *     a task and return at once; the task advances whenever the loop runs
 *     (the application's own uv_run, or tide_loop_run() on tide's loop) and
 *     a callback receives its results or its error.
 *
 * C functions exposed to Lua may suspend the calling task with
 * tide_suspend() and complete it later from any libuv callback with
 * tide_complete() or tide_fail(); if the task is cancelled meanwhile, the
 * cancel callback runs once so the application can abort its operation.
 *
 * Every function must be called on the loop's thread. Nothing here is
 * reentrant with uv_run on the same loop except where said.
 */
#ifndef TIDE_H
#define TIDE_H

#include <stddef.h>

#include <lua.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TIDE_VERSION "tide 0.1.0"

typedef struct tide_runtime tide_runtime;

/* Options for tide_runtime_new_with(). Zero-initialise, then set. */
typedef struct tide_options {
  /* The loop tide runs on; NULL makes tide create and own one. A loop
   * handed in stays the application's: tide adds handles to it while tasks
   * run and closes them all in tide_runtime_close(). */
  uv_loop_t *loop;
  /* Untrusted scripts: only the base library (without dofile, loadfile),
   * coroutine, string, table, math, utf8, os.clock/time/date/difftime, and
   * require of preloaded modules (no C modules, no files, no io, no
   * os.execute, no debug, no package.loadlib). load takes source only,
   * setmetatable refuses a __gc (Lua runs finalizers with hooks off, out of
   * the instruction limit's reach) and getmetatable gives a stand-in for
   * tide's own; xpcall calls its handler after the unwinding (so that the
   * limit applies in it), string.rep of "" returns at once and table.move
   * refuses more than 2^24 slots; tide has no net, http, fs, process,
   * to_thread or signal there (unless sandbox_modules says), and tide.run
   * inside a task (it would hold the loop) is refused. */
  int sandbox;
  /* Bytes the Lua state may hold; 0 for no limit. An allocation over it made
   * while a task (or a callback of the script's) runs fails as "not enough
   * memory" there; the host and other tasks go on. tide's own work (waking
   * a task whose wait ended, ending a gather or task group) is not under
   * it, so a task waiting on one that ran out of memory still wakes. */
  size_t memory_limit;
  /* Lua instructions a task may run in one step (between two suspensions);
   * 0 for no limit. Past it the task fails with an error of kind "limit".
   * The coroutines the task resumes count against the same budget; a call
   * of a C function counts as one instruction however long it runs (a
   * pathological string.find pattern, say), and outside a sandbox Lua runs
   * an xpcall message handler and finalizers out of its reach. */
  unsigned long instruction_limit;
  /* With sandbox: more for the scripts, as NULL-terminated lists of names
   * (NULL: none; an unknown name makes tide_runtime_new_with fail, saying
   * so on stderr). sandbox_libs: standard libraries opened whole: "io",
   * "os", "debug" (which can unset the instruction limit's hook), "package"
   * (require of files and C modules, package.loadlib). sandbox_modules: tide
   * modules scripts may require: "tide.net", "tide.http", "tide.fs",
   * "tide.process", "tide.thread" (tide.to_thread: its worker states have
   * every standard library) and "tide.signal" (tide.signal). */
  const char *const *sandbox_libs;
  const char *const *sandbox_modules;
} tide_options;

/* Creates a runtime with default options on `loop` (NULL: tide's own).
 * Returns NULL when out of memory. Free it with tide_runtime_close(). */
tide_runtime *tide_runtime_new(uv_loop_t *loop);

/* Creates a runtime with the given options (NULL: defaults). */
tide_runtime *tide_runtime_new_with(const tide_options *opts);

/* The runtime's lua_State, owned by the runtime, valid until close. Use it
 * only between tasks (not from inside a libuv callback that tide is
 * running), e.g. to push functions and arguments for tide_spawn. */
lua_State *tide_runtime_L(tide_runtime *rt);

/* The loop the runtime runs on (the application's, or tide's own). */
uv_loop_t *tide_runtime_loop(tide_runtime *rt);

/* Blocking: pops a function and `nargs` arguments and runs the function as
 * the main task until it ends, driving the loop itself (uv_run); tasks left
 * running then are cancelled and allowed to finish. Returns LUA_OK with the
 * results on the stack (*nresults of them), or an error status with the
 * error value on top. Not to be called from inside a running loop: from a
 * done callback or a C function a task called it is refused (LUA_ERRRUN,
 * the function and arguments popped, a message on top); a task runs a
 * nested loop with tide.run from its Lua code instead. */
int tide_runtime_run(tide_runtime *rt, int nargs, int *nresults);

/* Receives the end of a task started from C. `status` is LUA_OK with the
 * task's `nresults` results on top of L, or an error status with the error
 * value on top (a cancelled task: an error whose kind is "cancelled"; a
 * task over the memory limit: LUA_ERRRUN with "not enough memory"). The
 * values are popped after the callback returns (it may pop them itself); L
 * is valid only during it. It is the application's code: the memory limit
 * does not apply to what it allocates. The instruction limit does, with a
 * budget of its own: Lua calls it makes may run the script's metamethods
 * (luaL_tolstring calls __tostring), which must not hang the host. It runs
 * under lua_pcall: a Lua API call that raises in it (luaL_tolstring on an
 * error value whose __tostring fails, or runs past the limit) ends the
 * callback there, reported on stderr. It may start tasks (tide_spawn,
 * tide_dostring); tide_runtime_run and tide_runtime_close are refused
 * there. */
typedef void (*tide_done_cb)(tide_runtime *rt, int status, lua_State *L,
                             int nresults, void *data);

/* Background: pops a function and `nargs` arguments from tide_runtime_L()
 * and starts the function as a task; `done` (may be NULL) runs when it
 * ends. The task advances as the loop runs. Returns 0, or a negative value
 * (and pops nothing) when the top is not a function. */
int tide_spawn(tide_runtime *rt, int nargs, tide_done_cb done, void *data);

/* Background: loads `code` (named `chunkname`; NULL: the code itself) or
 * the file at `path` (not NULL) and starts it as a task. A syntax error is
 * reported through `done` before the call returns. Returns 0, or the load
 * status. In a sandbox only source is loaded, never bytecode. */
int tide_dostring(tide_runtime *rt, const char *code, const char *chunkname,
                  tide_done_cb done, void *data);
int tide_dofile(tide_runtime *rt, const char *path, tide_done_cb done,
                void *data);

/* Drives the loop (uv_run with `mode`) for runtimes on tide's own loop.
 * Returns uv_run's result: non-zero while there is something left to do.
 * On an application's loop, run the application's loop instead (this runs
 * it too, and so the application's callbacks). */
int tide_loop_run(tide_runtime *rt, uv_run_mode mode);

/* How many tasks started from C are still running. */
int tide_pending_tasks(tide_runtime *rt);

/* Cancels every task, lets them clean up (running the loop while they do,
 * for at most 2 s, and only while something is alive on it: the
 * application's callbacks on that loop run meanwhile, inside this call),
 * then closes the Lua state and every handle tide opened; an application's loop
 * is left usable: the handles tide closed finish closing at its next turn,
 * so run it once more (uv_run(loop, UV_RUN_NOWAIT)) before uv_loop_close,
 * which then succeeds once the application closed its own handles. Tasks
 * started from C that had not ended get their done callback with a
 * "cancelled" error. Not from inside a done callback, a cancel callback,
 * a Lua call of this runtime or the close itself (a repeating timer of the
 * application that the close's loop fires again, say): it is refused there,
 * saying so on stderr; close it from the application's own callback (once),
 * or after tide_loop_run returns. On tide's own loop it closes every handle
 * left there, the application's too (without their close callbacks): close
 * yours first, and run the loop (tide_loop_run) until their callbacks ran.
 * The runtime is gone afterwards (but for tide_open's, below).
 * Work already running on libuv's thread pool (a to_thread job, a blocking
 * file read, a name lookup) cannot be stopped: on tide's own loop close
 * waits for it; on an application's loop it keeps that loop busy until it
 * ends, so run the loop (UV_RUN_DEFAULT) before uv_loop_close there.
 * For a runtime from tide_open(), close does the same for the tasks started
 * from C and the loop tide made for them, and leaves the Lua state (and the
 * runtime, still usable) to the application, which closes it with
 * lua_close() afterwards. */
void tide_runtime_close(tide_runtime *rt);

/* ---- async C functions ---------------------------------------------- */

typedef struct tide_pending tide_pending;
typedef void (*tide_cancel_cb)(tide_pending *p, void *data);

/* Suspends the task that called the C function, to be completed later by
 * tide_complete or tide_fail. It does not return (it yields, lua_yieldk):
 * start the operation first, then use it as the C function's return:
 *     return tide_suspend(L, on_cancel, data, &pending);
 * *pending (pending not NULL) is the handle to complete it with. It works
 * in a user coroutine of the task too (coroutine.wrap), whose yield it
 * passes up to the scheduler. If the task is cancelled
 * first, on_cancel(pending, data) runs once and the handle is dead after it
 * returns: pass an on_cancel whenever the application keeps the handle
 * (with NULL it cannot know when the handle dies). If the call cannot
 * suspend (L is not a task, or is at a point where it may not yield: a
 * metamethod, a table.sort comparator...; or out of memory), on_cancel(NULL,
 * data) runs, *pending is set to NULL and an error is raised: an operation
 * started before the call can be undone there. */
int tide_suspend(lua_State *L, tide_cancel_cb on_cancel, void *data,
                 tide_pending **pending);

/* The state to push completion values on (the runtime's main state). */
lua_State *tide_pending_L(tide_pending *p);

/* Completes the suspended call: the `nresults` values on top of
 * tide_pending_L(p) are popped and become the C function's results. The
 * handle is dead afterwards (and after its on_cancel ran: completing a dead
 * handle is undefined), and a second completion before the task resumed is
 * ignored. Call from any libuv callback (not from inside Lua code of the
 * same runtime, nor from its on_cancel). A task cancelled after this but before it
 * resumed drops the values (as asyncio drops a result a cancel overtakes):
 * a value that owns a resource is released by its __gc when collected, or
 * at once if its metatable has a function "__tide_drop" (called with it). */
void tide_complete(tide_pending *p, int nresults);

/* Fails the suspended call with the value on top of tide_pending_L(p) (a
 * string or a tide error), raised in the task. The handle is dead after. */
void tide_fail(tide_pending *p);

/* ---- modules -------------------------------------------------------- */

/* Makes `require(name)` call `open` (a luaopen_* style function). */
void tide_preload(tide_runtime *rt, const char *name, lua_CFunction open);

/* Makes `require(name)` run the Lua source `src` (len bytes). */
void tide_preload_lua(tide_runtime *rt, const char *name, const char *src,
                      size_t len);

/* Installs tide into a lua_State made elsewhere (what `require "tide"`
 * does under plain lua5.4): creates the runtime on first call, keeps it in
 * the registry, and returns it. */
tide_runtime *tide_open(lua_State *L);

/* luaopen function of the C half of the tide module. */
int luaopen_tide_core(lua_State *L);

#ifdef __cplusplus
}
#endif
#endif
