/*
 * loop.c: one tide.run on one libuv loop. Owns the tide_sched: its handles
 * (a prepare and a check that run due timers and the ready queue, an idle
 * that keeps the poll from blocking while tasks are ready, the heap's timer,
 * the SIGINT/SIGTERM/SIGUSR1 defaults), the run itself (main task, then a
 * shutdown that cancels the tasks left and lets them clean up) and the
 * teardown that closes every handle it opened, leaving a loop it was
 * handed usable.
 *
 * Loop turn: timers -> idle -> prepare: due timers, virtual clock ->
 * poll (non-blocking while tasks are ready) -> check: due timers, run the
 * ready queue. Tasks woken by I/O callbacks run in the same turn's check.
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static void on_uv_idle(uv_idle_t *h) {
  (void)h; /* only there to make the poll phase non-blocking */
}

/* Idle is on while tasks are ready, or while the virtual clock can jump. */
void tide__sched_update(tide_sched *s) {
  int want = !s->closing &&
             (s->rq_len > 0 ||
              (s->virtual_clock && s->nheap > 0 && s->io_pending == 0));
  if (want && !s->idle_on)
    uv_idle_start(&s->idle, on_uv_idle);
  else if (!want && s->idle_on)
    uv_idle_stop(&s->idle);
  s->idle_on = want;
}

static void on_uv_prepare(uv_prepare_t *h) {
  tide_sched *s = h->data;
  s->rt->incb++;
  if (s->virtual_clock) {
    if (s->rq_len == 0 && s->io_pending == 0)
      tide__virtual_advance(s);
  } else {
    tide__fire_due(s);
    tide__timer_arm(s);
  }
  tide__sched_update(s);
  s->rt->incb--;
}

static void on_uv_check(uv_check_t *h) {
  tide_sched *s = h->data;
  s->rt->incb++;
  if (!s->virtual_clock)
    tide__fire_due(s);
  tide__run_ready(s);
  tide__timer_arm(s);
  tide__sched_update(s);
  s->rt->incb--;
}

/* Runs up to max rounds of what is left in the ready queue at a run's
 * end, outside uv_run, as a loop callback would (tide.run refused): the
 * bound keeps a callback that queues itself from holding the close. */
void tide__drain_ready(tide_sched *s, int max) {
  int i;
  s->rt->incb++;
  s->outside_uv++;
  for (i = 0; i < max && s->rq_len > 0; i++)
    tide__run_round(s);
  s->outside_uv--;
  s->rt->incb--;
}

static void cancel_main(tide_sched *s, const char *kind, const char *msg) {
  lua_State *L = s->L;
  if (s->main == NULL || s->main->state == TS_DONE)
    return;
  tide__push_task(L, s->main);
  tide__err_push(L, kind, "%s", msg);
  tide__cancel(L, -2, -1);
  lua_pop(L, 2);
  tide__sched_update(s);
}

/* ---- default signal handling -------------------------------------------
 * Only for runs with a main task (tide.run, tide_runtime_run, the command)
 * on loops tide owns (not on an application's loop, nor for background
 * tasks started from C, which leave signals to the application):
 *   SIGINT, SIGTERM  the first cancels the main task (kind "cancelled",
 *                    message "interrupted (SIGINT)" / "terminated
 *                    (SIGTERM)") so pcall and <close> clean-up runs; the
 *                    `tide` command then exits 128 + the signal (130 for
 *                    SIGINT, 143 for SIGTERM). A second one, of either,
 *                    exits at once, with the same code.
 *   SIGUSR1          prints the task tree.
 * While another watcher of the signal is open on the loop (a tide.signal
 * object, signal.c), the default stands aside: the script handles it, and
 * deliveries it takes do not count toward "a second one". */
static void on_uv_interrupt(uv_signal_t *h, int signum);
static void on_uv_sigusr1(uv_signal_t *h, int signum);

typedef struct sigquery {
  int signum, found;
} sigquery;

static void find_watcher(uv_handle_t *h, void *arg) {
  sigquery *q = arg;
  uv_signal_t *w = (uv_signal_t *)h;
  if (h->type == UV_SIGNAL && !uv_is_closing(h) && w->signum == q->signum &&
      w->signal_cb != on_uv_interrupt && w->signal_cb != on_uv_sigusr1)
    q->found = 1;
}

static int script_handles(uv_signal_t *h, int signum) {
  sigquery q = {signum, 0};
  uv_walk(h->loop, find_watcher, &q);
  return q.found;
}

/* The second signal must exit even while the loop cannot run its
 * watcher: a task busy in a Lua loop, a blocking io.read. So libuv's own
 * handler for SIGINT and SIGTERM is wrapped by one that counts deliveries
 * in the handler itself and exits at the second, then calls libuv's.
 * Process-wide, as signal dispositions are; deliveries a tide.signal
 * watcher takes do not count (signal.c keeps `watching`). */
static atomic_int raw_count;
static atomic_int watching[2];          /* open script watchers: INT, TERM */
static void (*uv_handler[2])(int);      /* libuv's handler we wrap */

static int sig_slot(int signum) {
  return signum == SIGINT ? 0 : signum == SIGTERM ? 1 : -1;
}

static void on_raw_signal(int signum) {
  int slot = sig_slot(signum), saved = errno;
  if (slot < 0)
    return;
  if (atomic_load(&watching[slot]) == 0 && atomic_fetch_add(&raw_count, 1) >= 1) {
    static const char m_int[] = "\ntide: interrupted twice, exiting now\n";
    static const char m_term[] = "\ntide: terminated twice, exiting now\n";
    ssize_t r = signum == SIGINT ? write(2, m_int, sizeof(m_int) - 1)
                                 : write(2, m_term, sizeof(m_term) - 1);
    (void)r;
    _exit(128 + signum); /* the shell's convention: 130, 143 */
  }
  uv_handler[slot](signum);
  errno = saved;
}

/* After uv_signal_start(signum): put on_raw_signal in front of libuv's
 * handler (once; libuv removes both when its last handle of the signal
 * stops). */
static void wrap_signal(int signum) {
  struct sigaction sa;
  int slot = sig_slot(signum);
  if (slot < 0 || sigaction(signum, NULL, &sa) != 0 ||
      (sa.sa_flags & SA_SIGINFO) || sa.sa_handler == on_raw_signal ||
      sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN)
    return;
  uv_handler[slot] = sa.sa_handler;
  sa.sa_handler = on_raw_signal;
  sigaction(signum, &sa, NULL);
}

/* tide's default watchers (SIGINT, SIGTERM, SIGUSR1) go only where the
 * signal is at its default (or already tide's: a nested run), as asyncio's
 * Runner installs its SIGINT handler only over the default one: a handler
 * the application (or lua5.4's lua.c) installed stays, and libuv's reset to
 * SIG_DFL when the last watcher stops is then the right restore. Counted
 * process-wide per signal: how many of tide's default watchers are on. */
static atomic_int ours[3]; /* SIGINT, SIGTERM, SIGUSR1 */

static atomic_int *ours_of(int signum) {
  return &ours[signum == SIGINT ? 0 : signum == SIGTERM ? 1 : 2];
}

/* Starts h on signum if tide may take the signal; returns whether it did. */
static int start_default(uv_signal_t *h, uv_signal_cb cb, int signum) {
  struct sigaction sa;
  if (atomic_load(ours_of(signum)) == 0 &&
      (sigaction(signum, NULL, &sa) != 0 || (sa.sa_flags & SA_SIGINFO) ||
       sa.sa_handler != SIG_DFL))
    return 0;
  if (uv_signal_start(h, cb, signum) != 0)
    return 0;
  atomic_fetch_add(ours_of(signum), 1);
  wrap_signal(signum);
  uv_unref((uv_handle_t *)h);
  return 1;
}

/* Closes a watcher start_default may have started. */
static void close_default(uv_signal_t *h, uv_close_cb cb) {
  if (uv_is_active((uv_handle_t *)h))
    atomic_fetch_sub(ours_of(h->signum), 1);
  uv_close((uv_handle_t *)h, cb);
}

void tide__signal_watching(int signum, int delta) {
  int slot = sig_slot(signum);
  if (slot >= 0)
    atomic_fetch_add(&watching[slot], delta);
}

void tide__signals_forget(tide_runtime *rt) {
  rt->sigints = 0;
  atomic_store(&raw_count, 0);
}

static void on_uv_interrupt(uv_signal_t *h, int signum) {
  tide_sched *s = h->data;
  if (script_handles(h, signum))
    return;
  /* once the main task has ended, the run is only waiting for tasks that
   * were cancelled to finish: a signal then ends it at once (asyncio raises
   * KeyboardInterrupt at once then) */
  if (++s->rt->sigints >= 2 || (s->main && s->main->state == TS_DONE)) {
    fprintf(stderr, "\ntide: %s %s, exiting now\n",
            signum == SIGINT ? "interrupted" : "terminated",
            s->rt->sigints >= 2 ? "twice" : "after the main task ended");
    _exit(128 + signum); /* the shell's convention: 130, 143 */
  }
  lua_pushinteger(s->L, signum); /* tide.run tells main.c (tide.interrupted) */
  lua_setfield(s->L, LUA_REGISTRYINDEX, "tide.interrupt_signal");
  if (s->rt->sched == s)
    cancel_main(s, "cancelled", signum == SIGINT ? "interrupted (SIGINT)"
                                                 : "terminated (SIGTERM)");
}

static void on_uv_sigusr1(uv_signal_t *h, int signum) {
  tide_sched *s = h->data;
  if (script_handles(h, signum))
    return;
  lua_pushcfunction(s->L, tide__dump_tasks);
  tide__call_protected(s->L, 0, "dump_tasks", CALL_USER);
}

/* SIGTERM's watcher is not in tide_sched: it hangs on the run's closers,
 * which close it (and the close callback frees it) at the run's end. */
typedef struct sigterm_watch {
  tide_closer closer;
  uv_signal_t h;
} sigterm_watch;

static void on_uv_close_sigterm(uv_handle_t *h) {
  free((char *)h - offsetof(sigterm_watch, h));
}

static void close_sigterm(tide_closer *c) {
  close_default(&((sigterm_watch *)c)->h, on_uv_close_sigterm);
}

static void start_sigterm(tide_sched *s) {
  sigterm_watch *w = calloc(1, sizeof(*w));
  if (w == NULL)
    return; /* SIGTERM then just kills the process, as by default */
  uv_signal_init(s->loop, &w->h);
  w->h.data = s;
  start_default(&w->h, on_uv_interrupt, SIGTERM);
  w->closer.close = close_sigterm;
  tide__closer_add(s, &w->closer);
}

/* Under lua5.4 (tide.so) SIGINT is lua.c's: it sets a hook on the main
 * thread that stops the next Lua instruction there ("interrupted!"), and
 * tide leaves another's handler alone. A run waiting in libuv runs no Lua
 * on that thread, so a Ctrl-C went unnoticed until the run ended; and a
 * loop callback (Lua on that thread) would have swallowed it. While
 * another handler has SIGINT and no hook was set when the run began, the
 * run looks for lua.c's hook (every event, count 1) ten times a second and
 * before each callback; when it is set, tide takes it off and cancels the
 * main task as its own watcher would (tide.run then raises that). */
typedef struct hook_watch {
  tide_closer closer;
  uv_timer_t h;
} hook_watch;

/* lua.c's stop hook: every event, count 1, and not debug.sethook's
 * function (Debian's lua5.4 has the Lua library in the program, so the
 * address alone cannot tell them apart: the library's is found at start). */
static int has_stop_hook(lua_State *L, lua_Hook debug_hook) {
  lua_Hook h = lua_gethook(L);
  return h != NULL && h != debug_hook && lua_gethookcount(L) == 1 &&
         lua_gethookmask(L) ==
             (LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT);
}

static int nop(lua_State *L) {
  (void)L;
  return 0;
}

/* The hook function debug.sethook installs (NULL without the debug
 * library): set on a scratch thread and read back. */
static lua_Hook debug_hook_of(lua_State *L) {
  lua_Hook h = NULL;
  int top = lua_gettop(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "debug") == LUA_TTABLE &&
      lua_getfield(L, -1, "sethook") == LUA_TFUNCTION) {
    lua_State *T = lua_newthread(L);
    lua_pushvalue(L, -2);
    lua_pushthread(T);
    lua_xmove(T, L, 1);
    lua_pushcfunction(L, nop);
    lua_pushliteral(L, "l");
    if (lua_pcall(L, 3, 0, 0) == LUA_OK)
      h = lua_gethook(T);
  }
  lua_settop(L, top);
  return h;
}

static lua_State *main_thread(lua_State *L) {
  lua_State *main;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  main = lua_tothread(L, -1);
  lua_pop(L, 1);
  return main;
}

void tide__take_stop_hook(tide_sched *s) {
  lua_State *main;
  if (s == NULL || !s->stop_watch || s->main == NULL ||
      s->main->state == TS_DONE || /* left to lua.c: it stops the script */
      (main = main_thread(s->L)) == NULL || !has_stop_hook(main, s->debug_hook))
    return;
  lua_sethook(main, NULL, 0, 0);
  cancel_main(s, "cancelled", "interrupted (SIGINT)");
}

static void on_uv_hook_watch(uv_timer_t *h) {
  tide__take_stop_hook(h->data);
}

static void on_uv_close_hook_watch(uv_handle_t *h) {
  free((char *)h - offsetof(hook_watch, h));
}

static void close_hook_watch(tide_closer *c) {
  uv_close((uv_handle_t *)&((hook_watch *)c)->h, on_uv_close_hook_watch);
}

static void start_hook_watch(tide_sched *s) {
  struct sigaction sa;
  lua_State *main = main_thread(s->L);
  hook_watch *w;
  if (uv_is_active((uv_handle_t *)&s->sigint) || sigaction(SIGINT, NULL, &sa) != 0 ||
      (!(sa.sa_flags & SA_SIGINFO) &&
       (sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN)) ||
      main == NULL || lua_gethook(main) != NULL || /* a debugger's, say */
      (w = calloc(1, sizeof(*w))) == NULL)
    return;
  s->stop_watch = 1;
  s->debug_hook = debug_hook_of(s->L);
  uv_timer_init(s->loop, &w->h);
  w->h.data = s;
  uv_timer_start(&w->h, on_uv_hook_watch, 100, 100);
  uv_unref((uv_handle_t *)&w->h);
  w->closer.close = close_hook_watch;
  tide__closer_add(s, &w->closer);
}

static int new_table_ref(lua_State *L, const char *mode) {
  lua_newtable(L);
  if (mode) {
    lua_createtable(L, 0, 1);
    lua_pushstring(L, mode);
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
  }
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Makes a sched on `loop` (NULL: a loop of its own) whose callbacks run on
 * L. Returns NULL if libuv fails (the reason is pushed as an error). */
tide_sched *tide__sched_new(lua_State *L, tide_runtime *rt, uv_loop_t *loop,
                            int virtual_clock, int signals) {
  tide_sched *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return NULL;
  s->rt = rt;
  s->L = L;
  if (loop == NULL) {
    int rc = uv_loop_init(&s->loop_storage);
    if (rc < 0) {
      free(s);
      tide__err_push(L, "uv", "cannot create a loop: %s", uv_strerror(rc));
      return NULL;
    }
    loop = &s->loop_storage;
    s->own_loop = 1;
  }
  s->loop = loop;
  s->closers.next = s->closers.prev = &s->closers;
  s->virtual_clock = virtual_clock;
  s->vnow = uv_hrtime();
  uv_prepare_init(loop, &s->prepare);
  uv_check_init(loop, &s->check);
  uv_idle_init(loop, &s->idle);
  uv_timer_init(loop, &s->timer);
  uv_signal_init(loop, &s->sigint);
  uv_signal_init(loop, &s->sigusr1);
  s->prepare.data = s->check.data = s->idle.data = s->timer.data = s;
  s->sigint.data = s->sigusr1.data = s;
  uv_prepare_start(&s->prepare, on_uv_prepare);
  uv_check_start(&s->check, on_uv_check);
  uv_unref((uv_handle_t *)&s->prepare);
  uv_unref((uv_handle_t *)&s->check);
  /* a run with a main task (tide.run, the command), not on an app's loop */
  if (signals && (s->own_loop || loop == rt->owned_loop)) {
    start_default(&s->sigint, on_uv_interrupt, SIGINT);
    start_hook_watch(s);
    start_sigterm(s);
    start_default(&s->sigusr1, on_uv_sigusr1, SIGUSR1);
  }
  s->tasks_ref = new_table_ref(L, NULL);
  s->handles_ref = new_table_ref(L, NULL);
  s->pending_ref = new_table_ref(L, "k");
  s->extra_ref = new_table_ref(L, "k");
  s->counts_ref = new_table_ref(L, "k");
  s->waiters_ref = new_table_ref(L, NULL);
  return s;
}

static void on_uv_close_noop(uv_handle_t *h) {
  (void)h;
}

/* The sched's handles live in it: it is freed when the last one closed. */
static void on_uv_close_sched(uv_handle_t *h) {
  tide_sched *s = h->data;
  if (--s->open_handles == 0 && !s->own_loop)
    free(s);
}

/* uv_walk callback closing every handle of a loop tide is closing. */
void tide__walk_close(uv_handle_t *h, void *arg) {
  (void)arg;
  if (uv_is_closing(h))
    return;
  if (h->type == UV_TCP && h->data)
    tide__net_close(h); /* streams and servers free their own structs */
  else
    uv_close(h, on_uv_close_noop);
}

/* Closes the sched's handles, drops armed call_later handles, frees it.
 * A loop tide owns is closed too; a loop handed in is left usable.
 * Returns the uv_loop_close result (0) for an owned loop, else 0. */
int tide__sched_close(tide_sched *s) {
  lua_State *L = s->L;
  int rc = 0, i;
  s->closing = 1;
  while (s->closers.next != &s->closers) {
    tide_closer *c = s->closers.next;
    tide__closer_remove(c);
    c->close(c);
  }
  uv_walk(s->loop, tide__net_close_servers, s); /* nobody runs their handler */
  for (i = 0; i < s->nheap; i++) {
    s->heap[i].n->idx = -1;
    if (s->heap[i].n->kind == TN_HANDLE)
      ((tide_handle *)s->heap[i].n)->cancelled = 1;
  }
  s->nheap = 0;
  luaL_unref(L, LUA_REGISTRYINDEX, s->tasks_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, s->handles_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, s->pending_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, s->extra_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, s->counts_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, s->waiters_ref);
  tide__big(s->heap, sizeof(*s->heap) * (size_t)s->capheap, 0);
  free(s->free);
  tide__rq_drop(s);
  tide__big(s->rq, sizeof(*s->rq) * (size_t)s->rq_cap, 0);
  s->heap = NULL;
  s->free = NULL;
  s->rq = NULL;
  s->capheap = s->rq_cap = 0;
  s->open_handles = 6;
  uv_close((uv_handle_t *)&s->prepare, on_uv_close_sched);
  uv_close((uv_handle_t *)&s->check, on_uv_close_sched);
  uv_close((uv_handle_t *)&s->idle, on_uv_close_sched);
  uv_close((uv_handle_t *)&s->timer, on_uv_close_sched);
  close_default(&s->sigint, on_uv_close_sched);
  close_default(&s->sigusr1, on_uv_close_sched);
  if (s->own_loop) { /* run it until every handle is closed, then close it */
    uv_walk(s->loop, tide__walk_close, NULL);
    uv_run(s->loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(s->loop);
    free(s);
  }
  /* On a loop handed in, the application's next uv_run delivers the close
   * callbacks; the last one frees s. */
  return rc;
}

void tide__closer_add(tide_sched *s, tide_closer *c) {
  c->next = s->closers.next;
  c->prev = &s->closers;
  c->next->prev = c;
  s->closers.next = c;
}

void tide__closer_remove(tide_closer *c) {
  if (c->next) {
    c->next->prev = c->prev;
    c->prev->next = c->next;
    c->next = c->prev = NULL;
  }
}

/* Cancels every task of s but the main one. */
void tide__cancel_all(tide_sched *s, const char *why) {
  lua_State *L = s->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->tasks_ref);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (lua_type(L, -1) == LUA_TUSERDATA && lua_touserdata(L, -1) != s->main) {
      tide__err_push(L, "cancelled", "%s", why);
      tide__cancel(L, -2, -1);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* TIDE_DEBUG: the tasks still pending (when: at what point of the end). */
static void list_pending(tide_sched *s, const char *when) {
  if (s->ntasks > 0) {
    fprintf(stderr, "tide: %d task(s) still pending %s:\n", s->ntasks, when);
    lua_pushcfunction(s->L, tide__dump_tasks);
    tide__call_protected(s->L, 0, "dump_tasks", CALL_USER);
  }
}

/* [-(nargs+1), +1, -] Runs the function below nargs arguments as the main
 * task of a new sched until it ends, then shuts the sched down. Leaves the
 * main task's userdata on the stack; returns it. */
static tide_task *run_main(lua_State *L, tide_runtime *rt, uv_loop_t *loop,
                           int virtual_clock, int nargs) {
  tide_sched *s;
  tide_task *main, *saved = rt->current;
  int fidx = lua_gettop(L) - nargs, tries, unyieldable = rt->unyieldable;
  s = tide__sched_new(L, rt, loop, virtual_clock, 1);
  if (s == NULL)
    lua_error(L);
  s->outer = rt->sched;
  rt->sched = s;
  rt->current = NULL;
  rt->unyieldable = 0; /* the run's tasks park to its own loop */
  main = tide__spawn(L, s, fidx, nargs);
  s->main = main;
  lua_getfield(L, LUA_REGISTRYINDEX, "tide.names");
  lua_pushvalue(L, -2);
  lua_pushliteral(L, "main");
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_replace(L, fidx);
  lua_settop(L, fidx);
  uv_run(s->loop, UV_RUN_DEFAULT);
  /* The loop ran dry with main still waiting: nothing can wake it. Tell
   * it (a "deadlock" error at its suspension point), as often as it
   * catches that and waits again, up to a bound. */
  for (tries = 0; main->state != TS_DONE && tries < 100; tries++) {
    cancel_main(s, "deadlock",
                "the main task is waiting and nothing is left that could "
                "wake it (no timers, I/O or ready tasks)");
    uv_run(s->loop, UV_RUN_DEFAULT);
  }
  /* a SIGINT or SIGTERM that came while main never gave the loop a turn
   * (a spinning main chunk) is still in libuv's pipe: one turn delivers it
   * (on_uv_interrupt then ends the process, as after main ended) */
  if (main->state == TS_DONE && atomic_load(&raw_count) > 0 && rt->sigints == 0) {
    uv_ref((uv_handle_t *)&s->sigint); /* a loop with nothing alive does not poll */
    uv_run(s->loop, UV_RUN_NOWAIT);
    uv_unref((uv_handle_t *)&s->sigint);
  }
  /* the round after main's end (asyncio's stop comes then) runs, if the
   * loop turn's budget ended first */
  if (main->state == TS_DONE && s->rounds_after_main < 2) {
    s->rounds_after_main = 2;
    tide__fire_due(s); /* (queues only) */
    tide__drain_ready(s, 1);
  }
  if (rt->debug)
    list_pending(s, "when the run's main task ended (cancelling them)");
  if (s->ntasks > 0) {
    tide__cancel_all(s, "the run's main task ended");
    tide__sched_update(s);
    uv_run(s->loop, UV_RUN_DEFAULT);
  }
  /* callbacks still queued (done callbacks of the tasks just cancelled)
   * run, as asyncio's shutdown runs its loop a few more iterations */
  tide__drain_ready(s, 100);
  if (rt->debug)
    list_pending(s, "after the cancel (abandoned)");
  tide__abandon_all(s);
  rt->sched = s->outer;
  rt->current = saved;
  rt->unyieldable = unyieldable;
  if (tide__sched_close(s) != 0)
    fprintf(stderr, "tide: warning: the loop still had open handles\n");
  return main;
}

/* tide.run([opts,] fn, ...) -> fn's results, or raises its error */
int tide__run(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  int virtual_clock = 0, fidx = 1;
  tide_task *main;
  if (lua_type(L, 1) == LUA_TTABLE) {
    static const char *const known[] = {"clock", NULL};
    const char *clock;
    tide__check_opts(L, 1, known, -1);
    lua_getfield(L, 1, "clock");
    clock = luaL_optstring(L, -1, "real");
    if (strcmp(clock, "virtual") == 0)
      virtual_clock = 1;
    else if (strcmp(clock, "real") != 0)
      luaL_argerror(L, 1, "opts.clock must be \"real\" or \"virtual\"");
    lua_pop(L, 1);
    fidx = 2;
  }
  luaL_checktype(L, fidx, LUA_TFUNCTION);
  if (rt->incb && rt->current == NULL)
    return tide__raise_kind_at_user(L, "invalid_state", "tide.run cannot be "
                                    "called from a loop callback (only from "
                                    "a task or outside any loop)");
  if (rt->sandbox && rt->current != NULL)
    return tide__raise_kind_at_user(L, "invalid_state", "tide.run inside a "
                                    "task is not available in a sandbox (it "
                                    "would hold the loop the task runs on)");
  lua_rotate(L, 1, -(fidx - 1));
  lua_settop(L, lua_gettop(L) - (fidx - 1));
  main = run_main(L, rt, rt->current == NULL ? rt->loop : NULL, virtual_clock,
                  lua_gettop(L) - 1);
  {
    int ud = lua_gettop(L), n;
    if (main->flags & TF_FAILED) {
      tide__push_trace(L, main, ud);
      lua_setfield(L, LUA_REGISTRYINDEX, "tide.main_traceback");
    } else if ((main->flags & TF_CANCELLED) && rt->sigints > 0) {
      /* the signal's number: main.c exits 128 + it */
      lua_getfield(L, LUA_REGISTRYINDEX, "tide.interrupt_signal");
      lua_setfield(L, LUA_REGISTRYINDEX, "tide.interrupted");
    }
    if (main->state != TS_DONE)
      return luaL_error(L, "tide.run: the main task never ended (it kept "
                           "waiting after being told of a deadlock)");
    if (main->flags & (TF_FAILED | TF_CANCELLED)) {
      main->flags |= TF_RETRIEVED;
      tide__push_error(L, main, ud);
      return lua_error(L);
    }
    lua_getfield(L, ud, "result");
    lua_pushvalue(L, ud);
    lua_call(L, 1, LUA_MULTRET);
    n = lua_gettop(L) - ud;
    return n;
  }
}

/* Public: runs the function below nargs arguments as the main task. */
int tide_runtime_run(tide_runtime *rt, int nargs, int *nresults) {
  lua_State *L = rt->L;
  int base = lua_gettop(L) - nargs - 1, st;
  if (rt->current != NULL || rt->closing) { /* a C function a task called
                              * (its own state runs tide.run), or a done
                              * callback of the close */
    lua_settop(L, base);
    lua_pushliteral(L, "tide_runtime_run called from inside a task: refused "
                       "(call tide.run from the task's Lua code instead)");
    if (nresults)
      *nresults = 0;
    return LUA_ERRRUN;
  }
  tide__load_coroutine(L);
  lua_pushcfunction(L, tide__run);
  lua_insert(L, base + 1);
  st = lua_pcall(L, nargs + 1, LUA_MULTRET, 0);
  if (nresults)
    *nresults = st == LUA_OK ? lua_gettop(L) - base : 0;
  return st;
}

/* ---- task dump ------------------------------------------------------- */

/* Prints the task tree (tide.dump_tasks in lua/tide.lua) to stderr. */
int tide__dump_tasks(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "tide");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "dump_tasks");
  lua_call(L, 0, 0);
  return 0;
}
