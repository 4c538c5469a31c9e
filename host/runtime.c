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
  tide_runtime *rt = tide__arena_rt(L);
  if (rt)
    return rt;
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
 * who: CALL_USER, the script's code, under its limits; CALL_APP, the
 * application's C code (a done callback), under the instruction limit
 * only (it may run the script's metamethods: luaL_tolstring); CALL_RUNTIME,
 * tide's own. Returns the pcall status. */
int tide__call_protected(lua_State *L, int nargs, const char *what, int who) {
  tide_runtime *rt = tide__rt(L);
  int base = lua_gettop(L) - nargs, st;
  int cap = who == CALL_USER, limit = who != CALL_RUNTIME && rt->instruction_limit;
  lua_Hook hook = lua_gethook(L);
  int mask = lua_gethookmask(L), count = lua_gethookcount(L);
  tide__take_stop_hook(rt->sched); /* lua5.4's Ctrl-C is the run's, not its */
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  rt->in_callback += cap;
  if (limit) /* a step of its own */
    tide__limit_arm(L);
  st = lua_pcall(L, nargs, 0, base);
  if (limit)
    lua_sethook(L, hook, mask, count);
  rt->in_callback -= cap;
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
  tide__open_coroutine(L);
  tide__open_waitlist(L);
  tide__open_queue(L);
  luaL_setfuncs(L, loop_funcs, 0);
  tide__install_require(L); /* a module's top level may suspend */
  return 1;
}

/* ---- helpers shared by the C modules ----------------------------------- */

/* Installs tide's coroutine.wrap and resume in L (require
 * "tide.coroutine", which require "tide" does too) before tasks first run
 * from C: they let an async C function (tide_suspend) called in a user
 * coroutine suspend the task, where the stock ones took the park's yield
 * for the coroutine's own. A failure (no memory) is left to the first task
 * to meet. */
void tide__load_coroutine(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  int top = lua_gettop(L);
  if (rt->co_installed || rt->sandbox) /* a sandbox's are, since its start: its
                                        * global require is the script's */
    return;
  rt->co_installed = 1;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "tide.coroutine");
  (void)lua_pcall(L, 1, 0, 0);
  lua_settop(L, top);
}

/* [-0, +1, m] Pushes the table the registry holds at key, made on first
 * use. */
void tide__registry_table(lua_State *L, const void *key) {
  tide__registry_weak(L, key, NULL);
}

/* [-0, +1, m] Likewise, a table made with weak mode (as __mode: "k", "v",
 * "kv"; NULL: strong). A module opened again in the state (tide.core is,
 * by the command and by require) keeps the table it had. */
void tide__registry_weak(lua_State *L, const void *key, const char *mode) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    if (mode) {
      lua_createtable(L, 0, 1);
      lua_pushstring(L, mode);
      lua_setfield(L, -2, "__mode");
      lua_setmetatable(L, -2);
    }
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
  }
}

int tide__buf_add(tide_buf *b, const void *p, size_t n) {
  if (n == 0)
    return 0;
  if (b->cap - b->n < n) {
    size_t cap = b->cap ? b->cap : 256;
    char *np;
    while (cap - b->n < n)
      cap *= 2;
    if ((np = realloc(b->p, cap)) == NULL)
      return -1;
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
  return 0;
}

void tide__buf_free(tide_buf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

void tide__new_type(lua_State *L, const char *name, const luaL_Reg *methods,
                    lua_CFunction gc, lua_CFunction close,
                    lua_CFunction tostring) {
  if (luaL_newmetatable(L, name)) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, close ? close : gc);
    lua_setfield(L, -2, "__close");
    if (tostring) {
      lua_pushcfunction(L, tostring);
      lua_setfield(L, -2, "__tostring");
    }
  }
  lua_pop(L, 1);
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
  lua_pushcfunction(L, luaopen_tide_net);
  lua_setfield(L, -2, "tide.net");
  lua_pushcfunction(L, luaopen_tide_http_core);
  lua_setfield(L, -2, "tide.http.core");
  lua_pushcfunction(L, luaopen_tide_http_parser);
  lua_setfield(L, -2, "tide.http.parser");
  lua_pushcfunction(L, luaopen_tide_fs);
  lua_setfield(L, -2, "tide.fs");
  lua_pushcfunction(L, luaopen_tide_process);
  lua_setfield(L, -2, "tide.process");
  lua_pushcfunction(L, luaopen_tide_thread);
  lua_setfield(L, -2, "tide.thread");
  lua_pushcfunction(L, luaopen_tide_signal);
  lua_setfield(L, -2, "tide.signal");
  for (i = 0; tide__lua_modules[i].name; i++) {
    lua_pushinteger(L, i);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, tide__lua_modules[i].name);
  }
  lua_pop(L, 1);
}

/* Loads the embedded "tide" module (through its preload entry). */
static int luaopen_tide_lua(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_getfield(L, -1, "tide");
  lua_pushliteral(L, "tide");
  lua_call(L, 1, 1);
  return 1;
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

static void on_sigpipe(int sig) {
  (void)sig;
}

tide_runtime *tide_open(lua_State *L) {
  tide_runtime *rt = make_rt(L);
  struct sigaction sa;
  /* A write to a closed peer (socket, pipe) must be an EPIPE error, not the
   * end of the process: also under plain lua5.4 with tide.so. A handler
   * the application installed (or SIG_IGN) stays. Caught by a handler that
   * does nothing rather than ignored: an ignored signal stays ignored
   * across exec, and the children of os.execute and io.popen (`yes | head`,
   * a pipeline with pipefail) must die of SIGPIPE as under lua5.4. */
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigpipe;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
  }
  luaL_requiref(L, "tide.core", luaopen_tide_core, 0);
  lua_pop(L, 1);
  return rt;
}

/* Allocation accounting for tide_options.memory_limit: the limit applies
 * to allocations made while user code runs (a task step, or a callback in
 * a protected call), so the scheduler's own work between them never fails
 * half-way. */
typedef struct tide_mem {
  size_t used, limit;
  tide_runtime *rt;
  tide_arena *arena; /* the allocator under the accounting (alloc.c) */
} tide_mem;

static void *mem_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  tide_mem *m = ud;
  size_t old = ptr ? osize : 0;
  void *np;
  if (nsize == 0) {
    tide__arena_alloc(m->arena, ptr, osize, 0);
    m->used -= old;
    return NULL;
  }
  if (nsize > old && m->rt && (m->rt->current || m->rt->in_callback) &&
      m->used + (nsize - old) > m->limit)
    return NULL; /* Lua collects and retries, then raises "not enough memory" */
  np = tide__arena_alloc(m->arena, ptr, osize, nsize);
  if (np)
    m->used = m->used - old + nsize;
  return np;
}

/* load() that takes text only: binary chunks can crash the VM. */
static int safe_load(lua_State *L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  if (n < 3) { /* [load, chunk, chunkname] + mode */
    lua_settop(L, 3);
    lua_pushliteral(L, "t");
  } else {
    lua_pushliteral(L, "t");
    lua_replace(L, 4);
  }
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* setmetatable without finalizers: Lua runs a __gc with hooks off, so the
 * instruction limit could not stop an endless one, and one would freeze
 * the loop (or the runtime's close). */
static int safe_setmetatable(lua_State *L) {
  if (lua_istable(L, 2)) {
    lua_pushliteral(L, "__gc");
    if (lua_rawget(L, 2) != LUA_TNIL)
      return luaL_argerror(L, 2, "a __gc metamethod is not available in a "
                                 "sandbox (a finalizer runs outside the "
                                 "instruction limit)");
    lua_pop(L, 1);
  }
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 2, 1);
  return 1;
}

/* Gives tide's metatables a __metatable ({__name = name}), so that a
 * sandboxed script's getmetatable() gets a stand-in: written to, the real
 * one would take a __gc (which Lua runs with hooks off, out of the
 * instruction limit's reach) that every new object of the type picks up.
 * C code reads the real ones (lua_getmetatable). */
static void protect_metatables(lua_State *L, tide_runtime *rt) {
  int i;
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX)) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TTABLE &&
        strncmp(lua_tostring(L, -2), "tide.", 5) == 0) {
      lua_pushliteral(L, "__metatable");
      if (lua_rawget(L, -2) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushvalue(L, -3);
        lua_setfield(L, -2, "__name");
        lua_setfield(L, -2, "__metatable");
      } else {
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  for (i = 0; i < 2; i++) { /* the task's: the failed one is no registry name */
    lua_rawgeti(L, LUA_REGISTRYINDEX, i ? rt->task_gcmt_ref : rt->task_mt_ref);
    if (lua_istable(L, -1)) {
      lua_createtable(L, 0, 1);
      lua_pushliteral(L, "tide.Task");
      lua_setfield(L, -2, "__name");
      lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
  }
}

/* The sandbox's xpcall, string.rep and table.move (see open_sandbox). */
static const char sandbox_lua[] =
  "local pcall, type, error, select = pcall, type, error, select\n"
  "local mtype, rep, move = math.type, string.rep, table.move\n"
  "local function finish(msgh, ok, ...)\n"
  "  if ok then return true, ... end\n"
  "  return false, select(2, pcall(msgh, (...)))\n"
  "end\n"
  "function xpcall(f, msgh, ...)\n"
  "  if type(msgh) ~= 'function' then\n"
  "    error(\"bad argument #2 to 'xpcall' (function expected, got \" .. type(msgh) .. ')', 2)\n"
  "  end\n"
  "  return finish(msgh, pcall(f, ...))\n"
  "end\n"
  "function string.rep(s, n, sep)\n"
  "  if (s == '' and (sep == nil or sep == '')) and mtype(n) then return '' end\n"
  "  return rep(s, n, sep)\n"
  "end\n"
  "function table.move(a1, f, e, t, a2)\n"
  "  if mtype(f) and mtype(e) and e - f >= 1 << 24 then\n"
  "    error(\"bad argument #3 to 'move' (more than 2^24 elements to move in a sandbox)\", 2)\n"
  "  end\n"
  "  return move(a1, f, e, t, a2)\n"
  "end\n";

/* tide.<name> in a sandbox: its module is not there. */
static int not_in_sandbox(lua_State *L) {
  return tide__raise_kind_at_user(L, "invalid_state", "tide.%s is not "
                                  "available in a sandbox",
                                  lua_tostring(L, lua_upvalueindex(1)));
}

/* Whether name is in the NULL-terminated list (NULL: an empty one). */
static int listed(const char *const *list, const char *name) {
  for (; list && *list; list++)
    if (strcmp(*list, name) == 0)
      return 1;
  return 0;
}

/* The standard libraries tide_options.sandbox_libs may add. */
static const luaL_Reg sandbox_extra_libs[] = {
  {LUA_IOLIBNAME, luaopen_io}, {LUA_OSLIBNAME, luaopen_os},
  {LUA_DBLIBNAME, luaopen_debug}, {LUA_LOADLIBNAME, luaopen_package},
  {NULL, NULL}};

/* The tide modules tide_options.sandbox_modules may add, each with what it
 * loads later (loaded with it, before require is restricted). */
static const struct {
  const char *name;
  const char *loads[5];
} sandbox_extra_modules[] = {
  {"tide.net", {"tide.net"}},
  {"tide.http", {"tide.http", "tide.http_server", "cjson", "dkjson"}},
  {"tide.fs", {"tide.fs"}},
  {"tide.process", {"tide.process"}},
  {"tide.thread", {"tide.thread"}},
  {"tide.signal", {"tide.signal"}},
  {NULL, {NULL}}};

/* Whether one of the modules mods asks for loads name (it is then left
 * where require finds it). */
static int sandbox_loads(const char *const *mods, const char *name) {
  int i, j;
  for (i = 0; sandbox_extra_modules[i].name; i++)
    if (listed(mods, sandbox_extra_modules[i].name))
      for (j = 0; j < 5 && sandbox_extra_modules[i].loads[j]; j++)
        if (strcmp(sandbox_extra_modules[i].loads[j], name) == 0)
          return 1;
  return 0;
}

/* Whether name is one of the count names at base, stride bytes apart; says
 * on stderr which are when it is not. */
static int known_name(const char *name, const void *base, size_t stride,
                      const char *what, const char *which) {
  const char *const *p = base;
  for (; *p; p = (const char *const *)((const char *)p + stride))
    if (strcmp(*p, name) == 0)
      return 1;
  fprintf(stderr, "tide: %s: no %s (%s)\n", what, name, which);
  return 0;
}

/* Whether every name of the options' lists is one the sandbox knows. */
static int sandbox_lists_ok(const tide_options *opts) {
  const char *const *n;
  int ok = 1;
  for (n = opts->sandbox_libs; n && *n; n++)
    ok &= known_name(*n, &sandbox_extra_libs[0].name, sizeof(sandbox_extra_libs[0]),
                     "sandbox_libs", "io, os, debug, package");
  for (n = opts->sandbox_modules; n && *n; n++)
    ok &= known_name(*n, &sandbox_extra_modules[0].name, sizeof(sandbox_extra_modules[0]),
                     "sandbox_modules", "tide.net, tide.http, tide.fs, tide.process, "
                                        "tide.thread, tide.signal");
  return ok;
}

/* require in a sandbox: preloaded (and already loaded) modules only. */
static void restrict_package(lua_State *L) {
  int i;
  lua_getglobal(L, "package");
  lua_pushnil(L);
  lua_setfield(L, -2, "loadlib");
  lua_pushnil(L);
  lua_setfield(L, -2, "searchpath");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "path");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "cpath");
  lua_getfield(L, -1, "searchers");
  for (i = (int)luaL_len(L, -1); i >= 2; i--) {
    lua_pushnil(L);
    lua_rawseti(L, -2, i);
  }
  lua_pop(L, 2);
}

/* The sandbox's libraries: no files, processes, debug or C modules, but for
 * those of libs (see sandbox_extra_libs); require is restricted later
 * (restrict_package), once tide and the modules asked for are loaded. */
static void open_sandbox(lua_State *L, const char *const *extra) {
  static const luaL_Reg libs[] = {
    {LUA_GNAME, luaopen_base}, {LUA_LOADLIBNAME, luaopen_package},
    {LUA_COLIBNAME, luaopen_coroutine}, {LUA_TABLIBNAME, luaopen_table},
    {LUA_OSLIBNAME, luaopen_os}, {LUA_STRLIBNAME, luaopen_string},
    {LUA_MATHLIBNAME, luaopen_math}, {LUA_UTF8LIBNAME, luaopen_utf8},
    {NULL, NULL}};
  static const char *const base_out[] = {"dofile", "loadfile", NULL};
  static const char *const os_keep[] = {"clock", "time", "date", "difftime",
                                        NULL};
  const luaL_Reg *lib;
  int i;
  for (lib = libs; lib->func; lib++) {
    luaL_requiref(L, lib->name, lib->func, 1);
    lua_pop(L, 1);
  }
  for (i = 0; base_out[i]; i++) {
    lua_pushnil(L);
    lua_setglobal(L, base_out[i]);
  }
  lua_getglobal(L, "load");
  lua_pushcclosure(L, safe_load, 1);
  lua_setglobal(L, "load");
  lua_getglobal(L, "setmetatable");
  lua_pushcclosure(L, safe_setmetatable, 1);
  lua_setglobal(L, "setmetatable");
  /* C calls the instruction limit cannot stop: xpcall's message handler
   * (Lua runs it with hooks off after a hook raised: here it runs after
   * the unwinding, as a plain call), string.rep of "" (a loop of n empty
   * copies: no memory for the cap to stop) and table.move over 2^53
   * slots */
  if (luaL_loadbufferx(L, sandbox_lua, sizeof(sandbox_lua) - 1, "=sandbox", "t") == LUA_OK)
    lua_call(L, 0, 0);
  else
    lua_pop(L, 1);
  if (!listed(extra, LUA_OSLIBNAME)) {
    lua_getglobal(L, "os"); /* keep only the clock */
    lua_newtable(L);
    for (i = 0; os_keep[i]; i++) {
      lua_getfield(L, -2, os_keep[i]);
      lua_setfield(L, -2, os_keep[i]);
    }
    lua_pushvalue(L, -1);
    lua_setglobal(L, "os");
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "os");
    lua_pop(L, 3);
  }
  for (lib = sandbox_extra_libs; lib->func; lib++)
    if (listed(extra, lib->name) && strcmp(lib->name, LUA_OSLIBNAME) != 0 &&
        strcmp(lib->name, LUA_LOADLIBNAME) != 0) {
      luaL_requiref(L, lib->name, lib->func, 1);
      lua_pop(L, 1);
    }
}

/* Undoes a tide_runtime_new_with that cannot finish; returns NULL. */
static tide_runtime *new_failed(lua_State *L, tide_mem *m, tide_arena *a) {
  lua_close(L);
  free(m);
  tide__arena_free(a);
  return NULL;
}

tide_runtime *tide_runtime_new_with(const tide_options *opts) {
  static const tide_options defaults;
  tide_arena *a = tide__arena_new();
  lua_State *L = tide__newstate(a);
  tide_runtime *rt;
  tide_mem *m = NULL;
  if (opts == NULL)
    opts = &defaults;
  if (L == NULL || (opts->sandbox && !sandbox_lists_ok(opts))) {
    if (L)
      lua_close(L);
    tide__arena_free(a);
    return NULL;
  }
  if (opts->memory_limit) {
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
      lua_close(L);
      tide__arena_free(a);
      return NULL;
    }
    m->limit = opts->memory_limit;
    m->arena = a;
    m->used = (size_t)lua_gc(L, LUA_GCCOUNT) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB);
    lua_setallocf(L, mem_alloc, m);
  }
  if (opts->sandbox)
    open_sandbox(L, opts->sandbox_libs);
  else
    luaL_openlibs(L);
  rt = tide_open(L);
  rt->sandbox = opts->sandbox != 0;
  rt->instruction_limit = opts->instruction_limit; /* before tide loads */
  if (opts->sandbox) {
    /* load tide now, then hide its internals (park, wake...) and sockets */
    static const char *const hidden[] = {"tide.core", "tide.coroutine",
                                         "tide.net", "tide.main", "tide.http.core",
                                         "tide.http.parser", "tide.http",
                                         "tide.http_server", "tide.fs",
                                         "tide.process", "tide.thread",
                                         "tide.signal", "tide.fs_lua",
                                         "tide.process_lua", NULL};
    int i, j;
    static const struct { const char *fn, *module; } refused[] = {
      {"to_thread", "tide.thread"}, {"signal", "tide.signal"}, {NULL, NULL}};
    const char *const *mods = opts->sandbox_modules;
    luaL_requiref(L, "tide", luaopen_tide_lua, 0);
    for (i = 0; refused[i].fn; i++) /* their modules are hidden below */
      if (!listed(mods, refused[i].module)) {
        lua_pushstring(L, refused[i].fn);
        lua_pushcclosure(L, not_in_sandbox, 1);
        lua_setfield(L, -2, refused[i].fn);
      }
    lua_pop(L, 1);
    /* the modules asked for, and what they load later, load now: once
     * hidden (below), tide's internals can no longer be found */
    for (i = 0; sandbox_extra_modules[i].name; i++)
      if (listed(mods, sandbox_extra_modules[i].name))
        for (j = 0; j < 5 && sandbox_extra_modules[i].loads[j]; j++) {
          lua_getglobal(L, "require");
          lua_pushstring(L, sandbox_extra_modules[i].loads[j]);
          if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
            fprintf(stderr, "tide: sandbox_modules: %s: %s\n",
                    sandbox_extra_modules[i].name, lua_tostring(L, -1));
            return new_failed(L, m, a);
          }
        }
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    for (i = 0; hidden[i]; i++)
      if (!sandbox_loads(mods, hidden[i])) {
        lua_pushnil(L);
        lua_setfield(L, -3, hidden[i]);
        lua_pushnil(L);
        lua_setfield(L, -2, hidden[i]);
      }
    lua_pop(L, 2);
    if (!listed(opts->sandbox_libs, LUA_LOADLIBNAME))
      restrict_package(L);
    protect_metatables(L, rt);
  }
  rt->loop = opts->loop;
  if (rt->loop == NULL) { /* one loop for the runtime's whole life */
    rt->owned_loop = malloc(sizeof(uv_loop_t));
    if (rt->owned_loop == NULL || uv_loop_init(rt->owned_loop) != 0) {
      free(rt->owned_loop);
      return new_failed(L, m, a);
    }
    rt->loop = rt->owned_loop;
  }
  rt->owns_L = 1;
  rt->mem = m;
  rt->arena = a;
  tide__arena_set_rt(a, rt);
  rt->instruction_limit = opts->instruction_limit;
  if (m)
    m->rt = rt;
  return rt;
}

tide_runtime *tide_runtime_new(uv_loop_t *loop) {
  tide_options opts;
  memset(&opts, 0, sizeof(opts));
  opts.loop = loop;
  return tide_runtime_new_with(&opts);
}

lua_State *tide_runtime_L(tide_runtime *rt) {
  return rt->L;
}

void tide_runtime_close(tide_runtime *rt) {
  lua_State *L;
  tide_mem *m;
  tide_arena *a;
  uv_loop_t *own;
  if (rt == NULL)
    return;
  if (rt->incb > 0 || rt->current != NULL || rt->closing) {
    /* its own code is on the C stack (or the close's, which runs the loop
     * while tasks clean up, and with it the application's callbacks) */
    fprintf(stderr, "tide: tide_runtime_close called from inside the runtime "
                    "(a done, cancel or loop callback, a Lua call, or the close "
                    "itself): refused; close it from the application's own "
                    "callback instead\n");
    return;
  }
  rt->closing = 1;
  if (!rt->owns_L) { /* tide_open's: the state is the application's */
    if (rt->root)
      tide__root_close(rt); /* tasks started from C, and their loop */
    rt->closing = 0;
    return;
  }
  L = rt->L;
  m = rt->mem;
  a = rt->arena;
  own = rt->owned_loop;
  if (rt->root)
    tide__root_close(rt);
  if (own) { /* close whatever is left on it, then the loop */
    uv_walk(own, tide__walk_close, NULL);
    uv_run(own, UV_RUN_DEFAULT);
    if (uv_loop_close(own) != 0)
      fprintf(stderr, "tide: warning: the runtime's loop still had handles\n");
    free(own);
  }
  tide__net_detach(rt); /* streams still closing on an application's loop */
  if (m)
    m->rt = NULL;
  lua_close(L); /* frees rt: it lives in a userdata of this state */
  free(m);
  tide__arena_free(a); /* after every block of L */
}
