/*
 * main.c: the `tide` command, shaped like lua.c. Parses the command line,
 * builds `arg` exactly as lua5.4 does, loads -e chunks and the script in C
 * (so syntax errors read as lua5.4's do), then runs them in order inside
 * one main task (lua/tide/main.lua), so top-level code may suspend.
 * Exit status: 0 on success, 1 on an error (message and traceback on
 * stderr), 130 after Ctrl-C.
 */
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "tide.h"

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
          "  -l mod    require library 'mod' into global 'mod'\n"
          "  -l g=mod  require library 'mod' into global 'g'\n"
          "  -v        show version information\n"
          "  -E        ignore environment variables\n"
          "  -W        turn warnings on\n"
          "  --        stop handling options\n"
          "  -         stop handling options and execute stdin\n",
          progname);
}

static void print_version(void) {
  printf("%s (%s)\n", TIDE_VERSION, LUA_COPYRIGHT);
  fflush(stdout);
}

enum { HAS_ERROR = 1, HAS_V = 2, HAS_E = 4, HAS_BIGE = 8 };

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

static int report_load(lua_State *L, int status) {
  if (status != LUA_OK) {
    fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
    fflush(stderr);
  }
  return status;
}

/* Appends to the steps table on top: {fn = <value on top>, args = {...}}. */
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
    lua_insert(L, -2);
    lua_setfield(L, -2, "fn");
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
  int steps = lua_gettop(L), i;
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
      if (report_load(L, st) != LUA_OK)
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
        if (report_load(L, luaL_loadbuffer(L, extra, strlen(extra),
                                           "=(command line)")) != LUA_OK)
          return 1;
        add_step(L, steps, NULL, NULL, NULL, 0);
      } else {
        char global[256];
        const char *eq = strchr(extra, '=');
        const char *mod = eq ? eq + 1 : extra;
        size_t glen = eq ? (size_t)(eq - extra) : strlen(extra);
        if (glen >= sizeof global)
          glen = sizeof global - 1;
        memcpy(global, extra, glen);
        global[glen] = '\0';
        if (!eq) { /* like lua5.4.6: global name stops at the first '-' */
          char *dash = strchr(global, '-');
          if (dash)
            *dash = '\0';
        }
        add_step(L, steps, mod, global, NULL, 0);
      }
    } else if (opt == 'W') {
      lua_warning(L, "@on", 0);
    }
  }
  if (script < argc) {
    const char *fname = argv[script];
    if (strcmp(fname, "-") == 0 && strcmp(argv[script - 1], "--") != 0)
      fname = NULL;
    if (report_load(L, luaL_loadfile(L, fname)) != LUA_OK)
      return 1;
    add_step(L, steps, NULL, NULL, argv + script + 1, argc - script - 1);
  } else if (!(flags & (HAS_E | HAS_V))) {
    if (isatty(0)) {
      print_version();
      fprintf(stderr, "%s: no script given; usage: %s script.lua [args] "
                      "(or -e CODE, or - to read stdin)\n", progname, progname);
      return 1;
    }
    if (report_load(L, luaL_loadfile(L, NULL)) != LUA_OK)
      return 1;
    add_step(L, steps, NULL, NULL, NULL, 0);
  }
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

int main(int argc, char **argv) {
  tide_runtime *rt;
  lua_State *L;
  int script = argc, flags, st, code = 0;
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
  rt = tide_runtime_new(NULL);
  if (rt == NULL) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", progname);
    return 1;
  }
  L = tide_runtime_L(rt);
  if (flags & HAS_BIGE) {
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
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
      fprintf(stderr, "%s: interrupted\n", progname);
      code = 130;
    } else {
      lua_getfield(L, LUA_REGISTRYINDEX, "tide.main_traceback");
      if (lua_type(L, -1) == LUA_TSTRING)
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
