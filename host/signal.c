/*
 * signal.c: POSIX signals as values to wait for ("tide.signal"). Owns the
 * "tide.Signal" type: tide.signal(name) watches one signal on the loop of
 * the calling task's run, counting every delivery from its creation on;
 * sig:wait() takes one delivery, suspending the task while none is pending
 * (one task waits at a time; several watchers of a signal each get every
 * delivery). Like any POSIX signal, deliveries the kernel has not handed to
 * the process yet merge into one.
 *
 * As in net.c, the Lua userdata is a small box pointing at a C struct that
 * holds the uv_signal_t, because the handle must outlive the box until its
 * close callback, which frees the struct. close(), __close, __gc and the
 * end of the run (a tide_closer, so the run's teardown frees it) close it.
 *
 * A watcher keeps the loop alive only while a task waits on it. While one
 * is open on a loop, tide's default handling of that signal there (SIGINT
 * and SIGTERM cancel the main task, SIGUSR1 dumps the tasks: loop.c) stays
 * out of the way: the script handles the signal itself.
 */
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

#define SIGNAL_MT "tide.Signal"

typedef struct sigbox sigbox;

typedef struct watcher {
  uv_signal_t h;
  tide_closer closer; /* the run closes it at its end */
  sigbox *box;        /* the Lua box pointing here, NULL once detached */
  tide_task *waiter;  /* parked in wait(); the handle is ref'd meanwhile */
  unsigned long pending; /* deliveries nobody has taken yet */
} watcher;

struct sigbox {
  watcher *w; /* NULL once closed */
  int signum;
};

static const struct { const char *name; int num; } names[] = {
  {"SIGHUP", SIGHUP},     {"SIGINT", SIGINT},     {"SIGQUIT", SIGQUIT},
  {"SIGTERM", SIGTERM},   {"SIGUSR1", SIGUSR1},   {"SIGUSR2", SIGUSR2},
  {"SIGWINCH", SIGWINCH}, {"SIGCHLD", SIGCHLD},   {"SIGALRM", SIGALRM},
  {"SIGCONT", SIGCONT},   {"SIGTSTP", SIGTSTP},   {"SIGTTIN", SIGTTIN},
  {"SIGTTOU", SIGTTOU},   {"SIGURG", SIGURG},     {"SIGIO", SIGIO},
  {"SIGXCPU", SIGXCPU},   {"SIGXFSZ", SIGXFSZ},   {"SIGPROF", SIGPROF},
  {"SIGVTALRM", SIGVTALRM},
};
#define NAME_LIST "SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, " \
                  "SIGWINCH, SIGCHLD, SIGALRM, SIGCONT, SIGTSTP, SIGTTIN, " \
                  "SIGTTOU, SIGURG, SIGIO, SIGXCPU, SIGXFSZ, SIGPROF, SIGVTALRM"

/* Signals of a fault in the process itself: it cannot go on after one. */
static const char *const faults[] = {"SEGV", "BUS", "FPE", "ILL", "TRAP",
                                     "ABRT", "SYS", NULL};
#define NNAMES (sizeof(names) / sizeof(names[0]))

static const char *signame(int signum) {
  size_t i;
  for (i = 0; i < NNAMES; i++)
    if (names[i].num == signum)
      return names[i].name;
  return NULL;
}

/* The signal's name, or its number for a real-time signal. */
static int push_signal(lua_State *L, int signum) {
  const char *name = signame(signum);
  if (name)
    lua_pushstring(L, name);
  else
    lua_pushinteger(L, signum);
  return 1;
}

/* Argument errors name 'signal' whatever the call went through (tide.lua
 * tail-calls here, which loses the name luaL_argerror would find). */
static int bad_arg(lua_State *L, const char *msg) {
  return tide__raise_at_user(L, "bad argument #1 to 'signal' (%s)", msg);
}

/* "SIGUSR1", "USR1", "usr1", or a number of one of those or of a real-time
 * signal. Not SIGPIPE (tide's own: writes fail with EPIPE instead),
 * nor SIGKILL/SIGSTOP or the fault signals, which cannot be waited for. */
static int check_signum(lua_State *L, int idx) {
  size_t i;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    int isint;
    lua_Integer n = lua_tointegerx(L, idx, &isint);
    if (isint && n > 0 && n < 1024 &&
        (signame((int)n) || (n >= SIGRTMIN && n <= SIGRTMAX)))
      return (int)n;
    lua_pushfstring(L, "signal %s cannot be waited for (use one of "
                       NAME_LIST " or a real-time signal)",
                    lua_tostring(L, idx));
    return bad_arg(L, lua_tostring(L, -1));
  }
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char *s = lua_tostring(L, idx);
    for (i = 0; i < NNAMES; i++)
      if (strcasecmp(s, names[i].name) == 0 ||
          strcasecmp(s, names[i].name + 3) == 0)
        return names[i].num;
    if (strcasecmp(s, "SIGKILL") == 0 || strcasecmp(s, "KILL") == 0 ||
        strcasecmp(s, "SIGSTOP") == 0 || strcasecmp(s, "STOP") == 0 ||
        strcasecmp(s, "SIGPIPE") == 0 || strcasecmp(s, "PIPE") == 0) {
      lua_pushfstring(L, "%s cannot be waited for (SIGKILL and SIGSTOP cannot "
                         "be caught; SIGPIPE is tide's: writes fail with "
                         "EPIPE instead)", s);
      return bad_arg(L, lua_tostring(L, -1));
    }
    for (i = 0; faults[i]; i++)
      if (strcasecmp(s + (strncasecmp(s, "SIG", 3) == 0 ? 3 : 0), faults[i]) == 0) {
        lua_pushfstring(L, "%s cannot be waited for (a fault signal: the "
                           "process cannot go on after one)", s);
        return bad_arg(L, lua_tostring(L, -1));
      }
    lua_pushfstring(L, "unknown signal '%s' (expected one of " NAME_LIST
                       ", with or without SIG, any case; or a number)", s);
    return bad_arg(L, lua_tostring(L, -1));
  }
  lua_pushfstring(L, "signal name or number expected, got %s",
                  luaL_typename(L, idx));
  return bad_arg(L, lua_tostring(L, -1));
}

static void set_waiter(watcher *w, tide_task *t) {
  if (t && !w->waiter)
    uv_ref((uv_handle_t *)&w->h);
  else if (!t && w->waiter)
    uv_unref((uv_handle_t *)&w->h);
  w->waiter = t;
}

static void on_uv_signal(uv_signal_t *h, int signum) {
  watcher *w = h->data;
  tide_task *t = w->waiter;
  (void)signum;
  set_waiter(w, NULL);
  if (t) {
    lua_pushboolean(t->s->L, 1);
    if (tide__wake(t->s->L, t, 1))
      return;
  }
  w->pending++; /* nobody waits (or the waiter is leaving): keep it */
}

static void on_uv_closed(uv_handle_t *h) {
  free(h->data);
}

/* Closes w's handle; an open watcher of SIGINT/SIGTERM is counted (loop.c)
 * so that tide's default "a second one exits" stands aside. */
static void handle_close(watcher *w, int counted) {
  if (counted)
    tide__signal_watching(w->h.signum, -1);
  uv_close((uv_handle_t *)&w->h, on_uv_closed);
}

/* Detaches the box, closes the handle (the struct goes in the callback).
 * A task waiting in wait() is woken to find it closed, unless the run is
 * being torn down (`wake` 0), when no task may be touched. */
static void watcher_close(watcher *w, int wake) {
  tide_task *t = w->waiter;
  tide__closer_remove(&w->closer);
  if (w->box)
    w->box->w = NULL;
  w->box = NULL;
  set_waiter(w, NULL);
  if (t && wake) {
    lua_pushboolean(t->s->L, 1);
    tide__wake(t->s->L, t, 1);
  }
  handle_close(w, 1);
}

static void on_run_end(tide_closer *c) {
  watcher_close((watcher *)((char *)c - offsetof(watcher, closer)), 0);
}

static watcher *check_open(lua_State *L, int idx) {
  sigbox *b = luaL_checkudata(L, idx, SIGNAL_MT);
  if (b->w == NULL)
    tide__err_raise(L, "closed", "attempt to use a closed signal watcher");
  return b->w;
}

/* tide.signal(name) -> watcher, counting deliveries from now on. */
static int l_signal(lua_State *L) {
  int signum = check_signum(L, 1), rc;
  tide_task *t = tide__current(L);
  sigbox *b = lua_newuserdatauv(L, sizeof(*b), 0);
  watcher *w;
  b->w = NULL;
  b->signum = signum;
  luaL_setmetatable(L, SIGNAL_MT);
  w = calloc(1, sizeof(*w));
  if (w == NULL)
    return luaL_error(L, "not enough memory");
  uv_signal_init(t->s->loop, &w->h);
  w->h.data = w;
  rc = uv_signal_start(&w->h, on_uv_signal, signum);
  if (rc < 0) {
    handle_close(w, 0);
    return tide__err_raise(L, "uv", "signal: cannot watch %s: %s",
                           lua_tostring(L, 1), uv_strerror(rc));
  }
  tide__signal_watching(signum, 1);
  uv_unref((uv_handle_t *)&w->h);
  w->closer.close = on_run_end;
  tide__closer_add(t->s, &w->closer);
  w->box = b;
  b->w = w;
  return 1;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  sigbox *b = lua_touserdata(L, 1);
  watcher *w = b->w;
  (void)status;
  (void)ctx;
  if (w && w->waiter == tide__rt(L)->current)
    set_waiter(w, NULL); /* cancelled before any delivery */
  if (!lua_toboolean(L, 2)) {
    if (w && lua_toboolean(L, 4))
      w->pending++; /* a delivery woke us before the cancel: pass it on */
    lua_pushvalue(L, 3);
    return lua_error(L);
  }
  if (w == NULL) { /* closed while we waited */
    lua_pushnil(L);
    return 1;
  }
  return push_signal(L, b->signum);
}

/* sig:wait() -> the signal's name (its number for a real-time one), or nil
 * if the watcher is closed meanwhile. Returns at once if a delivery is
 * pending. One task at a time. */
static int l_wait(lua_State *L) {
  watcher *w = check_open(L, 1);
  tide_task *t = tide__current(L);
  lua_settop(L, 1);
  if (w->pending > 0) {
    w->pending--;
    return push_signal(L, ((sigbox *)lua_touserdata(L, 1))->signum);
  }
  if (w->waiter)
    return tide__raise_kind_at_user(L, "invalid_state", "another task is "
                                    "already waiting on this signal watcher");
  set_waiter(w, t);
  return tide__park(L, t, 0, wait_k);
}

/* sig:close() and __close: idempotent; a task in wait() gets nil. */
static int l_close(lua_State *L) {
  sigbox *b = luaL_checkudata(L, 1, SIGNAL_MT);
  if (b->w)
    watcher_close(b->w, 1);
  return 0;
}

/* A collected box has no waiter (a waiting task holds it). */
static int l_gc(lua_State *L) {
  sigbox *b = lua_touserdata(L, 1);
  if (b->w)
    watcher_close(b->w, 0);
  return 0;
}

static int l_tostring(lua_State *L) {
  sigbox *b = luaL_checkudata(L, 1, SIGNAL_MT);
  const char *name = signame(b->signum);
  if (name)
    lua_pushstring(L, name);
  else
    lua_pushfstring(L, "%d", b->signum);
  lua_pushfstring(L, "tide.Signal(%s%s)", lua_tostring(L, -1),
                  b->w ? "" : ", closed");
  return 1;
}

int luaopen_tide_signal(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"wait", l_wait}, {"close", l_close}, {NULL, NULL}};
  tide_open(L);
  tide__new_type(L, SIGNAL_MT, methods, l_gc, l_close, l_tostring);
  lua_newtable(L);
  lua_pushcfunction(L, l_signal);
  lua_setfield(L, -2, "signal");
  return 1;
}
