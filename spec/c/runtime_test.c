/*
 * runtime_test.c: C tests for the embedding API in tide.h. Each test
 * prints "ok N - name" or "not ok N - name"; the process exits non-zero if
 * any failed.
 */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "tide.h"

#include "check.h"

/* Loads `code` as the function to run (after `nargs` pushed later). */
static void load(lua_State *L, const char *code) {
  if (luaL_loadstring(L, code) != LUA_OK) {
    fprintf(stderr, "load: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_pushnil(L);
  }
}

static void test_run_results(void) {
  tide_runtime *rt = tide_runtime_new(NULL);
  lua_State *L = tide_runtime_L(rt);
  int n = 0, st;
  load(L, "local tide = require 'tide'\n"
          "local a = ...\n"
          "local r = tide.gather(function() tide.sleep(0.02) return a end,\n"
          "                      function() tide.sleep(0.01) return 2 end)\n"
          "return r[1] + r[2], 'x'");
  lua_pushinteger(L, 40);
  st = tide_runtime_run(rt, 1, &n);
  check(st == LUA_OK && n == 2 && lua_tointeger(L, -2) == 42 &&
          strcmp(lua_tostring(L, -1), "x") == 0,
        "tide_runtime_run returns the main task's results", NULL);
  lua_pop(L, n);
  tide_runtime_close(rt);
}

static void test_run_error(void) {
  tide_runtime *rt = tide_runtime_new(NULL);
  lua_State *L = tide_runtime_L(rt);
  int st;
  load(L, "require('tide').sleep(0.001) error('bad thing', 0)");
  st = tide_runtime_run(rt, 0, NULL);
  check(st != LUA_OK && strcmp(lua_tostring(L, -1), "bad thing") == 0,
        "tide_runtime_run returns the error value", lua_tostring(L, -1));
  lua_pop(L, 1);
  tide_runtime_close(rt);
}

static int app_ticks;
static void on_app_timer(uv_timer_t *h) {
  (void)h;
  app_ticks++;
}

static void test_app_loop(void) {
  uv_loop_t loop;
  uv_timer_t timer;
  tide_runtime *rt;
  lua_State *L;
  int st, rc;
  uv_loop_init(&loop);
  uv_timer_init(&loop, &timer);
  uv_timer_start(&timer, on_app_timer, 5, 5);
  uv_unref((uv_handle_t *)&timer);
  rt = tide_runtime_new(&loop);
  L = tide_runtime_L(rt);
  load(L, "require('tide').sleep(0.1)");
  st = tide_runtime_run(rt, 0, NULL);
  check(st == LUA_OK, "runs on the application's loop", NULL);
  check(app_ticks >= 5, "the application's own timer kept firing meanwhile",
        NULL);
  tide_runtime_close(rt);
  uv_close((uv_handle_t *)&timer, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  rc = uv_loop_close(&loop);
  check(rc == 0, "tide left no handle open on the application's loop",
        rc ? uv_strerror(rc) : NULL);
}

static void test_two_runtimes(void) {
  tide_runtime *a = tide_runtime_new(NULL), *b = tide_runtime_new(NULL);
  lua_State *La = tide_runtime_L(a), *Lb = tide_runtime_L(b);
  int n;
  load(La, "shared = 'a' require('tide').sleep(0.001) return shared");
  load(Lb, "require('tide').sleep(0.002) return shared");
  tide_runtime_run(a, 0, &n);
  tide_runtime_run(b, 0, &n);
  check(strcmp(lua_tostring(La, -1), "a") == 0 && lua_isnil(Lb, -1),
        "two runtimes in one process are isolated", NULL);
  tide_runtime_close(a);
  tide_runtime_close(b);
}

int main(void) {
  test_run_results();
  test_run_error();
  test_app_loop();
  test_two_runtimes();
  return check_summary();
}
