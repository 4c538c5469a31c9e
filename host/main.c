/*
 * main.c: the `tide` command, shaped like lua.c. Parses the command line,
 * builds `arg` exactly as lua5.4 does, loads -e chunks and the script in C
 * (so syntax errors read as lua5.4's do), then runs them in order inside
 * one main task (lua/tide/main.lua), so top-level code may suspend.
 * With -i, or with no script while stdin is a terminal, the last step is
 * the REPL (lua/tide/repl.lua), whose line reader is below:
 * "tide.repl.core", preloaded by the command only.
 * Exit status: 0 on success, 1 on an error (message and traceback on
 * stderr), 130 after Ctrl-C, 143 after SIGTERM.
 *
 * The line reader never blocks the loop: core.readline(prompt) suspends
 * the main task (tide_suspend) and a uv_poll on fd 0 completes it when a
 * line is there, so other tasks run while the prompt waits.
 *   - stdin a terminal: libedit's callback interface. The handler is
 *     installed (terminal in edit mode) only while a read is pending and
 *     removed (terminal back to normal) while a line runs. libedit's own
 *     signal handlers are off (rl_catch_signals = 0): Ctrl-C reaches tide's
 *     SIGINT watcher, which cancels the main task; a read pending then is
 *     dropped by its cancel callback and the REPL catches the "cancelled"
 *     error (lua/tide/repl.lua). End of file: Ctrl-D on an empty line, or
 *     a hang-up (readable with nothing to read).
 *   - otherwise: lua.c's non-readline behaviour (prompt on stdout, no
 *     echo); lines are read with read(2) when uv_poll says fd 0 is
 *     readable, or at once when fd 0 cannot be polled (a regular file,
 *     /dev/null), since reading those never waits.
 * uv_poll_init makes fd 0 non-blocking, which would leak into io.read and
 * into the shell's terminal; its flags are put back at once (we only read
 * after readiness). On a terminal LC_CTYPE is set from the environment
 * (C.UTF-8 if that is single-byte) so that libedit takes UTF-8 input.
 * TIDE_HISTORY=path loads the history from that file at start and writes
 * it back at exit (also after os.exit); without it nothing is written.
 * The only internal reached into: rt->sigints, reset at each prompt so
 * that an interrupt the REPL handled does not make the next Ctrl-C the
 * "second one" that exits at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <lualib.h>

#include "tide.h"
#include "internal.h" /* rt->sigints: a Ctrl-C the REPL handled is forgotten */

static const char *progname = "tide";

static void usage(const char *badoption) {
  if (badoption[1] == 'e' || badoption[1] == 'l')
    fprintf(stderr, "%s: '%s' needs argument\n", progname, badoption);
  else
    fprintf(stderr, "%s: unrecognized option '%s'\n", progname, badoption);
  fprintf(stderr,
          "usage: %s [options] [script [args]]\n"
          "Available options are:\n"
          "  -e stat   execute string 'stat'\n"
          "  -i        enter interactive mode after executing 'script'\n"
          "  -l mod    require library 'mod' into global 'mod'\n"
          "  -l g=mod  require library 'mod' into global 'g'\n"
          "  -v        show version information\n"
          "  -E        ignore environment variables\n"
          "  -W        turn warnings on\n"
          "  --        stop handling options\n"
          "  -         stop handling options and execute stdin\n",
          progname);
}

/* lua5.4's line first (scripts and tests match "^Lua 5.4"), then tide's */
#define BANNER LUA_COPYRIGHT "\n" TIDE_VERSION "\n"

static void print_version(void) {
  fputs(BANNER, stdout);
  fflush(stdout);
}

enum { HAS_ERROR = 1, HAS_V = 2, HAS_E = 4, HAS_BIGE = 8, HAS_I = 16,
       HAS_BANNER = 32 };

/* Returns the flags; *script is the index of the script (or argc). */
static int collectargs(char **argv, int *script) {
  int flags = 0, i;
  for (i = 1; argv[i] != NULL; i++) {
    *script = i;
    if (argv[i][0] != '-')
      return flags;
    switch (argv[i][1]) {
      case '-':
        if (argv[i][2] != '\0')
          return HAS_ERROR;
        *script = i + 1;
        return flags;
      case '\0':
        return flags; /* '-' is the script: stdin */
      case 'E':
        if (argv[i][2] != '\0')
          return HAS_ERROR;
        flags |= HAS_BIGE;
        break;
      case 'W':
        if (argv[i][2] != '\0')
          return HAS_ERROR;
        break;
      case 'i':
        flags |= HAS_I; /* -i implies -v, as in lua.c */
        /* FALLTHROUGH */
      case 'v':
        if (argv[i][2] != '\0')
          return HAS_ERROR;
        flags |= HAS_V;
        break;
      case 'e':
        flags |= HAS_E;
        /* FALLTHROUGH */
      case 'l':
        if (argv[i][2] == '\0') {
          i++;
          if (argv[i] == NULL || argv[i][0] == '-')
            return HAS_ERROR;
        }
        break;
      default:
        return HAS_ERROR;
    }
  }
  *script = i;
  return flags;
}

/* arg[0] = script, arg[1..] = its arguments, arg[-n..-1] = the rest. */
static void createargtable(lua_State *L, char **argv, int argc, int script) {
  int i, narg;
  if (script == argc)
    script = 0; /* no script: everything goes to negative indices */
  narg = argc - (script + 1);
  lua_createtable(L, narg, script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* A write into a pipe nobody reads any more (a reader such as `head`
 * quit) ends the process by SIGPIPE, as it ends lua5.4's: tide catches
 * SIGPIPE for its sockets and pipes, so without this a script writing in
 * a loop would go on forever, every write failing unseen. */
static void die_if_epipe(int err) {
  if (err == EPIPE) {
    signal(SIGPIPE, SIG_DFL);
    raise(SIGPIPE);
  }
}

/* Calls the library function (upvalue 1) with this function's arguments;
 * its errors are raised again as this function's. Called from C, the
 * library function would say "bad argument #3 to '?'" with no position;
 * lua5.4 says "x.lua:2: bad argument #2 to 'write'". */
static void call_as_self(lua_State *L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  if (lua_pcall(L, n, LUA_MULTRET, 0) != LUA_OK) {
    static const char pre[] = "bad argument #";
    const char *msg = lua_tostring(L, -1), *p;
    char *end;
    long arg;
    if (lua_type(L, -1) != LUA_TSTRING)
      lua_error(L);
    if (strncmp(msg, pre, sizeof pre - 1) == 0 &&
        (arg = strtol(msg + sizeof pre - 1, &end, 10)) > 0 &&
        strncmp(end, " to '?' (", 9) == 0 && (p = strrchr(end, ')')) != NULL) {
      lua_pushlstring(L, end + 9, (size_t)(p - (end + 9)));
      luaL_argerror(L, (int)arg, lua_tostring(L, -1));
    }
    luaL_where(L, 1); /* luaL_error's position, as the caller sees it */
    lua_insert(L, -2);
    lua_concat(L, 2);
    lua_error(L);
  }
}

/* io.write, file:write, io.flush, file:flush: the io library's function
 * (upvalue 1), then die_if_epipe on its failure (nil, message, errno). */
static int l_pipe_checked(lua_State *L) {
  call_as_self(L);
  if (lua_gettop(L) >= 3 && lua_isnil(L, 1) && lua_isinteger(L, 3))
    die_if_epipe((int)lua_tointeger(L, 3));
  return lua_gettop(L);
}

/* Wraps the functions named in the table on top with l_pipe_checked. */
static void check_pipes(lua_State *L, const char *const *names) {
  for (; *names; names++) {
    lua_getfield(L, -1, *names);
    lua_pushcclosure(L, l_pipe_checked, 1);
    lua_setfield(L, -2, *names);
  }
}

static void install_pipe_checks(lua_State *L) {
  static const char *const names[] = {"write", "flush", NULL};
  lua_getglobal(L, "io");
  check_pipes(L, names);
  lua_pop(L, 1);
  luaL_getmetatable(L, LUA_FILEHANDLE);
  if (lua_getfield(L, -1, "__index") == LUA_TTABLE)
    check_pipes(L, names);
  lua_pop(L, 2);
}

static void repl_atexit(void);

/* os.exit([code [, close]]), as lua5.4's, but the process ends at once:
 * C streams are flushed and the REPL's history written, then _exit. exit()
 * would run libuv's destructor, which joins the thread pool: a to_thread
 * job (or a file open on a FIFO) that never ends would hang it, where
 * lua5.4's os.exit and Python's os._exit end the process.
 * With close, as lua5.4's, lua_close closes the main chunk's pending
 * <close> variables, which live on the main thread, from wherever it is
 * called (a coroutine, or here another task). Here the main chunk is a
 * task's coroutine, so that coroutine is reset (its <close> handlers run,
 * innermost first) before the state closes. Nothing of the coroutines on
 * the way (this one, the main one) runs after: the process ends. */
static int l_exit(lua_State *L) {
  int status = lua_isboolean(L, 1) ? (lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE)
                                   : (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  if (lua_toboolean(L, 2)) {
    lua_State *main_co = tide__lua_main_co(L), *M;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    M = lua_tothread(L, -1);
    lua_pop(L, 1);
    if (main_co != NULL)
      lua_resetthread(main_co);
    lua_close(M);
  }
  fflush(NULL);
  repl_atexit();
  _exit(status);
  return 0;
}

/* print, as lua5.4's, but for die_if_epipe */
static int l_print(lua_State *L) {
  int i, n = lua_gettop(L);
  for (i = 1; i <= n; i++) {
    size_t len;
    const char *s = luaL_tolstring(L, i, &len);
    if (i > 1)
      fputc('\t', stdout);
    fwrite(s, 1, len, stdout);
    lua_pop(L, 1);
  }
  fputc('\n', stdout);
  if (fflush(stdout) != 0)
    die_if_epipe(errno);
  return 0;
}

/* After loading a chunk: 0 when it loaded. A load error is reported at
 * once if no step comes before it (1: exit 1); otherwise it becomes the
 * last step, {fail = message}, so the steps before it run first, as
 * lua5.4 runs each -e before it reads the next (2: run, collect no more). */
static int report_load(lua_State *L, int status, int steps) {
  if (status == LUA_OK)
    return 0;
  if (luaL_len(L, steps) == 0) {
    fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
    fflush(stderr);
    return 1;
  }
  lua_createtable(L, 0, 1);
  lua_pushfstring(L, "%s: %s", progname, lua_tostring(L, -2));
  lua_setfield(L, -2, "fail");
  lua_rawseti(L, steps, luaL_len(L, steps) + 1);
  lua_pop(L, 1);
  return 2;
}

/* Appends to the steps table on top: {fn = <value on top>, args = {...}},
 * or for the script {file = <value on top>, progname =, args =} (main.lua
 * reads the script when its turn comes: a -e before may write it). */
static void add_step(lua_State *L, int steps, const char *lib, const char *global,
                     char **args, int nargs) {
  int i;
  lua_createtable(L, 0, 3);
  if (lib) {
    lua_pushstring(L, lib);
    lua_setfield(L, -2, "lib");
    lua_pushstring(L, global);
    lua_setfield(L, -2, "global");
  } else {
    int file = !lua_isfunction(L, -2);
    lua_insert(L, -2);
    lua_setfield(L, -2, file ? "file" : "fn");
    if (file) {
      lua_pushstring(L, progname);
      lua_setfield(L, -2, "progname");
    }
    lua_createtable(L, nargs, 1);
    for (i = 0; i < nargs; i++) {
      lua_pushstring(L, args[i]);
      lua_rawseti(L, -2, i + 1);
    }
    lua_pushinteger(L, nargs);
    lua_setfield(L, -2, "n");
    lua_setfield(L, -2, "args");
  }
  lua_rawseti(L, steps, luaL_len(L, steps) + 1);
}

/* Loads -e chunks, -l requests, LUA_INIT and the script into the steps
 * table on top. Returns 0, or 1 after reporting a load error. */
static int collect_steps(lua_State *L, char **argv, int argc, int script,
                         int flags) {
  int steps = lua_gettop(L), i, st;
  if (!(flags & HAS_BIGE)) {
    const char *name = "=LUA_INIT_5_4";
    const char *init = getenv(name + 1);
    if (init == NULL) {
      name = "=LUA_INIT";
      init = getenv(name + 1);
    }
    if (init) {
      int st = (init[0] == '@') ? luaL_loadfile(L, init + 1)
                                : luaL_loadbuffer(L, init, strlen(init), name);
      if (report_load(L, st, steps))
        return 1;
      add_step(L, steps, NULL, NULL, NULL, 0);
    }
  }
  for (i = 1; i < script; i++) {
    char opt = argv[i][1];
    if (opt == 'e' || opt == 'l') {
      const char *extra = argv[i] + 2;
      if (*extra == '\0')
        extra = argv[++i];
      if (opt == 'e') {
        if ((st = report_load(L, luaL_loadbuffer(L, extra, strlen(extra),
                                                 "=(command line)"), steps)))
          return st == 2 ? 0 : 1;
        add_step(L, steps, NULL, NULL, NULL, 0);
      } else {
        char global[256];
        const char *eq = strchr(extra, '=');
        const char *mod = eq ? eq + 1 : extra;
        size_t glen = eq ? (size_t)(eq - extra) : strlen(extra);
        if (glen >= sizeof global)
          glen = sizeof global - 1;
        memcpy(global, extra, glen);
        global[glen] = '\0'; /* the whole name, as Debian's lua5.4 (5.4.4) */
        add_step(L, steps, mod, global, NULL, 0);
      }
    } else if (opt == 'W') { /* in order: warnings before it stay off */
      lua_createtable(L, 0, 1);
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "warn");
      lua_rawseti(L, steps, luaL_len(L, steps) + 1);
    }
  }
  if (script < argc) {
    const char *fname = argv[script];
    if (strcmp(fname, "-") == 0 && strcmp(argv[script - 1], "--") != 0)
      lua_pushboolean(L, 0); /* stdin */
    else
      lua_pushstring(L, fname);
    add_step(L, steps, NULL, NULL, argv + script + 1, argc - script - 1);
  } else if (!(flags & (HAS_E | HAS_V))) {
    if (isatty(0)) { /* interactive, as lua5.4: the banner when it starts */
      flags |= HAS_I | HAS_BANNER;
    } else {
      lua_pushboolean(L, 0); /* the script is stdin */
      add_step(L, steps, NULL, NULL, NULL, 0);
    }
  }
  if (flags & HAS_I) { /* the REPL comes last: {repl = true, progname = ...} */
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "repl");
    lua_pushstring(L, progname);
    lua_setfield(L, -2, "progname");
    if (flags & HAS_BANNER) {
      lua_pushliteral(L, BANNER);
      lua_setfield(L, -2, "banner");
    }
    lua_rawseti(L, steps, luaL_len(L, steps) + 1);
  }
  return 0;
}

/* ---- the REPL's line reader: "tide.repl.core" ----------------------- */

static struct {
  tide_runtime *rt;
  int ready;             /* init ran */
  int edit;              /* libedit on fd 0 (a terminal) */
  int installed;         /* libedit's handler is in: terminal in edit mode */
  int pollable;          /* fd 0 can be watched with uv_poll */
  int polling;
  uv_poll_t poll;
  tide_pending *pending; /* the main task, waiting for a line */
  int got;               /* libedit delivered: line, or NULL at end of file */
  char *line;
  char *buf;             /* without libedit: bytes read and not yet taken */
  size_t len, cap;
  int eof;
  const char *histfile;  /* TIDE_HISTORY */
} repl;

static void on_line(char *line) {
  repl.got = 1;
  repl.line = line;
}

static void stop_reading(void) {
  if (repl.polling) {
    uv_poll_stop(&repl.poll);
    repl.polling = 0;
  }
  if (repl.installed) {
    rl_callback_handler_remove();
    repl.installed = 0;
  }
}

/* Pushes the next buffered line (without its newline; the rest at end of
 * file; nil once nothing is left) and returns 1, or 0 if it needs input. */
static int take_line(lua_State *L) {
  char *nl = repl.len ? memchr(repl.buf, '\n', repl.len) : NULL;
  size_t n;
  if (nl == NULL && !repl.eof)
    return 0;
  if (nl == NULL && repl.len == 0) {
    lua_pushnil(L);
    return 1;
  }
  n = nl ? (size_t)(nl - repl.buf) : repl.len;
  lua_pushlstring(L, repl.buf, n);
  if (nl)
    n++;
  memmove(repl.buf, repl.buf + n, repl.len - n);
  repl.len -= n;
  return 1;
}

/* Reads fd 0 into the buffer up to a newline, a byte at a time, and only
 * what is there: nothing past the line is taken, so that a chunk's
 * io.read() reads what follows it, as under lua.c (stdin is unbuffered:
 * l_init). The first read may find the end of file. */
static void fill(void) {
  int avail = 1;
  while (avail > 0) {
    ssize_t n;
    if (repl.len == repl.cap) {
      char *b = realloc(repl.buf, repl.cap * 2 + 256);
      if (b == NULL) {
        repl.eof = 1;
        return;
      }
      repl.buf = b;
      repl.cap = repl.cap * 2 + 256;
    }
    do
      n = read(0, repl.buf + repl.len, 1);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
        repl.eof = 1;
      return;
    }
    if (repl.buf[repl.len++] == '\n' || ioctl(0, FIONREAD, &avail) < 0)
      return;
  }
}

static void on_readable(uv_poll_t *h, int status, int events) {
  tide_pending *p = repl.pending;
  lua_State *L;
  (void)h;
  (void)events;
  if (p == NULL)
    return;
  L = tide_pending_L(p);
  if (repl.edit) {
    int avail = 0;
    /* readable with nothing to read: the terminal hung up */
    if (status < 0 || ioctl(0, FIONREAD, &avail) < 0 || avail <= 0)
      on_line(NULL);
    else
      rl_callback_read_char();
    if (!repl.got)
      return;
    stop_reading();
    if (repl.line)
      lua_pushstring(L, repl.line);
    else
      lua_pushnil(L);
    free(repl.line);
    repl.line = NULL;
    repl.got = 0;
  } else {
    if (status < 0)
      repl.eof = 1;
    else
      fill();
    if (!take_line(L))
      return;
    stop_reading();
  }
  repl.pending = NULL;
  tide_complete(p, 1);
}

/* The main task was cancelled (Ctrl-C) while it waited for a line: drop
 * the line being edited; the next readline starts afresh. */
static void on_cancel(tide_pending *p, void *data) {
  (void)p;
  (void)data;
  stop_reading();
  repl.pending = NULL;
}

static void repl_atexit(void) {
  if (repl.installed) /* os.exit at the prompt: give the terminal back */
    rl_callback_handler_remove();
  if (repl.histfile)
    write_history(repl.histfile);
  free(repl.buf);
  repl.buf = NULL;
}

/* core.init() -> true if lines are edited with libedit (a terminal) */
static int l_init(lua_State *L) {
  if (!repl.ready) {
    int fl = fcntl(0, F_GETFL);
    repl.ready = 1;
    repl.pollable =
        uv_poll_init(tide_runtime_loop(repl.rt), &repl.poll, 0) == 0;
    if (fl != -1) /* uv_poll_init made fd 0 non-blocking: undo it */
      fcntl(0, F_SETFL, fl);
    repl.edit = repl.pollable && isatty(0);
    if (!repl.edit) /* lines and a chunk's io.read share fd 0: no read-ahead */
      setvbuf(stdin, NULL, _IONBF, 0);
    if (repl.edit) {
      const char *hf = getenv("TIDE_HISTORY");
      rl_catch_signals = 0;     /* Ctrl-C goes to tide's SIGINT watcher */
      rl_inhibit_completion = 1; /* Tab inserts a tab (pasted code) */
      rl_readline_name = "tide";
      /* libedit decodes keys with the C library: without a UTF-8 LC_CTYPE
       * it drops non-ASCII input (Lua's own code ignores the locale) */
      if (setlocale(LC_CTYPE, "") == NULL || MB_CUR_MAX == 1)
        setlocale(LC_CTYPE, "C.UTF-8");
      rl_initialize();
      stifle_history(1000);
      if (hf && *hf) {
        repl.histfile = hf;
        read_history(hf);
      }
    }
    atexit(repl_atexit);
  }
  lua_pushboolean(L, repl.edit);
  return 1;
}

/* core.readline(prompt) -> line without its newline, or nil at end of
 * file. Suspends the calling task (the main task) until a line is there;
 * cancelling it (Ctrl-C) drops the partial line. */
static int l_readline(lua_State *L) {
  const char *prompt = luaL_checkstring(L, 1);
  if (!repl.ready)
    return luaL_error(L, "tide.repl.core: init() first");
  if (repl.pending)
    return luaL_error(L, "tide.repl.core: a line is being read already");
  tide__signals_forget(repl.rt); /* a Ctrl-C handled so far no longer counts */
  fflush(stdout);
  if (repl.edit) {
    rl_callback_handler_install(prompt, on_line); /* prints the prompt */
    repl.installed = 1;
  } else {
    fputs(prompt, stdout);
    fflush(stdout);
    if (take_line(L))
      return 1;
    if (!repl.pollable) { /* a file: reading it never waits */
      while (!take_line(L))
        fill();
      return 1;
    }
  }
  uv_poll_start(&repl.poll, UV_READABLE, on_readable);
  repl.polling = 1;
  return tide_suspend(L, on_cancel, NULL, &repl.pending);
}

/* core.add_history(line): for the arrow keys (and TIDE_HISTORY) */
static int l_add_history(lua_State *L) {
  const char *line = luaL_checkstring(L, 1);
  if (repl.edit && *line) {
    add_history(line);
    if (repl.histfile) /* now: a session may end by a signal */
      write_history(repl.histfile);
  }
  return 0;
}

static int luaopen_repl_core(lua_State *L) {
  static const luaL_Reg fns[] = {{"init", l_init},
                                 {"readline", l_readline},
                                 {"add_history", l_add_history},
                                 {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}

/* A program started with stdin, stdout or stderr closed (a daemon, a CI
 * runner) would hand those numbers to the loop's own descriptors: the
 * script's print() would then write into a socket, and libuv asserts that
 * it never closes 0-2. Point any closed one at /dev/null, as Node does. */
static void open_std_fds(void) {
  int fd;
  for (fd = 0; fd <= 2; fd++)
    if (fcntl(fd, F_GETFD) == -1 && errno == EBADF &&
        open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd)
      _exit(127); /* cannot even report it */
}

static int meta_message_p(lua_State *L) {
  return luaL_callmeta(L, 1, "__tostring") ? 1 : 0;
}

/* [-0, +(0|1), -] For a user's error object that is not a string: pushes
 * what its __tostring gives when that is a string (lua5.4's message
 * handler prints it without a traceback) and returns 1; else 0. tide's
 * own errors keep their traceback. */
static int meta_message(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_isstring(L, idx) || tide__iserror(L, idx) ||
      !luaL_getmetafield(L, idx, "__tostring"))
    return 0;
  lua_pop(L, 1);
  lua_pushcfunction(L, meta_message_p);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
    return 1;
  lua_pop(L, 1);
  return 0;
}

/* An event loop holds many sockets at once: lift the soft limit on open
 * files to the hard one, as Go's runtime does (the command only; an
 * application embedding tide decides for itself). */
static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/* libuv's thread pool runs tide.to_thread's jobs besides files and DNS; its
 * default of 4 threads leaves CPU-bound jobs 3 (to_thread keeps one for
 * files), fewer than the cores of most machines. Unless UV_THREADPOOL_SIZE
 * is set, the command sizes it as Python's default executor: cores + 4. The
 * variable is set, not hidden: to_thread reads it as libuv does, and child
 * processes see the pool their parent had. Before anything uses the pool
 * (libuv reads the variable once). The command only: an application
 * embedding tide sizes its process's pool itself. */
static void size_threadpool(void) {
  char n[16];
  unsigned cores = uv_available_parallelism();
  if (getenv("UV_THREADPOOL_SIZE") != NULL)
    return;
  snprintf(n, sizeof n, "%u", cores + 4 > 1024 ? 1024 : cores + 4);
  setenv("UV_THREADPOOL_SIZE", n, 1);
}

/* The runtime takes SIGINT and SIGTERM only where they are at their
 * default, leaving an application's choice alone. The command is the
 * application: as lua.c sets its SIGINT handler whatever it inherited, it
 * takes SIGINT even when its parent ignored it (a background job of a
 * non-interactive shell ignores SIGINT), so kill -INT still stops it
 * cleanly. An ignored SIGTERM stays ignored, as under lua5.4. */
static void take_signals(void) {
  struct sigaction sa;
  if (sigaction(SIGINT, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN)
    signal(SIGINT, SIG_DFL);
}

int main(int argc, char **argv) {
  tide_runtime *rt;
  lua_State *L;
  int script = argc, flags, st, code = 0;
  open_std_fds();
  if (argv[0] && argv[0][0])
    progname = argv[0];
  flags = collectargs(argv, &script);
  if (flags & HAS_ERROR) {
    usage(argv[script]);
    return 1;
  }
  if (flags & HAS_V)
    print_version();
  raise_fd_limit();
  size_threadpool();
  take_signals();
  rt = tide_runtime_new(NULL);
  if (rt == NULL) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", progname);
    return 1;
  }
  repl.rt = rt;
  tide_preload(rt, "tide.repl.core", luaopen_repl_core);
  L = tide_runtime_L(rt);
  if (flags & HAS_BIGE) { /* the state is open already: undo LUA_PATH too */
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
    lua_getglobal(L, "package");
    lua_pushliteral(L, LUA_PATH_DEFAULT);
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, LUA_CPATH_DEFAULT);
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
  }
  lua_gc(L, LUA_GCGEN, 0, 0); /* as lua5.4 (lua.c) runs scripts */
  lua_pushcfunction(L, l_print);
  lua_setglobal(L, "print");
  install_pipe_checks(L);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, l_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
  createargtable(L, argv, argc, script);
  lua_newtable(L);
  if (collect_steps(L, argv, argc, script, flags) != 0) {
    tide_runtime_close(rt);
    return 1;
  }
  lua_getglobal(L, "require");
  lua_pushliteral(L, "tide.main");
  lua_call(L, 1, 1);
  lua_insert(L, -2);
  st = tide_runtime_run(rt, 1, NULL);
  if (st != LUA_OK) {
    lua_getfield(L, LUA_REGISTRYINDEX, "tide.interrupted");
    if (lua_toboolean(L, -1)) {
      int sig = (int)lua_tointeger(L, -1);
      fprintf(stderr, "%s: %s\n", progname, sig == SIGTERM ? "terminated" : "interrupted");
      code = 128 + (sig > 0 ? sig : SIGINT); /* 130 after Ctrl-C, 143 after SIGTERM */
    } else {
      lua_getfield(L, LUA_REGISTRYINDEX, "tide.main_traceback");
      if (meta_message(L, -3)) /* as lua5.4: its __tostring alone */
        fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
      else if (lua_type(L, -1) == LUA_TSTRING)
        fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
      else
        fprintf(stderr, "%s: %s\n", progname, luaL_tolstring(L, -3, NULL));
      code = 1;
    }
    fflush(stderr);
  }
  tide_runtime_close(rt);
  return code;
}
