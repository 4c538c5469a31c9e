/*
 * process.c: subprocesses on uv_spawn ("tide.process"). Owns the
 * "tide.Process" type: a userdata box pointing at a C struct that holds the
 * uv_process_t, because the handle must stay open until the child has been
 * reaped (its exit callback), whatever happens to the Lua object. The child's
 * stdin, stdout and stderr are tide.Stream pipes from net.c, kept in the
 * box's user values (1, 2, 3) and shown as p.stdin, p.stdout, p.stderr.
 *
 *   process.spawn(argv [, opts]) -> Process  (stdio "pipe" by default)
 *   process.run(argv [, opts])   -> {code, signal, stdout, stderr}
 *   process.shell(cmdline [, opts]) = run({"/bin/sh", "-c", cmdline}, opts)
 *   p:wait() -> code, signal;  p:kill([sig]) -> sent;  p:close();  p.pid
 *
 * Never through a shell unless asked (shell). opts: stdin, stdout, stderr
 * ("pipe" | "inherit" | "null"; stderr also "stdout"), env (name -> value: replaces the whole
 * environment; PATH included, execvp then searches /bin:/usr/bin without
 * one), cwd, limit (the pipes' read_line/read_until limit, as net's); run
 * and shell add input (string fed to stdin, then closed;
 * stdin defaults to "null" without it) and timeout (seconds); run returns
 * once the child exited and its output ended (a grandchild holding the
 * pipes holds run too, as in Python's subprocess.run). A child that
 * exited has code = its status and signal = nil; one killed by a signal has
 * code = nil and signal = the name ("SIGKILL"; a number if it has none).
 *
 * Lifetimes: the struct is freed when both the handle is closed (after
 * the exit, or at the run's end) and the box is closed or collected.
 * - close(), <close> and the collector kill a child that still runs with
 *   SIGKILL (asyncio's transport close; for a gentle stop, kill("SIGTERM")
 *   and wait with a timeout first); the exit still reaps it. close() also
 *   closes the three streams and wakes tasks in wait() with an error.
 * - A task cancelled in wait() only stops waiting: the child goes on until
 *   it exits, is killed, closed or collected. run() kills its child when
 *   cancelled or timed out (SIGKILL; the timeout error carries the output
 *   captured so far: fields stdout, stderr, timeout).
 * - A child still running when its run (tide.run) ends is killed with
 *   SIGKILL and reaped there (a blocking waitpid): no zombie. Signals go
 *   to the child only, not to processes it started (no process groups).
 * - The handle keeps the loop alive only while a task waits on it; a
 *   waiting task counts as pending I/O for the virtual clock.
 * Loading the module calls uv_disable_stdio_inheritance() once, so
 * descriptors tide inherited do not leak into children (fds 0-2 excepted:
 * os.execute and io.popen hand them on); and every spawn makes the
 * descriptors from 3 up close-on-exec for its child (hide_fds), as Python's
 * close_fds: a file of Lua's io.open, or one libuv's pass missed (it stops
 * at the first gap past 15). SIGPIPE is tide_open's (a write to a closed
 * pipe fails with EPIPE).
 *
 * Errors: a failed spawn and a failed kill are kind "process", with `code`
 * (the errno name, "ENOENT") and `program`, and `path` = cwd when cwd is
 * what is missing (not a directory); bad arguments raise at the
 * call, by position. run/shell's capture runs in lua/tide/process_lua.lua.
 */
#define _DEFAULT_SOURCE /* NSIG, waitpid and the signals' names */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#define PROCESS_MT "tide.Process"

typedef struct proc_box proc_box;

typedef struct proc {
  tide_closer closer;    /* on its run's list while the child runs */
  uv_process_t h;
  proc_box *box;         /* NULL once the Lua object let go */
  tide_sched *sched;     /* NULL once its run ended */
  tide_waitlist waiters; /* tasks in wait() */
  int nwait;             /* how many (each one is pending I/O) */
  int running;           /* not reaped yet */
  int closed;            /* the handle's close callback ran */
  int sig;               /* terminating signal, 0 if it exited */
  int64_t code;          /* exit status */
} proc;

struct proc_box {
  proc *p; /* NULL once closed or collected */
  int pid;
  int killed; /* close() killed the running child */
};

/* ---- signals --------------------------------------------------------- */

#define SIG(n) {n, #n}
static const struct {
  int sig;
  const char *name;
} signals[] = {
  SIG(SIGHUP),  SIG(SIGINT),  SIG(SIGQUIT),   SIG(SIGILL),  SIG(SIGTRAP),
  SIG(SIGABRT), SIG(SIGBUS),  SIG(SIGFPE),    SIG(SIGKILL), SIG(SIGUSR1),
  SIG(SIGSEGV), SIG(SIGUSR2), SIG(SIGPIPE),   SIG(SIGALRM), SIG(SIGTERM),
  SIG(SIGCHLD), SIG(SIGCONT), SIG(SIGSTOP),   SIG(SIGTSTP), SIG(SIGTTIN),
  SIG(SIGTTOU), SIG(SIGURG),  SIG(SIGXCPU),   SIG(SIGXFSZ), SIG(SIGVTALRM),
  SIG(SIGPROF), SIG(SIGWINCH), SIG(SIGIO),    SIG(SIGSYS)};
#define NSIGNALS (sizeof(signals) / sizeof(signals[0]))

static void push_signal(lua_State *L, int sig) {
  size_t i;
  for (i = 0; i < NSIGNALS; i++)
    if (signals[i].sig == sig) {
      lua_pushstring(L, signals[i].name);
      return;
    }
  lua_pushinteger(L, sig);
}

/* A signal at idx: a number, or a name with or without "SIG", any case
 * (as tide.signal takes them). */
static int check_signal(lua_State *L, int idx, int def) {
  const char *name;
  size_t i;
  if (lua_isnoneornil(L, idx))
    return def;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, idx);
    if (n < 0 || n >= NSIG)
      luaL_argerror(L, idx, lua_pushfstring(L, "signal number from 0 to %d expected, "
                                            "got %I", NSIG - 1, n));
    return (int)n;
  }
  name = luaL_checkstring(L, idx);
  for (i = 0; i < NSIGNALS; i++)
    if (strcasecmp(name, signals[i].name) == 0 ||
        strcasecmp(name, signals[i].name + 3) == 0)
      return signals[i].sig;
  return luaL_argerror(L, idx, lua_pushfstring(L, "unknown signal '%s'", name));
}

/* ---- errors ---------------------------------------------------------- */

/* Raises "<what> '<program>': <reason>", or, when the fault is directory
 * cwd's (cwd not NULL), "<what> '<program>': cwd '<cwd>': <reason>" with
 * the field path = cwd. */
static int raise_process(lua_State *L, int rc, const char *what,
                         const char *program, const char *cwd) {
  if (cwd)
    tide__err_push(L, "process", "%s '%s': cwd '%s': %s (%s)", what, program,
                   cwd, uv_strerror(rc), uv_err_name(rc));
  else
    tide__err_push(L, "process", "%s '%s': %s (%s)", what, program,
                   uv_strerror(rc), uv_err_name(rc));
  lua_pushstring(L, uv_err_name(rc));
  lua_setfield(L, -2, "code");
  lua_pushstring(L, program);
  lua_setfield(L, -2, "program");
  if (cwd) {
    lua_pushstring(L, cwd);
    lua_setfield(L, -2, "path");
  }
  return lua_error(L);
}

/* uv_spawn's ENOENT or ENOTDIR comes from the child's chdir as well as
 * from its exec: it is cwd's fault when cwd is not a directory. Returns
 * that fault (the reason cwd is not one), else 0. Only on this failure
 * path, so a blocking stat(2) is fine. */
static int cwd_fault(const char *cwd, int rc) {
  struct stat st;
  if (cwd == NULL || (rc != UV_ENOENT && rc != UV_ENOTDIR))
    return 0;
  if (stat(cwd, &st) != 0)
    return uv_translate_sys_error(errno);
  return S_ISDIR(st.st_mode) ? 0 : UV_ENOTDIR;
}

/* ---- the child ------------------------------------------------------- */

static void proc_free(proc *p) {
  tide__wl_free(&p->waiters);
  free(p);
}

static void on_uv_closed(uv_handle_t *h) {
  proc *p = h->data;
  p->closed = 1;
  if (p->box == NULL)
    proc_free(p);
}

/* n tasks left wait(); the handle holds the loop while someone waits. */
static void unwait(proc *p, int n) {
  p->nwait -= n;
  p->sched->io_pending -= n;
  if (p->nwait == 0)
    uv_unref((uv_handle_t *)&p->h);
}

/* Wakes every task in wait(); each then finds the exit or the close. */
static void wake_waiters(proc *p) {
  if (p->nwait > 0) {
    tide__wl_wake_all(p->sched->L, &p->waiters);
    unwait(p, p->nwait);
  }
}

static void on_uv_exit(uv_process_t *h, int64_t code, int sig) {
  proc *p = h->data;
  p->running = 0;
  p->code = code;
  p->sig = sig;
  tide__closer_remove(&p->closer);
  wake_waiters(p);
  uv_close((uv_handle_t *)h, on_uv_closed);
}

/* The run ends with the child still running: kill it and reap it here,
 * since no exit callback will come once the handle is closed. Its tasks
 * were abandoned already (out of the wait list). */
static void on_run_end(tide_closer *c) {
  proc *p = (proc *)c;
  int st = 0;
  uv_process_kill(&p->h, SIGKILL);
  while (waitpid(p->h.pid, &st, 0) < 0 && errno == EINTR)
    ;
  p->running = 0;
  p->code = WIFEXITED(st) ? WEXITSTATUS(st) : 0;
  p->sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
  tide__wl_free(&p->waiters);
  p->nwait = 0;
  p->sched = NULL;
  uv_close((uv_handle_t *)&p->h, on_uv_closed);
}

/* The box lets go of its child (close or collection): a running child is
 * killed (reaped by its exit callback); tasks in wait() are woken to
 * return that end (nil, "SIGKILL"), as asyncio's wait() returns -9 after
 * its transport killed the child. */
static void proc_release(proc_box *b) {
  proc *p = b->p;
  if (p == NULL)
    return;
  b->p = NULL;
  p->box = NULL;
  if (p->running) {
    uv_process_kill(&p->h, SIGKILL);
    b->killed = 1;
    wake_waiters(p);
  }
  if (p->closed)
    proc_free(p);
}

static proc *check_proc(lua_State *L, int idx) {
  proc_box *b = luaL_checkudata(L, idx, PROCESS_MT);
  if (b->p == NULL)
    tide__err_raise(L, "closed", "attempt to use a closed process");
  return b->p;
}

/* [-0, +2, -] code, nil after an exit; nil, signal after a kill. */
static int push_exit(lua_State *L, proc *p) {
  if (p->sig) {
    lua_pushnil(L);
    push_signal(L, p->sig);
  } else {
    lua_pushinteger(L, (lua_Integer)p->code);
    lua_pushnil(L);
  }
  return 2;
}

/* ---- methods --------------------------------------------------------- */

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (!lua_toboolean(L, 2)) { /* cancelled: leave the list if still in it */
    tide_task *t = tide__rt(L)->current;
    if (t->tn.kind == TN_WAITING) {
      proc *p = (proc *)((char *)t->tn.wl - offsetof(proc, waiters));
      tide__wl_remove(t->tn.wl, t);
      unwait(p, 1);
    }
    lua_pushvalue(L, 3);
    return lua_error(L);
  }
  if (((proc_box *)lua_touserdata(L, 1))->killed) { /* closed meanwhile */
    lua_pushnil(L);
    push_signal(L, SIGKILL);
    return 2;
  }
  return push_exit(L, check_proc(L, 1));
}

/* p:wait() -> code, signal, once the child exited (suspends until then) */
static int pr_wait(lua_State *L) {
  proc *p = check_proc(L, 1);
  tide_task *t;
  lua_settop(L, 1);
  if (!p->running)
    return push_exit(L, p);
  t = tide__current(L);
  tide__wl_push(L, &p->waiters, t);
  if (p->nwait++ == 0)
    uv_ref((uv_handle_t *)&p->h);
  p->sched->io_pending++;
  return tide__park(L, t, 0, wait_k);
}

/* p:kill([signal]) -> true if sent, false if the child exited already.
 * Default SIGTERM. */
static int pr_kill(lua_State *L) {
  proc *p = check_proc(L, 1);
  int sig = check_signal(L, 2, SIGTERM), rc;
  if (!p->running) {
    lua_pushboolean(L, 0);
    return 1;
  }
  rc = uv_process_kill(&p->h, sig);
  if (rc < 0) {
    lua_getiuservalue(L, 1, 4);
    return raise_process(L, rc, "cannot signal", lua_tostring(L, -1), NULL);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* p:close(): closes the streams, kills a running child (SIGKILL). */
static int pr_close(lua_State *L) {
  proc_box *b = luaL_checkudata(L, 1, PROCESS_MT);
  int i;
  for (i = 1; i <= 3; i++) {
    lua_getiuservalue(L, 1, i);
    tide__stream_close(L, -1);
    lua_pop(L, 1);
  }
  proc_release(b);
  return 0;
}

static int pr_gc(lua_State *L) {
  proc_release(luaL_checkudata(L, 1, PROCESS_MT));
  return 0;
}

static int pr_tostring(lua_State *L) {
  proc_box *b = luaL_checkudata(L, 1, PROCESS_MT);
  proc *p = b->p;
  if (p == NULL)
    lua_pushfstring(L, "tide.Process (pid %d, closed)", b->pid);
  else if (p->running)
    lua_pushfstring(L, "tide.Process (pid %d, running)", b->pid);
  else if (p->sig) {
    push_signal(L, p->sig);
    lua_pushfstring(L, "tide.Process (pid %d, killed by %s)", b->pid,
                    lua_tostring(L, -1));
  } else
    lua_pushfstring(L, "tide.Process (pid %d, exited with %d)", b->pid,
                    (int)p->code);
  return 1;
}

/* __index: p.pid, p.stdin, p.stdout, p.stderr, then the methods (upvalue) */
static int pr_index(lua_State *L) {
  static const char *const fields[] = {"stdin", "stdout", "stderr", NULL};
  proc_box *b = luaL_checkudata(L, 1, PROCESS_MT);
  const char *k = lua_tostring(L, 2);
  int i;
  if (k && strcmp(k, "pid") == 0) {
    lua_pushinteger(L, b->pid);
    return 1;
  }
  for (i = 0; k && fields[i]; i++)
    if (strcmp(k, fields[i]) == 0) {
      lua_getiuservalue(L, 1, i + 1);
      return 1;
    }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

/* ---- spawning -------------------------------------------------------- */

enum { IO_PIPE, IO_INHERIT, IO_NULL, IO_STDOUT };
/* "stdout" is stderr's only: asyncio's STDOUT, both into stdout's place */
static const char *const io_modes[] = {"pipe", "inherit", "null", "stdout", NULL};
static const char *const io_names[] = {"stdin", "stdout", "stderr"};
/* spawn's options, then the two run and shell add */
static const char *const opt_names[] = {"stdin", "stdout", "stderr", "env",
                                        "cwd", "limit", "input", "timeout",
                                        NULL};
#define SPAWN_OPTS 6

/* Whether the string at idx has a zero byte (exec and chdir would stop
 * there: a different program, argument or directory, silently). */
static int has_zero(lua_State *L, int idx) {
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  return s && strlen(s) != len;
}

/* [-0, +1, v] Pushes opts[name] (nil without opts); raises unless it is
 * nil or of type t. Returns its type. */
static int opt(lua_State *L, const char *name, int t) {
  int got = LUA_TNIL;
  if (lua_istable(L, 2))
    got = lua_getfield(L, 2, name);
  else
    lua_pushnil(L);
  if (got != LUA_TNIL && got != t)
    luaL_argerror(L, 2, lua_pushfstring(L, "opts.%s: %s expected, got %s",
                                        name, lua_typename(L, t),
                                        luaL_typename(L, -1)));
  return got;
}

/* [-0, +1, v] Pushes a NULL-terminated array of n + 1 pointers (a
 * userdata, collected with the call's stack). */
static const char **new_ptrs(lua_State *L, size_t n) {
  const char **v = lua_newuserdatauv(L, (n + 1) * sizeof(*v), 0);
  memset(v, 0, (n + 1) * sizeof(*v));
  return v;
}

/* opts.stdin, stdout or stderr (i = 0, 1, 2): IO_*, def if not set. */
static int io_mode(lua_State *L, int i, int def) {
  int m = def;
  if (opt(L, io_names[i], LUA_TSTRING) != LUA_TNIL) {
    const char *name = lua_tostring(L, -1);
    for (m = 0; io_modes[m] && strcmp(name, io_modes[m]) != 0; m++)
      ;
    if (io_modes[m] == NULL || (m == IO_STDOUT && i != 2))
      luaL_argerror(L, 2, lua_pushfstring(L, "opts.%s: \"pipe\", \"inherit\""
                                          "%s or \"null\" expected, got '%s'",
                                          io_names[i], i == 2 ? ", \"stdout\"" : "",
                                          name));
  }
  lua_pop(L, 1);
  return m;
}

/* [-0, +2, v] Pushes the environment array made from opts.env and the
 * table anchoring its "name=value" strings; returns the array, or NULL
 * (and pushes two nils) without opts.env. */
static char **check_env(lua_State *L) {
  const char **env;
  size_t n = 0;
  int t;
  if (opt(L, "env", LUA_TTABLE) == LUA_TNIL) {
    lua_pushnil(L);
    return NULL;
  }
  t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    n++;
    lua_pop(L, 1);
  }
  env = new_ptrs(L, n);
  lua_createtable(L, (int)n, 0);
  n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (lua_type(L, -2) != LUA_TSTRING || strchr(lua_tostring(L, -2), '=') ||
        !lua_isstring(L, -1))
      luaL_argerror(L, 2, "opts.env: names without '=' mapped to strings "
                          "or numbers expected");
    if (has_zero(L, -2) || has_zero(L, -1))
      luaL_argerror(L, 2, "opts.env: a name or value contains a zero byte");
    env[n] = lua_pushfstring(L, "%s=%s", lua_tostring(L, -2),
                             lua_tostring(L, -1));
    lua_rawseti(L, t + 2, (lua_Integer)++n);
    lua_pop(L, 1);
  }
  lua_remove(L, t);
  return (char **)env;
}

/* The descriptors from 3 up that a child would inherit (not close-on-exec),
 * made close-on-exec around a spawn (show_fds puts them back). */
typedef struct fdset {
  int *fd;
  int n, cap;
} fdset;

static void hide_fd(fdset *set, int fd) {
  int fl = fcntl(fd, F_GETFD);
  if (fl < 0 || (fl & FD_CLOEXEC))
    return;
  if (set->n == set->cap) {
    int cap = set->cap ? 2 * set->cap : 16;
    int *more = realloc(set->fd, (size_t)cap * sizeof(*more));
    if (more == NULL)
      return;
    set->fd = more;
    set->cap = cap;
  }
  if (fcntl(fd, F_SETFD, fl | FD_CLOEXEC) == 0)
    set->fd[set->n++] = fd;
}

/* The open ones as /proc lists them; without /proc, every number up to the
 * open-file limit (65536 at most), as Python's fallback. A descriptor
 * another thread opens during the spawn is not seen (Python closes them in
 * the child, which uv_spawn gives no hook for). */
static void hide_fds(fdset *set) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  if (d == NULL) {
    struct rlimit rl;
    int fd, max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)max)
      max = (int)rl.rlim_cur;
    for (fd = 3; fd < max; fd++)
      hide_fd(set, fd);
    return;
  }
  while ((e = readdir(d)) != NULL) {
    int fd = atoi(e->d_name);
    if (fd >= 3 && fd != dirfd(d))
      hide_fd(set, fd);
  }
  closedir(d);
}

static void show_fds(fdset *set) {
  int i;
  for (i = 0; i < set->n; i++) {
    int fl = fcntl(set->fd[i], F_GETFD);
    if (fl >= 0)
      fcntl(set->fd[i], F_SETFD, fl & ~FD_CLOEXEC);
  }
  free(set->fd);
}

/* [-0, +1, v] Pushes the pipe stream of a stdout that stderr shares (a
 * socketpair made here: libuv makes one per slot); returns the child's
 * end, which the caller closes once the child has it. */
static int merged_pipe(lua_State *L, tide_sched *s, size_t limit,
                       const char *prog) {
  int sv[2], rc;
  uv_stream_t *st = tide__stream_new_pipe(L, s, limit); /* before the fds */
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    raise_process(L, uv_translate_sys_error(errno), "cannot run", prog, NULL);
  if ((rc = uv_pipe_open((uv_pipe_t *)st, sv[0])) != 0) {
    close(sv[0]);
    close(sv[1]);
    raise_process(L, rc, "cannot run", prog, NULL);
  }
  return sv[1];
}

/* [-0, +1, v] Starts argv (arg 1, an array of strings) with opts (arg 2)
 * and pushes the tide.Process. run: run's options and defaults. The
 * program's name is the box's 4th user value (for messages). */
static void start(lua_State *L, int run) {
  tide_runtime *rt = tide__rt(L);
  tide_sched *s = rt->current ? rt->current->s : rt->sched;
  uv_process_options_t o;
  uv_stdio_container_t stdio[3];
  int modes[3], i, rc, base, merge, merged = -1, stderr_fd = 2;
  size_t n, limit;
  const char **args;
  proc_box *b;
  proc *p;
  luaL_checktype(L, 1, LUA_TTABLE);
  tide__check_opts(L, 2, opt_names, run ? -1 : SPAWN_OPTS);
  lua_settop(L, 2);
  limit = tide__stream_limit(L, 2); /* the pipes' read_line limit */
  if (s == NULL)
    tide__raise_no_loop(L);
  memset(&o, 0, sizeof(o));
  n = lua_rawlen(L, 1);
  luaL_argcheck(L, n > 0, 1, "argv must not be empty (a program and its arguments "
                            "expected, got an empty table)");
  args = new_ptrs(L, n); /* 3 */
  for (i = 0; (size_t)i < n; i++) {
    if (lua_rawgeti(L, 1, i + 1) != LUA_TSTRING)
      luaL_argerror(L, 1, lua_pushfstring(L, "argv[%d]: string expected, "
                                          "got %s", i + 1, luaL_typename(L, -1)));
    if (has_zero(L, -1))
      luaL_argerror(L, 1, lua_pushfstring(L, "argv[%d] contains a zero byte",
                                          i + 1));
    args[i] = lua_tostring(L, -1); /* the table keeps it */
    lua_pop(L, 1);
  }
  for (i = 0; i < 3; i++)
    modes[i] = io_mode(L, i, run && i == 0 ? IO_NULL : IO_PIPE);
  if (run) {
    if (opt(L, "input", LUA_TSTRING) != LUA_TNIL) {
      if (io_mode(L, 0, IO_PIPE) != IO_PIPE)
        luaL_argerror(L, 2, "opts.input needs stdin = \"pipe\"");
      modes[0] = IO_PIPE;
    }
    if (opt(L, "timeout", LUA_TNUMBER) != LUA_TNIL)
      luaL_argcheck(L, lua_tonumber(L, -1) > 0, 2,
                    "opts.timeout: positive number of seconds expected");
    lua_pop(L, 2);
  }
  merge = modes[2] == IO_STDOUT && modes[1] == IO_PIPE;
  o.env = check_env(L); /* 4: array, 5: anchors */
  if (opt(L, "cwd", LUA_TSTRING) != LUA_TNIL && has_zero(L, -1)) /* 6 */
    luaL_argerror(L, 2, "opts.cwd contains a zero byte");
  if (lua_type(L, -1) == LUA_TSTRING)
    o.cwd = lua_tostring(L, -1);
  o.file = args[0];
  o.args = (char **)args;
  o.exit_cb = on_uv_exit;
  o.stdio_count = 3;
  o.stdio = stdio;
  b = lua_newuserdatauv(L, sizeof(*b), 4); /* 7 */
  b->p = NULL;
  b->pid = 0;
  b->killed = 0;
  luaL_setmetatable(L, PROCESS_MT);
  base = lua_gettop(L);
  lua_pushstring(L, args[0]);
  lua_setiuservalue(L, base, 4);
  if (modes[2] == IO_STDOUT && !merge) { /* as stdout: "inherit" or "null" */
    modes[2] = modes[1];
    stderr_fd = 1;
  }
  for (i = 0; i < 3; i++) {
    if (merge && i == 2) {
      stdio[2].flags = UV_INHERIT_FD;
      stdio[2].data.fd = merged;
    } else if (modes[i] == IO_PIPE) {
      if (merge && i == 1) {
        merged = merged_pipe(L, s, limit, args[0]);
        stdio[1].flags = UV_INHERIT_FD;
        stdio[1].data.fd = merged;
      } else {
        stdio[i].flags = UV_CREATE_PIPE | (i == 0 ? UV_READABLE_PIPE
                                                  : UV_WRITABLE_PIPE);
        stdio[i].data.stream = tide__stream_new_pipe(L, s, limit);
      }
      lua_pushvalue(L, base); /* a stream in use keeps its process (and */
      lua_setiuservalue(L, -2, 1); /* child) alive, as asyncio's transport */
      lua_setiuservalue(L, base, i + 1);
    } else if (modes[i] == IO_INHERIT) {
      stdio[i].flags = UV_INHERIT_FD;
      stdio[i].data.fd = i == 2 ? stderr_fd : i;
    } else {
      stdio[i].flags = UV_IGNORE;
    }
  }
  p = calloc(1, sizeof(*p));
  if (p == NULL) {
    if (merged >= 0)
      close(merged);
    luaL_error(L, "not enough memory");
  }
  {
    fdset hidden = {NULL, 0, 0};
    hide_fds(&hidden);
    rc = uv_spawn(s->loop, &p->h, &o); /* returns once the child exec'd */
    show_fds(&hidden);
  }
  if (merged >= 0)
    close(merged); /* the child's end: the child has it now */
  p->h.data = p;
  if (rc < 0) { /* the handle is initialised all the same: close it */
    int fault = cwd_fault(o.cwd, rc);
    uv_close((uv_handle_t *)&p->h, on_uv_closed);
    lua_pushcfunction(L, pr_close);
    lua_pushvalue(L, base);
    lua_call(L, 1, 0);
    if (fault)
      raise_process(L, fault, "cannot run", args[0], o.cwd);
    raise_process(L, rc, "cannot run", args[0], NULL);
  }
  uv_unref((uv_handle_t *)&p->h);
  p->running = 1;
  p->sched = s;
  p->box = b;
  b->p = p;
  b->pid = p->h.pid;
  p->closer.close = on_run_end;
  tide__closer_add(s, &p->closer);
  lua_replace(L, 3);
  lua_settop(L, 3);
}

/* process.spawn(argv [, opts]) -> Process */

static int l_spawn(lua_State *L) {
  start(L, 0);
  return 1;
}

static int run_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L;
  (void)status;
  (void)ctx;
  return 1;
}

/* process.run(argv [, opts]) -> {code, signal, stdout, stderr}: spawns,
 * then hands the process to the Lua half (upvalue 1) with argv, input and
 * timeout. */
static int l_run(lua_State *L) {
  tide__current(L); /* it waits: refused before a child starts */
  start(L, 1); /* [argv, opts, process] */
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 3);
  lua_pushvalue(L, 1);
  opt(L, "input", LUA_TSTRING);
  opt(L, "timeout", LUA_TNUMBER);
  lua_callk(L, 4, 1, 0, run_k);
  return 1;
}

/* process.shell(cmdline [, opts]) = run({"/bin/sh", "-c", cmdline}, opts) */
static int l_shell(lua_State *L) {
  size_t len;
  const char *cmd = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, strlen(cmd) == len, 1, "the command line contains a zero byte");
  lua_createtable(L, 3, 0);
  lua_pushliteral(L, "/bin/sh");
  lua_rawseti(L, -2, 1);
  lua_pushliteral(L, "-c");
  lua_rawseti(L, -2, 2);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 3);
  lua_replace(L, 1);
  return l_run(L);
}

int luaopen_tide_process(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"wait", pr_wait}, {"kill", pr_kill}, {"close", pr_close}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {
    {"spawn", l_spawn}, {"run", l_run}, {"shell", l_shell}, {NULL, NULL}};
  tide_open(L);
  luaL_requiref(L, "tide.net", luaopen_tide_net, 0); /* the stream type */
  lua_pop(L, 1);
  uv_disable_stdio_inheritance(); /* children get only what we give them */
  for (int fd = 0; fd <= 2; fd++) { /* but libuv marks 0-2 too: os.execute's
                                      * and io.popen's children need them */
    int fl = fcntl(fd, F_GETFD);
    if (fl != -1 && (fl & FD_CLOEXEC))
      fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
  }
  if (luaL_newmetatable(L, PROCESS_MT)) {
    luaL_newlib(L, methods);
    lua_pushcclosure(L, pr_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, pr_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, pr_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, pr_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_newlibtable(L, funcs);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_getfield(L, -1, "tide.process_lua"); /* the Lua half: run's capture */
  lua_remove(L, -2);
  lua_pushliteral(L, "tide.process_lua");
  lua_call(L, 1, 1);
  luaL_setfuncs(L, funcs, 1);
  return 1;
}
