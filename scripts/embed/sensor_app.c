/*
 * sensor_app.c: an application that owns its libuv loop and embeds tide.
 *
 * The application runs a heartbeat timer on its own loop, creates a tide
 * runtime on that loop and gives Lua a C module, "sensor", whose
 * sensor.read(name) is asynchronous: it suspends the calling task and a
 * libuv timer completes it about 50 ms later (or fails it for an unknown
 * sensor). It runs sensor.lua in the background, drives its own uv_run until
 * the script is done, then closes tide and its loop.
 *
 *   sensor_app [scripts/embed/sensor.lua]
 *
 * Prints deterministic lines; exits 0 when everything went as expected.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "tide.h"

static uv_loop_t loop;
static uv_timer_t heartbeat;
static int ticks, reads, cancels, script_ok;

static const struct {
  const char *name;
  double value;
  unsigned delay_ms;
} sensors[] = {{"temperature", 21.5, 50},
               {"humidity", 40.0, 50},
               {"pressure", 1013.25, 50},
               {"slow", 0.0, 1000}};

/* One sensor.read() in flight. */
typedef struct read_op {
  uv_timer_t timer;
  tide_pending *pending;
  int sensor; /* index in sensors[], or -1 */
  char name[32];
} read_op;

static void free_op(uv_handle_t *h) { free(h->data); }

static void on_reading(uv_timer_t *t) {
  read_op *op = t->data;
  lua_State *L = tide_pending_L(op->pending);
  if (op->sensor < 0) {
    lua_pushfstring(L, "unknown sensor '%s'", op->name);
    tide_fail(op->pending);
  } else {
    lua_pushnumber(L, sensors[op->sensor].value);
    tide_complete(op->pending, 1);
  }
  uv_close((uv_handle_t *)t, free_op);
}

/* The task was cancelled (e.g. a timeout): abort the read. */
static void on_read_cancel(tide_pending *p, void *data) {
  read_op *op = data;
  (void)p;
  cancels++;
  uv_timer_stop(&op->timer);
  uv_close((uv_handle_t *)&op->timer, free_op);
}

/* sensor.read(name) -> number, after the sensor's delay */
static int sensor_read(lua_State *L) {
  uv_loop_t *lp = lua_touserdata(L, lua_upvalueindex(1));
  const char *name = luaL_checkstring(L, 1);
  read_op *op = malloc(sizeof *op);
  size_t i;
  if (op == NULL)
    return luaL_error(L, "out of memory");
  snprintf(op->name, sizeof op->name, "%s", name);
  op->sensor = -1;
  for (i = 0; i < sizeof sensors / sizeof sensors[0]; i++)
    if (strcmp(name, sensors[i].name) == 0)
      op->sensor = (int)i;
  op->timer.data = op;
  uv_timer_init(lp, &op->timer);
  uv_timer_start(&op->timer, on_reading,
                 op->sensor < 0 ? 1 : sensors[op->sensor].delay_ms, 0);
  reads++;
  return tide_suspend(L, on_read_cancel, op, &op->pending);
}

static int luaopen_sensor(lua_State *L) {
  lua_newtable(L);
  lua_getfield(L, LUA_REGISTRYINDEX, "sensor_app.loop");
  lua_pushcclosure(L, sensor_read, 1);
  lua_setfield(L, -2, "read");
  return 1;
}

static void on_heartbeat(uv_timer_t *t) {
  (void)t;
  ticks++;
}

static void on_script_done(tide_runtime *rt, int status, lua_State *L,
                           int nresults, void *data) {
  (void)rt, (void)data;
  /* first what must happen whatever the values are: luaL_tolstring below
   * runs the script's __tostring, which may raise (tide then reports it
   * and ends this callback there) */
  uv_close((uv_handle_t *)&heartbeat, NULL); /* the app is done too */
  if (status == LUA_OK) {
    printf("script returned: %s\n",
           nresults > 0 ? luaL_tolstring(L, -nresults, NULL) : "nothing");
    if (nresults > 0)
      lua_pop(L, 1);
    script_ok = 1;
  } else {
    printf("script failed: %s\n", luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
  }
}

int main(int argc, char **argv) {
  const char *script = argc > 1 ? argv[1] : "scripts/embed/sensor.lua";
  tide_options opts;
  tide_runtime *rt;
  lua_State *L;
  int rc, ok;

  setvbuf(stdout, NULL, _IOLBF, 0);
  uv_loop_init(&loop);
  uv_timer_init(&loop, &heartbeat);
  uv_timer_start(&heartbeat, on_heartbeat, 10, 10);

  memset(&opts, 0, sizeof opts);
  opts.loop = &loop;
  rt = tide_runtime_new_with(&opts);
  if (rt == NULL) {
    fprintf(stderr, "sensor_app: cannot create the runtime\n");
    return 1;
  }
  L = tide_runtime_L(rt);
  lua_pushlightuserdata(L, &loop);
  lua_setfield(L, LUA_REGISTRYINDEX, "sensor_app.loop");
  tide_preload(rt, "sensor", luaopen_sensor);

  tide_dofile(rt, script, on_script_done, NULL); /* errors reach the cb */
  uv_run(&loop, UV_RUN_DEFAULT); /* the application's own loop */

  tide_runtime_close(rt);
  uv_run(&loop, UV_RUN_DEFAULT); /* let closed handles finish */
  rc = uv_loop_close(&loop);

  printf("sensor.read calls: %d, cancelled: %d\n", reads, cancels);
  printf("heartbeat: %s\n", ticks >= 5 ? "kept ticking while the script ran"
                                       : "did not tick");
  printf("loop: %s\n", rc == 0 ? "closed cleanly" : uv_strerror(rc));
  ok = script_ok && cancels == 1 && ticks >= 5 && rc == 0;
  printf("%s\n", ok ? "sensor_app: ok" : "sensor_app: FAILED");
  return ok ? 0 : 1;
}
