/*
 * embed_test.c: C tests for every function of the embedding API in tide.h
 * (background tasks, async C functions, options, modules, closing). Each
 * test prints "ok N - name" or "not ok N - name: detail"; the process exits
 * non-zero if any failed. It also runs under ASan/LeakSanitizer, so every
 * test frees what it makes.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "tide.h"

#include "check.h"

/* ---- what a done callback saw --------------------------------------- */

typedef struct result {
  int called, status, n;
  char text[256]; /* results joined with ",", or tostring(error) */
  char kind[32];  /* error.kind when the error is a table */
} result;

static void append(result *r, const char *s) {
  size_t len = strlen(r->text);
  snprintf(r->text + len, sizeof r->text - len, "%s%s", len ? "," : "", s);
}

static void on_done(tide_runtime *rt, int status, lua_State *L, int n,
                    void *data) {
  result *r = data;
  int i, base = lua_gettop(L) - (status == LUA_OK ? n : 1) + 1;
  r->called++;
  r->status = status;
  r->n = status == LUA_OK ? n : 0;
  (void)rt;
  r->text[0] = r->kind[0] = '\0';
  if (status == LUA_OK) {
    for (i = 0; i < n; i++) {
      append(r, luaL_tolstring(L, base + i, NULL));
      lua_pop(L, 1);
    }
    return;
  }
  if (lua_type(L, -1) == LUA_TTABLE) {
    if (lua_getfield(L, -1, "kind") == LUA_TSTRING)
      snprintf(r->kind, sizeof r->kind, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  append(r, luaL_tolstring(L, -1, NULL));
  lua_pop(L, 1);
}

/* Open file descriptors of this process. */
static int fd_count(void) {
  int n = 0, fd;
  for (fd = 0; fd < 1024; fd++)
    if (fcntl(fd, F_GETFD) != -1)
      n++;
  return n;
}

static int spawn_code(tide_runtime *rt, const char *code, result *r) {
  lua_State *L = tide_runtime_L(rt);
  if (luaL_loadstring(L, code) != LUA_OK) {
    fprintf(stderr, "load: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  return tide_spawn(rt, 0, on_done, r);
}

/* ---- "testmod": the application's C module with async functions ----- */

/* One per runtime, reached by the module's functions as upvalue 1. */
typedef struct env {
  uv_loop_t *loop;
  lua_State *L;       /* the runtime's state */
  int cancels;        /* cancel callbacks run (hang and delay) */
  int freed;          /* delay operations whose timer handle was freed */
  int notes;          /* testmod.note() calls */
  int started;        /* delay operations started */
  tide_pending *hung; /* the pending hang() call */
} env;

/* A delay(ms, ...) or failwith(ms, value) in flight. */
typedef struct delay_op {
  uv_timer_t timer;
  tide_pending *p;
  env *e;
  int ref, n, fail; /* registry ref of the values to deliver */
} delay_op;

static void free_op(uv_handle_t *h) {
  delay_op *op = h->data;
  op->e->freed++;
  free(op);
}

static void on_delay_timer(uv_timer_t *t) {
  delay_op *op = t->data;
  lua_State *L = tide_pending_L(op->p);
  int i;
  lua_checkstack(L, op->n + 2);
  lua_rawgeti(L, LUA_REGISTRYINDEX, op->ref);
  luaL_unref(L, LUA_REGISTRYINDEX, op->ref);
  for (i = 1; i <= op->n; i++)
    lua_rawgeti(L, -i, i);
  lua_remove(L, -op->n - 1);
  if (op->fail)
    tide_fail(op->p);
  else
    tide_complete(op->p, op->n);
  uv_close((uv_handle_t *)t, free_op);
}

/* Also when tide_suspend could not suspend (p NULL): undo the start. */
static void on_delay_cancel(tide_pending *p, void *data) {
  delay_op *op = data;
  op->e->cancels++;
  luaL_unref(p ? tide_pending_L(p) : op->e->L, LUA_REGISTRYINDEX, op->ref);
  uv_timer_stop(&op->timer);
  uv_close((uv_handle_t *)&op->timer, free_op);
}

static int start_delay(lua_State *L, int fail) {
  env *e = lua_touserdata(L, lua_upvalueindex(1));
  lua_Integer ms = luaL_checkinteger(L, 1);
  int i, n = lua_gettop(L) - 1;
  delay_op *op;
  if (fail)
    luaL_checkany(L, 2), n = 1;
  lua_createtable(L, n, 0);
  for (i = 1; i <= n; i++) {
    lua_pushvalue(L, i + 1);
    lua_rawseti(L, -2, i);
  }
  op = malloc(sizeof *op);
  if (op == NULL)
    return luaL_error(L, "out of memory");
  op->e = e;
  op->n = n;
  op->fail = fail;
  op->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  op->timer.data = op;
  e->started++;
  uv_timer_init(e->loop, &op->timer);
  uv_timer_start(&op->timer, on_delay_timer, (uint64_t)ms, 0);
  return tide_suspend(L, on_delay_cancel, op, &op->p);
}

/* testmod.delay(ms, ...) -> ... after ms milliseconds */
static int t_delay(lua_State *L) { return start_delay(L, 0); }

/* testmod.failwith(ms, v): raises v after ms milliseconds */
static int t_failwith(lua_State *L) { return start_delay(L, 1); }

static void on_hang_cancel(tide_pending *p, void *data) {
  env *e = data;
  e->cancels++;
  e->hung = p == e->hung ? NULL : e->hung;
}

/* testmod.hang(): never completes; only a cancel ends it */
static int t_hang(lua_State *L) {
  env *e = lua_touserdata(L, lua_upvalueindex(1));
  return tide_suspend(L, on_hang_cancel, e, &e->hung);
}

/* testmod.note(): counts (to see clean-up code run) */
static int t_note(lua_State *L) {
  env *e = lua_touserdata(L, lua_upvalueindex(1));
  e->notes++;
  return 0;
}

static int open_testmod(lua_State *L) {
  static const luaL_Reg funcs[] = {{"delay", t_delay},
                                   {"failwith", t_failwith},
                                   {"hang", t_hang},
                                   {"note", t_note},
                                   {NULL, NULL}};
  luaL_newlibtable(L, funcs);
  lua_getfield(L, LUA_REGISTRYINDEX, "testmod.env");
  luaL_setfuncs(L, funcs, 1);
  return 1;
}

/* A runtime with `opts` (NULL: defaults) and "testmod" preloaded. */
static tide_runtime *new_rt(const tide_options *opts, env *e) {
  tide_runtime *rt = tide_runtime_new_with(opts);
  lua_State *L = tide_runtime_L(rt);
  memset(e, 0, sizeof *e);
  e->loop = tide_runtime_loop(rt);
  e->L = L;
  lua_pushlightuserdata(L, e);
  lua_setfield(L, LUA_REGISTRYINDEX, "testmod.env");
  tide_preload(rt, "testmod", open_testmod);
  return rt;
}

/* ---- tests ----------------------------------------------------------- */

static void test_accessors(void) {
  uv_loop_t loop;
  tide_options opts;
  tide_runtime *rt = tide_runtime_new(NULL), *rt2;
  check(rt && tide_runtime_L(rt) && tide_runtime_loop(rt),
        "tide_runtime_new(NULL): a state and tide's own loop", NULL);
  tide_runtime_close(rt);
  uv_loop_init(&loop);
  rt = tide_runtime_new(&loop);
  memset(&opts, 0, sizeof opts);
  opts.loop = &loop;
  rt2 = tide_runtime_new_with(&opts);
  check(rt && rt2 && tide_runtime_loop(rt) == &loop &&
          tide_runtime_loop(rt2) == &loop &&
          tide_runtime_L(rt) != tide_runtime_L(rt2),
        "tide_runtime_loop is the application's loop when given", NULL);
  tide_runtime_close(rt);
  tide_runtime_close(rt2);
  uv_run(&loop, UV_RUN_DEFAULT);
  check(uv_loop_close(&loop) == 0, "idle runtimes leave the loop closable",
        NULL);
  rt = tide_runtime_new_with(NULL);
  check(rt && tide_runtime_loop(rt) != NULL,
        "tide_runtime_new_with(NULL) uses defaults", NULL);
  tide_runtime_close(rt);
}

static void test_spawn(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  lua_State *L = tide_runtime_L(rt);
  result r = {0};
  int rc, left;
  luaL_loadstring(L, "local tide = require 'tide'\n"
                     "local a, b = ...\n"
                     "local r = tide.gather(function() tide.sleep(0.01) "
                     "return a end, function() return b end)\n"
                     "return r[1] + r[2], 'x', nil");
  lua_pushinteger(L, 40);
  lua_pushinteger(L, 2);
  rc = tide_spawn(rt, 2, on_done, &r);
  check(rc == 0 && lua_gettop(L) == 0 && r.called == 0 &&
          tide_pending_tasks(rt) == 1,
        "tide_spawn pops the function and args and returns at once", NULL);
  left = tide_loop_run(rt, UV_RUN_DEFAULT);
  check(r.called == 1 && r.status == LUA_OK && r.n == 3 &&
          strcmp(r.text, "42,x,nil") == 0,
        "tide_loop_run runs the task; done gets its results", r.text);
  check(left == 0 && tide_pending_tasks(rt) == 0 && lua_gettop(L) == 0,
        "after the run: loop idle, no task pending, stack balanced", NULL);
  lua_pushinteger(L, 7);
  rc = tide_spawn(rt, 0, on_done, &r);
  check(rc < 0 && lua_gettop(L) == 1,
        "tide_spawn of a non-function fails and pops nothing", NULL);
  lua_settop(L, 0);
  luaL_loadstring(L, "return 1");
  check(tide_spawn(rt, 0, NULL, NULL) == 0 &&
          tide_loop_run(rt, UV_RUN_DEFAULT) == 0 &&
          tide_pending_tasks(rt) == 0,
        "tide_spawn with a NULL done callback", NULL);
  tide_runtime_close(rt);
}

static void test_spawn_error(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  result a = {0}, b = {0};
  spawn_code(rt, "require('tide').sleep(0.005) error('boom', 0)", &a);
  spawn_code(rt, "error({code = 7, kind = 'mine'})", &b);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(a.called == 1 && a.status != LUA_OK && strcmp(a.text, "boom") == 0,
        "a task's error reaches done with the error value", a.text);
  check(b.called == 1 && b.status != LUA_OK && strcmp(b.kind, "mine") == 0,
        "a table error value reaches done as raised", b.kind);
  tide_runtime_close(rt);
}

static void test_dostring(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  result a = {0}, b = {0};
  int rc = tide_dostring(rt, "local tide = require 'tide'\n"
                             "return tide.sleep(0.005, 'slept', 2)",
                         "=ok", on_done, &a);
  check(rc == 0 && a.called == 0, "tide_dostring starts a task", NULL);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(a.called == 1 && a.status == LUA_OK && strcmp(a.text, "slept,2") == 0,
        "tide_dostring: done gets the chunk's results", a.text);
  rc = tide_dostring(rt, "return +", "=broken", on_done, &b);
  check(rc == LUA_ERRSYNTAX && b.called == 1 && b.status == LUA_ERRSYNTAX &&
          strncmp(b.text, "broken:1:", 9) == 0 && tide_pending_tasks(rt) == 0,
        "a syntax error is reported through done before returning", b.text);
  check(lua_gettop(tide_runtime_L(rt)) == 0, "tide_dostring: stack balanced",
        NULL);
  tide_runtime_close(rt);
}

static void test_dofile(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  result a = {0}, b = {0};
  char path[] = "/tmp/tide_embed_XXXXXX";
  int fd = mkstemp(path), rc;
  const char *src = "local n = ...\nrequire('tide').sleep(0.001)\n"
                    "return 'file', n\n";
  check(fd >= 0 && write(fd, src, strlen(src)) == (ssize_t)strlen(src),
        "write a script file", path);
  close(fd);
  rc = tide_dofile(rt, path, on_done, &a);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(rc == 0 && a.called == 1 && a.status == LUA_OK &&
          strcmp(a.text, "file,nil") == 0,
        "tide_dofile runs the file as a task", a.text);
  unlink(path);
  rc = tide_dofile(rt, path, on_done, &b);
  check(rc == LUA_ERRFILE && b.called == 1 && b.status != LUA_OK,
        "tide_dofile of a missing file returns LUA_ERRFILE, reported via done",
        b.text);
  tide_runtime_close(rt);
}

static void test_pending_tasks(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  result a = {0}, b = {0}, c = {0};
  check(tide_pending_tasks(rt) == 0, "tide_pending_tasks: 0 at first", NULL);
  spawn_code(rt, "require('tide').sleep(0.005)", &a);
  spawn_code(rt, "local tide = require('tide')\n"
                 "tide.spawn(tide.sleep, 0.1)\n" /* not started from C */
                 "tide.sleep(0.03)", &b);
  spawn_code(rt, "error('x')", &c);
  check(tide_pending_tasks(rt) == 3, "3 after spawning 3", NULL);
  while (!a.called && tide_loop_run(rt, UV_RUN_ONCE))
    ;
  check(c.called && a.called && !b.called && tide_pending_tasks(rt) == 1,
        "1 once two ended (a failed one included)", NULL);
  while (!b.called && tide_loop_run(rt, UV_RUN_ONCE))
    ;
  check(b.called && tide_pending_tasks(rt) == 0,
        "0 when all C tasks ended (tasks they spawned do not count)", NULL);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  tide_runtime_close(rt);
}

static void test_runtime_run(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  lua_State *L = tide_runtime_L(rt);
  int n = 0, st;
  luaL_loadstring(L, "return require('testmod').delay(5, ...)");
  lua_pushstring(L, "a");
  lua_pushinteger(L, 2);
  st = tide_runtime_run(rt, 2, &n);
  check(st == LUA_OK && n == 2 && lua_type(L, -2) == LUA_TSTRING &&
          strcmp(lua_tostring(L, -2), "a") == 0 && lua_tointeger(L, -1) == 2,
        "tide_runtime_run with an async C function", NULL);
  lua_settop(L, 0);
  tide_runtime_close(rt);
}

static void test_two_runtimes(void) {
  env ea, eb;
  tide_runtime *a = new_rt(NULL, &ea), *b = new_rt(NULL, &eb);
  result ra = {0}, rb = {0};
  spawn_code(a, "shared = 'a' require('tide').sleep(0.005) return shared", &ra);
  spawn_code(b, "require('tide').sleep(0.01) return tostring(shared)", &rb);
  tide_loop_run(a, UV_RUN_DEFAULT);
  tide_loop_run(b, UV_RUN_DEFAULT);
  check(strcmp(ra.text, "a") == 0 && strcmp(rb.text, "nil") == 0,
        "two runtimes are isolated (a global set in one)", rb.text);
  tide_runtime_close(a);
  tide_runtime_close(b);
}

static void test_two_runtimes_one_loop(void) {
  uv_loop_t loop;
  tide_options opts;
  env ea, eb;
  tide_runtime *a, *b;
  result ra = {0}, rb = {0};
  uv_loop_init(&loop);
  memset(&opts, 0, sizeof opts);
  opts.loop = &loop;
  a = new_rt(&opts, &ea);
  b = new_rt(&opts, &eb);
  spawn_code(a, "shared = 'a' require('tide').sleep(0.01) return shared", &ra);
  spawn_code(b, "require('tide').sleep(0.005) local v = tostring(shared)\n"
                "return require('testmod').delay(10, v)", &rb);
  uv_run(&loop, UV_RUN_DEFAULT);
  check(strcmp(ra.text, "a") == 0 && strcmp(rb.text, "nil") == 0,
        "two runtimes on one application loop run together, isolated",
        rb.text);
  tide_runtime_close(a);
  tide_runtime_close(b);
  uv_run(&loop, UV_RUN_DEFAULT);
  check(uv_loop_close(&loop) == 0, "the shared loop closes afterwards", NULL);
}

static void test_memory_limit(void) {
  env e;
  tide_options opts;
  tide_runtime *rt;
  result hog = {0}, other = {0}, after = {0}, cbhog = {0};
  memset(&opts, 0, sizeof opts);
  opts.memory_limit = 2 << 20;
  rt = new_rt(&opts, &e);
  spawn_code(rt, "require('tide').sleep(0.005)\n"
                 "local t = {} for i = 1, 1e8 do t[i] = {i} end",
             &hog);
  spawn_code(rt, "local tide = require('tide')\n"
                 "local s = {} for i = 1, 10 do tide.sleep(0.002)\n"
                 "s[#s + 1] = ('x'):rep(100) end return #s", &other);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(hog.called == 1 && hog.status != LUA_OK &&
          strstr(hog.text, "not enough memory") != NULL,
        "memory_limit: the task over it fails with \"not enough memory\"",
        hog.text);
  check(other.called == 1 && other.status == LUA_OK &&
          strcmp(other.text, "10") == 0,
        "memory_limit: another task of the runtime completes", other.text);
  spawn_code(rt, "collectgarbage() return collectgarbage('count') < 2048",
             &after);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  spawn_code(rt, "local tide = require('tide')\n"
                 "tide.call_soon(function() local t = {}\n"
                 "  for i = 1, 1e8 do t[i] = {i} end end)\n"
                 "tide.sleep(0.05) collectgarbage()\n"
                 "return collectgarbage('count') < 2048", &cbhog);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(cbhog.status == LUA_OK && strcmp(cbhog.text, "true") == 0,
        "memory_limit: a callback over it fails too, the runtime goes on",
        cbhog.text);
  check(after.status == LUA_OK && strcmp(after.text, "true") == 0,
        "memory_limit: the runtime goes on once the memory is collected",
        after.text);
  tide_runtime_close(rt);
}

/* A task waiting on one that ran out of memory is woken while the memory
 * is still full: tide's own done callbacks and deadlines run outside the
 * cap (one that failed to allocate lost the wake, and the wait hung). What
 * the woken task then does in Lua runs under the cap, still full: wait's
 * result table fits in the room the eater left in most runs, not all (that
 * room varies with the string hash seed), so either answer is a wake. */
/* Whether text is one of the answers in list ("a|b|..."). */
static int one_of(const char *text, const char *list) {
  size_t n = strlen(text);
  while (list) {
    const char *bar = strchr(list, '|');
    size_t len = bar ? (size_t)(bar - list) : strlen(list);
    if (len == n && strncmp(text, list, n) == 0)
      return 1;
    list = bar ? bar + 1 : NULL;
  }
  return 0;
}

static void test_memory_limit_waiters(void) {
  static const char *const waits[][2] = {
    {"tide.task_group, function(g) g:spawn(eat) end", "false,not enough memory"},
    {"tide.shield, eat", "false,not enough memory"},
    {"function() local done = tide.wait({tide.spawn(eat)}) return #done end",
     "true,1|false,not enough memory"},
    {"tide.wait_for, eat, 5", "false,not enough memory"}};
  size_t i;
  for (i = 0; i < sizeof waits / sizeof waits[0]; i++) {
    env e;
    tide_options opts;
    tide_runtime *rt;
    result r = {0};
    char code[1024], name[200];
    memset(&opts, 0, sizeof opts);
    opts.memory_limit = 2 << 20;
    rt = new_rt(&opts, &e);
    snprintf(code, sizeof code,
             "local tide = require('tide')\n"
             "hog = {}\n"
             "tide.spawn(function() tide.sleep(0.1) hog = nil collectgarbage() end)\n"
             "local function eat() tide.sleep(0.01) while true do hog[#hog + 1] = {} end end\n"
             "local ok, e = pcall(%s)\n"
             "tide.sleep(0.2)\n"
             "return ok, ok and e or tostring(e):match('not enough memory')",
             waits[i][0]);
    spawn_code(rt, code, &r);
    tide_loop_run(rt, UV_RUN_DEFAULT);
    snprintf(name, sizeof name,
             "memory_limit: pcall(%s) returns once the child ran out of memory",
             waits[i][0]);
    check(r.called == 1 && one_of(r.text, waits[i][1]), name, r.text);
    tide_runtime_close(rt);
  }
}

static void test_instruction_limit(void) {
  env e;
  tide_options opts;
  tide_runtime *rt;
  result spin = {0}, other = {0}, swallow = {0}, cb = {0}, again = {0},
         nested = {0}, nested_n = {0}, shorts = {0}, short_n = {0};
  memset(&opts, 0, sizeof opts);
  opts.instruction_limit = 100000;
  rt = new_rt(&opts, &e);
  spawn_code(rt, "require('tide').sleep(0.001) while true do end", &spin);
  /* about 160000 instructions in all, under 10000 per step */
  spawn_code(rt, "local tide = require('tide') local n = 0\n"
                 "for i = 1, 20 do for j = 1, 2000 do n = n + 1 end\n"
                 "tide.sleep(0) end return n", &other);
  spawn_code(rt, "require('tide').sleep(0.001)\n"
                 "while true do pcall(function() while true do end end) end",
             &swallow);
  spawn_code(rt, "local tide = require('tide') local n = 0\n"
                 "tide.call_soon(function() while true do n = n + 1 end end)\n"
                 "tide.sleep(0.01) return n > 0 and 'callback stopped' or 'no'",
             &cb);
  spawn_code(rt, "local tide = require 'tide'\n"
                 "local t = tide.spawn(function() while true do end end)\n"
                 "local ok1 = pcall(t.await, t)\n"
                 "local t2 = tide.spawn(function() while true do end end)\n"
                 "local ok2, e2 = pcall(t2.await, t2)\n"
                 "return ok1, ok2, e2.kind", &again);
  /* coroutines the task resumes count against the same budget: nesting
   * them gave each a budget of its own (300x the cap at two levels) */
  spawn_code(rt, "nested_n = 0\n"
                 "local function burn() for i = 1, 1500 do nested_n = nested_n + 1 end end\n"
                 "local function level(k) return function() while true do\n"
                 "  coroutine.resume(coroutine.create(k)) end end end\n"
                 "require('tide').sleep(0.001)\n"
                 "level(level(burn))()", &nested);
  /* ... and so do coroutines too short to reach a count of their own */
  spawn_code(rt, "short_n = 0\n"
                 "require('tide').sleep(0.001)\n"
                 "while true do coroutine.wrap(function()\n"
                 "  for i = 1, 200 do short_n = short_n + 1 end end)() end", &shorts);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  spawn_code(rt, "return nested_n", &nested_n);
  spawn_code(rt, "return short_n", &short_n);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(shorts.called == 1 && strcmp(shorts.kind, "limit") == 0 &&
          atol(short_n.text) > 0 && atol(short_n.text) < 100000,
        "instruction_limit counts coroutines that end before their own count "
        "fires", short_n.text);
  check(nested.called == 1 && strcmp(nested.kind, "limit") == 0 &&
          atol(nested_n.text) > 0 && atol(nested_n.text) < 100000,
        "instruction_limit counts the coroutines a task resumes against its "
        "step's budget", nested_n.text);
  check(again.called == 1 && strcmp(again.text, "false,false,limit") == 0,
        "instruction_limit also stops the next task (which may reuse the "
        "first one's coroutine)", again.text);
  check(spin.called == 1 && spin.status != LUA_OK &&
          strcmp(spin.kind, "limit") == 0,
        "instruction_limit stops `while true do end` with kind \"limit\"",
        spin.text);
  check(swallow.called == 1 && swallow.status != LUA_OK &&
          strcmp(swallow.kind, "limit") == 0,
        "instruction_limit cannot be swallowed by pcall in a loop",
        swallow.text);
  check(cb.called == 1 && cb.status == LUA_OK &&
          strcmp(cb.text, "callback stopped") == 0,
        "instruction_limit also stops a runaway call_soon callback", cb.text);
  check(other.called == 1 && other.status == LUA_OK &&
          strcmp(other.text, "40000") == 0,
        "instruction_limit counts per step: another task completes",
        other.text);
  tide_runtime_close(rt);
}

static void test_close_handler_error(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  result r = {0};
  spawn_code(rt, "local g <close> = setmetatable({}, {__close = function()\n"
                 "  error('close err') end})\n"
                 "error('body err', 0)", &r);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(r.called == 1 && r.status != LUA_OK && strstr(r.text, "close err"),
        "a __close that raises while a failed task unwinds: its error "
        "replaces the task's (as in plain Lua), and nothing breaks", r.text);
  tide_runtime_close(rt);
}

static int write_chunk(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  return fwrite(p, 1, n, ud) == n ? 0 : 1;
}

/* A sandbox refuses binary chunks in tide_dofile too. */
static void test_sandbox_dofile(void) {
  env e;
  tide_options opts;
  tide_runtime *rt;
  result r = {0};
  char path[] = "/tmp/tide_embed_luac_XXXXXX";
  int fd = mkstemp(path);
  FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
  lua_State *plain = luaL_newstate();
  luaL_loadstring(plain, "return 'binary chunk ran'");
  lua_dump(plain, write_chunk, f, 0);
  lua_close(plain);
  fclose(f);
  memset(&opts, 0, sizeof opts);
  opts.sandbox = 1;
  rt = new_rt(&opts, &e);
  tide_dofile(rt, path, on_done, &r);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(r.called == 1 && r.status != LUA_OK && strstr(r.text, "binary") != NULL,
        "sandbox: tide_dofile refuses a binary chunk", r.text);
  tide_runtime_close(rt);
  unlink(path);
}

static void close_in_callback(tide_runtime *rt, int status, lua_State *L,
                              int n, void *data) {
  (void)status, (void)L, (void)n;
  ++*(int *)data;
  tide_runtime_close(rt); /* refused: tide's own code is on the stack */
}

static void test_close_in_callback(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  int called = 0;
  result after = {0};
  tide_dostring(rt, "return 'x'", "=cb", close_in_callback, &called);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  tide_dostring(rt, "return 'still usable'", "=after", on_done, &after);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(called == 1 && strcmp(after.text, "still usable") == 0,
        "tide_runtime_close from a done callback is refused; the runtime "
        "goes on", after.text);
  tide_runtime_close(rt);
}

/* A failure in a task started with no done callback is reported on stderr
 * (as for a Lua task nobody awaited), not lost. */
static void test_unobserved_failure(void) {
  env e;
  char path[] = "/tmp/tide_embed_err_XXXXXX", buf[512] = "";
  int fd = mkstemp(path), saved = dup(2);
  FILE *f;
  tide_runtime *rt;
  fflush(stderr);
  dup2(fd, 2);
  rt = new_rt(NULL, &e);
  tide_dostring(rt, "error('unobserved failure')", "=bg", NULL, NULL);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  tide_runtime_close(rt);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  close(fd);
  f = fopen(path, "r");
  if (f) {
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
  }
  unlink(path);
  check(strstr(buf, "unobserved failure") != NULL,
        "a failed task started without a done callback is reported", buf);
}

/* Closing lets cancelled tasks clean up, also when that suspends. */
static void test_close_runs_cleanup(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  result r = {0};
  spawn_code(rt, "local tide, m = require 'tide', require 'testmod'\n"
                 "local ok, err = pcall(tide.sleep, 10)\n"
                 "tide.sleep(0.01) -- clean-up that suspends\n"
                 "m.note()\n"
                 "error(err, 0)", &r);
  tide_loop_run(rt, UV_RUN_NOWAIT);
  tide_runtime_close(rt);
  check(e.notes == 1 && r.called == 1 && strcmp(r.kind, "cancelled") == 0,
        "tide_runtime_close runs the loop while cancelled tasks clean up",
        r.text);
}

static volatile sig_atomic_t app_got_term;
static void app_on_term(int sig) { (void)sig; app_got_term = 1; }

/* Background tasks leave SIGINT/SIGTERM to the application (a run with a
 * main task, tide_runtime_run, is what handles them). */
static void test_signals_stay_the_apps(void) {
  env e;
  struct sigaction sa, old;
  tide_runtime *rt;
  result r = {0};
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = app_on_term;
  sigaction(SIGTERM, &sa, &old);
  app_got_term = 0;
  rt = new_rt(NULL, &e);
  spawn_code(rt, "require('tide').sleep(0.01) return 'slept'", &r);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  raise(SIGTERM);
  check(app_got_term == 1 && strcmp(r.text, "slept") == 0,
        "background tasks leave SIGTERM to the application's handler", r.text);
  tide_runtime_close(rt);
  sigaction(SIGTERM, &old, NULL);
}

static volatile sig_atomic_t app_got_int;
static void app_on_int(int sig) {
  (void)sig;
  app_got_int++;
}
static void app_on_pipe(int sig) {
  (void)sig;
}

/* A blocking run on tide's own loop takes SIGINT only where it is at its
 * default (as asyncio's Runner): the application's handlers for SIGINT and
 * SIGPIPE are still there after the run and the close. */
static void test_signals_restored(void) {
  struct sigaction sa, old_int, old_pipe, now;
  tide_runtime *rt;
  int n = 0, st;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = app_on_int;
  sigaction(SIGINT, &sa, &old_int);
  sa.sa_handler = app_on_pipe;
  sigaction(SIGPIPE, &sa, &old_pipe);
  app_got_int = 0;
  rt = tide_runtime_new(NULL);
  luaL_loadstring(tide_runtime_L(rt), "require('tide').sleep(0.001) return 1");
  st = tide_runtime_run(rt, 0, &n);
  tide_runtime_close(rt);
  sigaction(SIGPIPE, NULL, &now);
  check(st == LUA_OK && now.sa_handler == app_on_pipe,
        "the application's SIGPIPE handler stays", NULL);
  raise(SIGINT);
  check(app_got_int == 1, "the application's SIGINT handler stays after a run", NULL);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGPIPE, &old_pipe, NULL);
}

static void test_sandbox(void) {
  env e;
  tide_options opts;
  tide_runtime *rt, *plain;
  result r = {0}, control = {0};
  static const char *code =
    "local tide = require 'tide'\n"
    "local bad = {}\n"
    "local function expect(ok, what) if not ok then bad[#bad + 1] = what end "
    "end\n"
    "expect(io == nil, 'io')\n"
    "expect(debug == nil, 'debug')\n"
    "expect(dofile == nil, 'dofile')\n"
    "expect(loadfile == nil, 'loadfile')\n"
    "expect(package == nil or package.loadlib == nil, 'package.loadlib')\n"
    "expect(os.execute == nil, 'os.execute')\n"
    "local allowed = {clock = 1, time = 1, date = 1, difftime = 1}\n"
    "for k in pairs(os) do expect(allowed[k], 'os.' .. k) end\n"
    "expect(not pcall(require, 'lfs'), 'require of a C module')\n"
    "expect(string.rep('ab', 2) == 'abab', 'string')\n"
    "expect(table.concat({1, 2}, ',') == '1,2', 'table')\n"
    "expect(math.max(1, 3) == 3 and math.floor(2.5) == 2, 'math')\n"
    "expect(utf8.char(72) == 'H', 'utf8')\n"
    "expect(coroutine.wrap(function() coroutine.yield(1) end)() == 1, "
    "'coroutine')\n"
    "expect(os.time() > 0 and os.clock() >= 0, 'os.time')\n"
    "local r = tide.gather(function() tide.sleep(0.001) return 1 end,\n"
    "                      function() return 2 end)\n"
    "expect(r[1] + r[2] == 3, 'tide')\n"
    "expect(require('testmod').delay(1, 'v') == 'v', 'preloaded C module')\n"
    "expect(not pcall(require, 'tide.core'), 'tide internals hidden')\n"
    "expect(not pcall(require, 'tide.net'), 'no sockets')\n"
    "expect(package.searchpath == nil, 'package.searchpath')\n"
    "expect(load(string.dump(function() end)) == nil, 'binary chunks refused')\n"
    "expect(not pcall(setmetatable, {}, {__gc = function() end}), "
    "'__gc refused (it runs outside the instruction limit)')\n"
    "expect(getmetatable(setmetatable({}, {__index = {}})) ~= nil, 'setmetatable')\n"
    "local failed = tide.spawn(error, 'x')\n"
    "pcall(failed.await, failed)\n"
    "local mts = {getmetatable(failed), getmetatable(tide.spawn(function() end)),\n"
    "  getmetatable(tide.error('k', 'm')), getmetatable(tide.Queue())}\n"
    "for i, mt in ipairs(mts) do\n"
    "  expect(type(mt) == 'table' and mt.__index == nil and type(mt.__name) == 'string', "
    "'getmetatable gives a stand-in for tide\\'s metatables ' .. i)\n"
    "  mt.__gc = function() while true do end end\n"
    "end\n"
    "failed, mts = nil, nil\n"
    "for i = 1, 3 do local t = tide.spawn(error, 'y'); pcall(t.await, t); tide.error('k', 'm') end\n"
    "collectgarbage(); collectgarbage()\n"
    "local ok, e = pcall(tide.to_thread, print)\n"
    "expect(not ok and e.kind == 'invalid_state' and e.message:find('sandbox'), "
    "'to_thread: not in a sandbox')\n"
    "ok, e = pcall(tide.signal, 'SIGUSR1')\n"
    "expect(not ok and e.message:find('sandbox'), 'signal: not in a sandbox')\n"
    "ok, e = pcall(tide.run, function() end)\n"
    "expect(not ok and e.kind == 'invalid_state', 'no tide.run in a task')\n"
    "local out = {}\n"
    "tide.dump_tasks({write = function(_, s) out[#out + 1] = s end, flush = function() end})\n"
    "expect(#out > 0, 'dump_tasks to a writer')\n"
    "expect(not pcall(tide.dump_tasks), 'dump_tasks without io: an argument error')\n"
    "return table.concat(bad, ' ')";
  memset(&opts, 0, sizeof opts);
  opts.sandbox = 1;
  rt = new_rt(&opts, &e);
  spawn_code(rt, code, &r);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(r.called == 1 && r.status == LUA_OK && strcmp(r.text, "") == 0,
        "sandbox: only the safe libraries, tide and preloaded modules",
        r.text);
  tide_runtime_close(rt);
  plain = new_rt(NULL, &e);
  spawn_code(plain, "return (pcall(require, 'lfs')), io ~= nil", &control);
  tide_loop_run(plain, UV_RUN_DEFAULT);
  check(strcmp(control.text, "true,true") == 0,
        "control: without the sandbox lfs (a C module) and io load",
        control.text);
  tide_runtime_close(plain);
}

/* A sandbox given more: some standard libraries and tide modules. */
static void test_sandbox_extras(void) {
  env e;
  tide_options opts;
  tide_runtime *rt;
  result r = {0};
  static const char *const libs[] = {"io", NULL};
  static const char *const mods[] = {"tide.http", NULL};
  static const char *const bad[] = {"tide.nope", NULL};
  static const char *code =
    "local tide = require 'tide'\n"
    "local http = require 'tide.http'\n"
    "local bad = {}\n"
    "local function expect(ok, what) if not ok then bad[#bad + 1] = what end end\n"
    "local srv = http.serve('127.0.0.1', 0, function(req)\n"
    "  return {headers = {['Content-Type'] = 'application/json'}, body = '{\"a\":[1]}'} end)\n"
    "local res = http.get(srv:url('/'))\n"
    "expect(res.status == 200 and res:json().a[1] == 1, 'tide.http and its JSON')\n"
    "srv:close()\n"
    "expect(io ~= nil and io.write ~= nil, 'io given')\n"
    "expect(os.execute == nil, 'os stays the clock')\n"
    "expect(debug == nil, 'no debug')\n"
    "expect(not pcall(require, 'tide.fs'), 'tide.fs not given')\n"
    "expect(not pcall(require, 'tide.core'), 'tide internals hidden')\n"
    "expect(not pcall(require, 'lfs'), 'no C modules')\n"
    "expect(not pcall(tide.to_thread, print), 'no to_thread')\n"
    "return table.concat(bad, ', ')";
  memset(&opts, 0, sizeof opts);
  opts.sandbox = 1;
  opts.sandbox_libs = libs;
  opts.sandbox_modules = mods;
  rt = new_rt(&opts, &e);
  spawn_code(rt, code, &r);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(r.called == 1 && r.status == LUA_OK && strcmp(r.text, "") == 0,
        "sandbox_libs and sandbox_modules give a sandbox io and tide.http, "
        "nothing else", r.text);
  tide_runtime_close(rt);
  opts.sandbox_modules = bad;
  check(tide_runtime_new_with(&opts) == NULL,
        "sandbox_modules: an unknown name fails the runtime's creation", NULL);
}

/* A done callback that allocates past the runtime's memory cap: the
 * application's code is not under the script's cap. */
static int big_done_ok;
static void on_done_big(tide_runtime *rt, int status, lua_State *L, int n,
                        void *data) {
  static char big[4 << 20];
  (void)rt, (void)status, (void)n, (void)data;
  lua_pushlstring(L, big, sizeof big);
  lua_pop(L, 1);
  big_done_ok = 1;
}

/* The sandbox's C calls the instruction limit could not stop. */
static void test_sandbox_limits(void) {
  env e;
  tide_options opts;
  tide_runtime *rt;
  result handler = {0}, calls = {0};
  memset(&opts, 0, sizeof opts);
  opts.sandbox = 1;
  opts.instruction_limit = 100000;
  opts.memory_limit = 2 << 20;
  rt = new_rt(&opts, &e);
  /* Lua runs xpcall's handler with hooks off once the limit's hook raised */
  spawn_code(rt, "require('tide').sleep(0.001)\n"
                 "xpcall(function() while true do end end, function() while true do end end)",
             &handler);
  spawn_code(rt, "local ok, e = pcall(table.move, {}, 1, 2^53, 1, {})\n"
                 "local a, b = xpcall(error, function(m) return 'handled ' .. m end, 'x')\n"
                 "return ('' ):rep(2^53) == '' and (''):rep(3, '') == '' and\n"
                 "  ('ab'):rep(2, ',') == 'ab,ab', not ok, a, b", &calls);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(handler.called == 1 && strcmp(handler.kind, "limit") == 0,
        "sandbox: an xpcall message handler runs under the instruction limit",
        handler.text);
  check(calls.called == 1 && strcmp(calls.text, "true,true,false,handled x") == 0,
        "sandbox: string.rep of \"\" and table.move of 2^53 slots do not freeze "
        "the loop; xpcall still calls its handler", calls.text);
  big_done_ok = 0;
  tide_dostring(rt, "return 1", "=big", on_done_big, NULL);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(big_done_ok == 1,
        "a done callback may allocate past the script's memory cap", NULL);
  tide_runtime_close(rt);
}

static void test_async_complete_fail(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  lua_State *L = tide_runtime_L(rt);
  result r = {0}, f = {0}, s = {0};
  spawn_code(rt, "local m = require 'testmod'\n"
                 "local a, b, c, d = m.delay(5, 1, 'two', nil, true)\n"
                 "return a, b, c, d, select('#', m.delay(1))", &r);
  spawn_code(rt, "local tide, m = require 'tide', require 'testmod'\n"
                 "local ok, e = pcall(m.failwith, 5, tide.error('custom', "
                 "'went wrong'))\n"
                 "local ok2, e2 = pcall(m.failwith, 1, 'plain')\n"
                 "return ok, tide.iserror(e), e.kind, e.message, ok2, e2",
             &f);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(r.status == LUA_OK && strcmp(r.text, "1,two,nil,true,0") == 0,
        "tide_complete delivers several values (and none)", r.text);
  check(f.status == LUA_OK &&
          strcmp(f.text, "false,true,custom,went wrong,false,plain") == 0,
        "tide_fail raises a tide error or a string in the task", f.text);
  check(e.freed == 4 && e.cancels == 0, "every delay freed its timer", NULL);
  luaL_loadstring(L, "return pcall(require('testmod').hang)");
  check(lua_pcall(L, 0, 2, 0) == LUA_OK && !lua_toboolean(L, -2) &&
          e.hung == NULL,
        "tide_suspend outside a task raises an error", lua_tostring(L, -1));
  lua_settop(L, 0);
  spawn_code(rt, "local m = require 'testmod'\n"
                 "local ok, err = pcall(table.sort, {2, 1}, function(a, b)\n"
                 "  m.delay(1) return a < b end)\n"
                 "require('tide').sleep(0.01)\n"
                 "return ok, (tostring(err):match('cannot suspend'))", &s);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(s.status == LUA_OK && strcmp(s.text, "false,cannot suspend") == 0 &&
          e.cancels == 2 && e.freed == e.started, /* hang() above, too */
        "tide_suspend where it cannot yield raises and lets the app undo "
        "its operation (on_cancel with NULL)", s.text);
  tide_runtime_close(rt);
}

static void test_cancel_async(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  result victim = {0}, killer = {0};
  spawn_code(rt, "victim = require('tide').current_task()\n"
                 "return require('testmod').hang()", &victim);
  spawn_code(rt, "local tide = require 'tide'\n"
                 "tide.sleep(0.01)\n"
                 "local ok = victim:cancel()\n"
                 "pcall(victim.await, victim)\n"
                 "return ok, victim:cancelled()", &killer);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(e.cancels == 1 && e.hung == NULL,
        "cancelling a task suspended in an async C function runs the cancel "
        "callback once", NULL);
  check(victim.called == 1 && victim.status != LUA_OK &&
          strcmp(victim.kind, "cancelled") == 0,
        "the task ends \"cancelled\"", victim.text);
  check(killer.status == LUA_OK && strcmp(killer.text, "true,true") == 0,
        "t:cancel() from another task", killer.text);
  tide_runtime_close(rt);
  check(e.cancels == 1, "no second cancel callback at close", NULL);
}

static void test_preload(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  result r = {0};
  static const char src[] =
    "local tide = require 'tide'\n"
    "tide.sleep(0.001) -- a module's top level may suspend\n"
    "return {hi = function(n) tide.sleep(0.001) return 'hi ' .. n end}\n"
    "this is past len and never parsed";
  tide_preload_lua(rt, "greet.mod", src, strlen(src) - 33);
  spawn_code(rt, "local g = require 'greet.mod'\n"
                 "return g.hi('bob'), rawequal(g, require 'greet.mod'),\n"
                 "  require('testmod').delay(1, 'c')", &r);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(r.status == LUA_OK && strcmp(r.text, "hi bob,true,c") == 0,
        "tide_preload_lua (len honoured) and tide_preload", r.text);
  tide_runtime_close(rt);
}

static void test_close_pending(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  result sleeper = {0}, hung = {0}, cleaner = {0}, delayed = {0};
  int i;
  spawn_code(rt, "require('tide').sleep(100)", &sleeper);
  spawn_code(rt, "return require('testmod').hang()", &hung);
  spawn_code(rt, "local m = require 'testmod'\n"
                 "local guard <close> = setmetatable({}, {__close = m.note})\n"
                 "require('tide').sleep(100)", &cleaner);
  spawn_code(rt, "return require('testmod').delay(100000, 1)", &delayed);
  for (i = 0; i < 10 && (e.hung == NULL || e.started < 1); i++)
    tide_loop_run(rt, UV_RUN_NOWAIT);
  check(e.hung != NULL && tide_pending_tasks(rt) == 4,
        "four tasks pending before close", NULL);
  tide_runtime_close(rt);
  check(sleeper.called == 1 && strcmp(sleeper.kind, "cancelled") == 0 &&
          hung.called == 1 && strcmp(hung.kind, "cancelled") == 0 &&
          cleaner.called == 1 && strcmp(cleaner.kind, "cancelled") == 0 &&
          delayed.called == 1 && strcmp(delayed.kind, "cancelled") == 0,
        "close: done callbacks of pending tasks get \"cancelled\"", NULL);
  check(e.cancels == 2 && e.notes == 1,
        "close: cancel callbacks ran once each, tasks cleaned up", NULL);
  check(e.freed == 1,
        "close: a handle closed by a cancel callback on tide's loop is freed",
        NULL);
}

static void test_close_stubborn(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  result r = {0};
  int i;
  spawn_code(rt, "local m = require 'testmod'\n"
                 "pcall(m.hang)\n" /* the close's cancel: caught */
                 "return m.hang()", &r); /* suspended again: abandoned */
  for (i = 0; i < 10 && e.hung == NULL; i++)
    tide_loop_run(rt, UV_RUN_NOWAIT);
  tide_runtime_close(rt);
  check(e.cancels == 2 && e.hung == NULL,
        "close: a task suspended again in an async C function after its "
        "cancel is abandoned, and that handle's cancel callback runs", NULL);
  check(r.called == 1 && strcmp(r.kind, "cancelled") == 0,
        "close: the abandoned task's done callback gets \"cancelled\"", r.text);
}

static int ticks;
static void on_tick(uv_timer_t *t) {
  (void)t;
  ticks++;
}

static void test_app_loop(void) {
  uv_loop_t loop;
  uv_timer_t heartbeat;
  tide_options opts;
  tide_runtime *rt;
  env e;
  result r = {0}, left = {0};
  int rc, i;
  uv_loop_init(&loop);
  uv_timer_init(&loop, &heartbeat);
  uv_timer_start(&heartbeat, on_tick, 2, 2);
  memset(&opts, 0, sizeof opts);
  opts.loop = &loop;
  rt = new_rt(&opts, &e);
  tide_dostring(rt, "local tide, m = require 'tide', require 'testmod'\n"
                    "local r = tide.gather(function() return m.delay(30, 1) "
                    "end,\n function() return m.delay(30, 2) end,\n"
                    " function() tide.sleep(0.03) return 3 end)\n"
                    "return r[1] + r[2] + r[3]", "=app", on_done, &r);
  while (!r.called && uv_run(&loop, UV_RUN_ONCE))
    ;
  check(r.status == LUA_OK && strcmp(r.text, "6") == 0 && ticks >= 5,
        "tasks run on the application's uv_run, its timer ticking too",
        r.text);
  spawn_code(rt, "require('testmod').delay(100000)", &left);
  for (i = 0; i < 10 && e.started < 3; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  /* the heartbeat stays active: close must not wait for the loop to end */
  tide_runtime_close(rt);
  check(left.called == 1 && strcmp(left.kind, "cancelled") == 0 &&
          e.cancels == 1,
        "close on the application's loop cancels the pending task", left.text);
  uv_close((uv_handle_t *)&heartbeat, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  rc = uv_loop_close(&loop);
  check(rc == 0 && e.freed == 3,
        "uv_loop_close on the application's loop succeeds after close",
        rc ? uv_strerror(rc) : NULL);
}

static void test_app_loop_idle(void) {
  uv_loop_t loop;
  tide_runtime *rt;
  env e;
  tide_options opts;
  result r = {0};
  uv_loop_init(&loop);
  memset(&opts, 0, sizeof opts);
  opts.loop = &loop;
  rt = new_rt(&opts, &e);
  spawn_code(rt, "require('tide').sleep(0.005) return 'done'", &r);
  /* returns once the task ended: tide keeps no active handle when idle */
  uv_run(&loop, UV_RUN_DEFAULT);
  check(r.called == 1 && strcmp(r.text, "done") == 0 &&
          !uv_loop_alive(&loop),
        "an idle runtime keeps the application's loop from nothing", r.text);
  tide_runtime_close(rt);
  uv_run(&loop, UV_RUN_DEFAULT);
  check(uv_loop_close(&loop) == 0, "and the loop closes", NULL);
}

/* Closing a runtime on the application's loop while TCP streams and a
 * child's pipes are open: their close callbacks come at the loop's next
 * turn, after the Lua state is gone, and must touch neither it nor the
 * runtime (ASan saw a use after free there). */
static void test_app_loop_streams(void) {
  uv_loop_t loop;
  tide_runtime *rt;
  env e;
  tide_options opts;
  result reader = {0}, child = {0}, waiter = {0};
  int i;
  uv_loop_init(&loop);
  memset(&opts, 0, sizeof opts);
  opts.loop = &loop;
  rt = new_rt(&opts, &e);
  spawn_code(rt, "local net = require 'tide.net'\n"
                 "local srv = net.serve('127.0.0.1', 0, function(s) s:read_line() end)\n"
                 "local c = net.connect('127.0.0.1', srv:port())\n"
                 "c:write('x')\n"
                 "return c:read()", &reader);
  spawn_code(rt, "local p = require('tide.process').spawn({'sleep', '5'})\n"
                 "return p.stdout:read()", &child);
  spawn_code(rt, "local net = require 'tide.net'\n"
                 "local srv = net.serve('127.0.0.1', 0, function(s) s:read() end)\n"
                 "local c = net.connect('127.0.0.1', srv:port())\n"
                 "c:write(string.rep('x', 1 << 22))\n" /* a queue to flush */
                 "c:close()\n"
                 "return c:wait_closed()", &waiter);
  for (i = 0; i < 200 && tide_pending_tasks(rt) > 0; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  tide_runtime_close(rt);
  check(reader.called == 1 && strcmp(reader.kind, "cancelled") == 0 &&
          child.called == 1 && waiter.called == 1,
        "close on the application's loop with streams open cancels their "
        "tasks", reader.text);
  uv_run(&loop, UV_RUN_DEFAULT);
  check(uv_loop_close(&loop) == 0,
        "the streams' handles close on the application's next turn, and "
        "the loop closes", NULL);
}

static void test_open(void) {
  lua_State *L = luaL_newstate();
  tide_runtime *rt;
  int n = 0, st;
  luaL_openlibs(L);
  rt = tide_open(L);
  check(rt != NULL && tide_open(L) == rt && tide_runtime_L(rt) == L,
        "tide_open: one runtime per state, kept in it", NULL);
  luaL_loadstring(L, "local tide = require 'tide'\n"
                     "return tide.gather(function() tide.sleep(0.001) "
                     "return 5 end)[1]");
  st = tide_runtime_run(rt, 0, &n);
  check(st == LUA_OK && n == 1 && lua_tointeger(L, -1) == 5,
        "a state opened with tide_open runs tasks", NULL);
  lua_close(L);
  {
    /* tasks started from C on a tide_open runtime: close ends them (done
     * callbacks told), and frees the loop tide made for them */
    result r = {0};
    int before = fd_count(), i;
    for (i = 0; i < 20; i++) {
      L = luaL_newstate();
      luaL_openlibs(L);
      rt = tide_open(L);
      memset(&r, 0, sizeof r);
      tide_dostring(rt, "require('tide').sleep(10)", "=sleeper", on_done, &r);
      tide_loop_run(rt, UV_RUN_NOWAIT);
      tide_runtime_close(rt);
      lua_close(L);
    }
    check(r.status == LUA_ERRRUN && strcmp(r.kind, "cancelled") == 0,
          "tide_open: close cancels the tasks started from C", r.text);
    check(fd_count() <= before, "tide_open: close frees the loop it made", NULL);
  }
  L = luaL_newstate();
  luaL_openlibs(L);
  lua_pushcfunction(L, luaopen_tide_core);
  lua_call(L, 0, 1);
  check(lua_istable(L, -1) && lua_getfield(L, -1, "run") == LUA_TFUNCTION,
        "luaopen_tide_core returns the C half of the module", NULL);
  lua_close(L);
}

/* An async C function called inside a user coroutine suspends the task,
 * before any script of the runtime has required "tide": the stock
 * coroutine.wrap took the park's yield as the coroutine's own, the task
 * ended at once, and the later tide_complete used it after its end. */
static void test_async_in_user_coroutine(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  result r = {0};
  spawn_code(rt, "local m = require 'testmod'\n"
                 "local gen = coroutine.wrap(function() coroutine.yield(m.delay(20, 'x')) end)\n"
                 "return gen()", &r);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(r.called == 1 && r.status == LUA_OK && strcmp(r.text, "x") == 0,
        "an async C function in a user coroutine suspends the task, before any "
        "require 'tide'", r.text);
  tide_runtime_close(rt);
}

/* A done callback whose Lua calls raise (luaL_tolstring on an error whose
 * __tostring fails) is reported; the memory cap does not stay on the host,
 * and the runtime goes on. */
static void tostring_done(tide_runtime *rt, int status, lua_State *L, int n,
                          void *data) {
  (void)rt, (void)status, (void)n;
  ++*(int *)data;
  luaL_tolstring(L, -1, NULL); /* the script's __tostring: raises, or is stopped */
  ++*(int *)data;              /* not reached */
}

static int push_big(lua_State *L) {
  static char big[8 << 20];
  lua_pushlstring(L, big, sizeof big);
  return 1;
}

static void test_done_callback_raises(void) {
  env e;
  tide_options opts;
  tide_runtime *rt;
  lua_State *L;
  int called = 0, st;
  result after = {0};
  memset(&opts, 0, sizeof opts);
  opts.memory_limit = 4 << 20;
  rt = new_rt(&opts, &e);
  L = tide_runtime_L(rt);
  tide_dostring(rt, "error(setmetatable({}, {__tostring = function() error('x') end}))",
                "=bad", tostring_done, &called);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  lua_pushcfunction(L, push_big);
  st = lua_pcall(L, 0, 1, 0); /* the host's own: not under the cap */
  lua_pop(L, 1);
  tide_dostring(rt, "return 'on'", "=after", on_done, &after);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(called == 1 && st == LUA_OK && strcmp(after.text, "on") == 0,
        "a done callback that raises is reported; the memory cap does not stay "
        "on the host and the runtime goes on", after.text);
  tide_runtime_close(rt);
}

/* A done callback runs under the instruction limit, with a budget of its
 * own: the Lua calls it makes may run the script's metamethods, and a
 * sandboxed __tostring that loops must not hang the host. */
static void short_done(tide_runtime *rt, int status, lua_State *L, int n,
                       void *data) {
  (void)rt, (void)status, (void)n;
  *(int *)data = luaL_dostring(L, "local n = 0 for i = 1, 1000 do n = n + 1 end") == LUA_OK;
}

static void test_limit_in_done_callback(void) {
  env e;
  tide_options opts;
  tide_runtime *rt;
  int calls = 0, ok = -1;
  memset(&opts, 0, sizeof opts);
  opts.instruction_limit = 100000;
  opts.sandbox = 1;
  rt = new_rt(&opts, &e);
  tide_dostring(rt, "return setmetatable({}, {__tostring = function() while true do end end})",
                "=t", tostring_done, &calls);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  tide_dostring(rt, "return 1", "=after", short_done, &ok);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(calls == 1 && ok == 1,
        "a done callback runs under the instruction limit with a budget of its own: "
        "a script's looping __tostring is stopped there, and the runtime goes on", NULL);
  tide_runtime_close(rt);
}

/* A sandboxed script's own require is never called by tide's host code
 * (tide_runtime_run installed tide's coroutine functions through the global
 * require, outside any task: no limit applied to it). */
static void test_sandbox_require_not_called(void) {
  env e;
  tide_options opts;
  tide_runtime *rt;
  lua_State *L;
  result r = {0};
  int n = 0, hits;
  memset(&opts, 0, sizeof opts);
  opts.sandbox = 1;
  opts.instruction_limit = 100000;
  rt = new_rt(&opts, &e);
  L = tide_runtime_L(rt);
  tide_dostring(rt, "local real = require\n"
                    "require = function(...) hits = (hits or 0) + 1 return real(...) end",
                "=swap", on_done, &r);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  luaL_loadstring(L, "return 1");
  tide_runtime_run(rt, 0, &n);
  lua_pop(L, n);
  lua_getglobal(L, "hits");
  hits = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  check(r.status == LUA_OK && hits == 0,
        "sandbox: tide never calls the script's own require from host code", NULL);
  tide_runtime_close(rt);
}

/* tide_runtime_close re-entered while it closes (the loop it runs fires
 * the application's repeating timer, which closes again; a done callback
 * of a cancelled task closes again): refused, no use after free. */
static tide_runtime *reenter_rt;
static int reenter_calls;
static void on_close_tick(uv_timer_t *t) {
  tide_runtime *rt = reenter_rt;
  if (rt == NULL)
    return;
  reenter_calls++;
  tide_runtime_close(rt); /* its loop fires this timer again: that one is refused */
  reenter_rt = NULL;
  uv_timer_stop(t);
}

static void close_again(tide_runtime *rt, int status, lua_State *L, int n, void *data) {
  (void)status, (void)L, (void)n;
  ++*(int *)data;
  tide_runtime_close(rt);
}

static void test_close_reentered(void) {
  uv_loop_t loop;
  uv_timer_t tick;
  tide_options opts;
  env e;
  int again = 0;
  result r = {0};
  uv_loop_init(&loop);
  memset(&opts, 0, sizeof opts);
  opts.loop = &loop;
  reenter_rt = new_rt(&opts, &e);
  /* swallows the close's cancel, then cleans up for 50 ms on the loop */
  spawn_code(reenter_rt, "local tide = require 'tide'\n"
                         "pcall(tide.sleep, 100) tide.sleep(0.05)", &r);
  /* swallows the cancel and suspends again: abandoned, its done callback
   * called by the close */
  tide_dostring(reenter_rt, "local m = require('testmod') pcall(m.hang) return m.hang()",
                "=stubborn", close_again, &again);
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_timer_init(&loop, &tick);
  uv_timer_start(&tick, on_close_tick, 1, 1);
  reenter_calls = 0;
  while (reenter_rt != NULL && uv_run(&loop, UV_RUN_ONCE))
    ;
  check(reenter_calls >= 2 && again == 1 && r.called == 1,
        "tide_runtime_close re-entered from the loop it runs or from a done "
        "callback it calls is refused", NULL);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  check(uv_loop_close(&loop) == 0, "the application's loop closes after", NULL);
}

/* tide_runtime_run from a C function a task calls is refused (it ran the
 * main state under the running task: a crash). */
static int t_run_nested(lua_State *L) {
  tide_runtime *rt = lua_touserdata(L, lua_upvalueindex(1));
  lua_State *M = tide_runtime_L(rt);
  int n, st;
  lua_getglobal(M, "tostring");
  st = tide_runtime_run(rt, 0, &n);
  lua_pushinteger(L, st);
  lua_pushstring(L, st == LUA_OK ? "ran" : lua_tostring(M, -1));
  if (st != LUA_OK)
    lua_pop(M, 1);
  return 2;
}

static void test_runtime_run_in_task(void) {
  env e;
  tide_runtime *rt = new_rt(NULL, &e);
  lua_State *L = tide_runtime_L(rt);
  result r = {0};
  lua_pushlightuserdata(L, rt);
  lua_pushcclosure(L, t_run_nested, 1);
  lua_setglobal(L, "run_nested");
  spawn_code(rt, "local st, msg = run_nested() return st, msg", &r);
  tide_loop_run(rt, UV_RUN_DEFAULT);
  check(r.status == LUA_OK && strstr(r.text, "refused") != NULL,
        "tide_runtime_run from inside a task is refused with an error", r.text);
  tide_runtime_close(rt);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  test_accessors();
  test_spawn();
  test_spawn_error();
  test_dostring();
  test_dofile();
  test_pending_tasks();
  test_runtime_run();
  test_two_runtimes();
  test_two_runtimes_one_loop();
  test_memory_limit();
  test_memory_limit_waiters();
  test_instruction_limit();
  test_sandbox();
  test_sandbox_dofile();
  test_sandbox_extras();
  test_sandbox_limits();
  test_close_handler_error();
  test_close_in_callback();
  test_signals_stay_the_apps();
  test_signals_restored();
  test_unobserved_failure();
  test_close_runs_cleanup();
  test_async_complete_fail();
  test_cancel_async();
  test_preload();
  test_close_pending();
  test_close_stubborn();
  test_app_loop();
  test_app_loop_idle();
  test_app_loop_streams();
  test_open();
  test_async_in_user_coroutine();
  test_done_callback_raises();
  test_limit_in_done_callback();
  test_sandbox_require_not_called();
  test_close_reentered();
  test_runtime_run_in_task();
  return check_summary();
}
