/*
 * err.c: tide's error values. A tide error is a table with the "tide.Error"
 * metatable and the fields kind and message (and, where known, traceback and
 * value). This file owns that metatable, the constructors used by C code and
 * the Lua functions tide.error() and tide.iserror().
 */
#include <stdarg.h>
#include <string.h>

#include "internal.h"

/* [-0, +1, m] Pushes a new error {kind = kind, message = <fmt>}. */
void tide__err_push(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  lua_createtable(L, 0, 3);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, TIDE_ERROR_MT);
}

/* Whether a chunk is one of tide's own Lua modules (their chunk names). */
int tide__is_own_source(const char *source) {
  return strcmp(source, "@lua/tide.lua") == 0 ||
         strncmp(source, "@lua/tide/", 10) == 0;
}

/* Finds, from `level` of co up, the innermost Lua frame outside tide's own
 * Lua modules ("@lua/tide..."): where the user called a tide function
 * implemented partly in Lua. With `fallback`, the innermost Lua frame if
 * all are tide's. Fills ar ("Sl"); 0 when there is none. */
int tide__user_frame(lua_State *co, int level, int fallback, lua_Debug *ar) {
  lua_Debug d;
  int found = 0;
  for (; lua_getstack(co, level, &d); level++) {
    if (!lua_getinfo(co, "Sl", &d) || d.currentline <= 0)
      continue; /* a C function */
    if (!tide__is_own_source(d.source)) {
      *ar = d;
      return 1;
    }
    if (fallback && !found) {
      *ar = d;
      found = 1;
    }
  }
  return found;
}

/* [-0, +1, m] Pushes and returns the name under which the function at idx
 * is in a loaded module ("tide.sleep", "print"), as lauxlib names a function
 * called through pcall; "this function" if it is in none. */
const char *tide__global_name(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, -2)) { /* [loaded, modname, module] */
    if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1) &&
        strcmp(lua_tostring(L, -2), "tide.core") != 0) { /* internal */
      lua_pushnil(L);
      while (lua_next(L, -2)) { /* [.., module, key, value] */
        if (lua_type(L, -2) == LUA_TSTRING && lua_rawequal(L, -1, idx)) {
          const char *mod = lua_tostring(L, -4);
          if (strcmp(mod, LUA_GNAME) == 0)
            lua_pushvalue(L, -2);
          else
            lua_pushfstring(L, "%s.%s", mod, lua_tostring(L, -2));
          lua_replace(L, -6); /* over loaded */
          lua_pop(L, 4);
          return lua_tostring(L, -1);
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_pushliteral(L, "this function");
  return lua_tostring(L, -1);
}

/* Refuses, as luaL_argerror does for argument arg, anything but nil or a
 * table whose keys are all among the first n names of known (n < 0: all
 * of the NULL-terminated list): a mistyped option must not go unnoticed. */
void tide__check_opts(lua_State *L, int arg, const char *const known[], int n) {
  if (lua_isnoneornil(L, arg))
    return;
  if (!lua_istable(L, arg))
    luaL_argerror(L, arg, lua_pushfstring(L, "table of options expected, "
                                          "got %s", luaL_typename(L, arg)));
  if (n < 0)
    for (n = 0; known[n]; n++)
      ;
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    int i = 0;
    if (lua_type(L, -2) == LUA_TSTRING)
      while (i < n && strcmp(lua_tostring(L, -2), known[i]) != 0)
        i++;
    if (lua_type(L, -2) != LUA_TSTRING || i == n)
      luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s'",
                                            luaL_tolstring(L, -2, NULL)));
    lua_pop(L, 1);
  }
}

/* [-0, +1, m] Pushes "source:line: " of the caller's frame in the user's
 * code (tide__user_frame), or "". */
void tide__where_user(lua_State *L) {
  lua_Debug ar;
  if (tide__user_frame(L, 1, 0, &ar))
    lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
  else
    lua_pushliteral(L, "");
}

/* [-0, +1, m] Pushes fmt's message located at the user's call. */
static void push_at_user(lua_State *L, const char *fmt, va_list ap) {
  tide__where_user(L);
  lua_pushvfstring(L, fmt, ap);
  lua_concat(L, 2);
}

/* [-0, +1, v] Raises a message (a string, as luaL_error's) located at the
 * user's call (tide__where_user): bad arguments of functions that are part
 * Lua, part C. */
int tide__raise_at_user(lua_State *L, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_at_user(L, fmt, ap);
  va_end(ap);
  return lua_error(L);
}

/* [-0, +1, v] Raises a new error of `kind`. */
int tide__err_raise(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  lua_createtable(L, 0, 3);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, TIDE_ERROR_MT);
  return lua_error(L);
}

int tide__iserror(lua_State *L, int idx) {
  int r;
  if (!lua_istable(L, idx) || !lua_getmetatable(L, idx))
    return 0;
  luaL_getmetatable(L, TIDE_ERROR_MT);
  r = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return r;
}

int tide__err_is_kind(lua_State *L, int idx, const char *kind) {
  int r;
  if (!tide__iserror(L, idx))
    return 0;
  lua_getfield(L, idx, "kind");
  r = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), kind) == 0;
  lua_pop(L, 1);
  return r;
}

static int err_tostring(lua_State *L) {
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "message");
  lua_pushfstring(L, "%s: %s", luaL_optstring(L, -2, "error"),
                  luaL_optstring(L, -1, "?"));
  return 1;
}

/* tide.error(kind, message [, fields]) -> error value */
static int l_error(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  const char *msg = luaL_optstring(L, 2, kind);
  if (!lua_isnoneornil(L, 3))
    luaL_checktype(L, 3, LUA_TTABLE);
  tide__err_push(L, kind, "%s", msg);
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
  }
  return 1;
}

static int l_iserror(lua_State *L) {
  lua_pushboolean(L, tide__iserror(L, 1));
  return 1;
}

/* [-0, +1, v] Raises a tide error of `kind` whose message is located at
 * the user's call: a call made where it cannot work (outside a task, a
 * task awaiting itself...), which a program may want to tell apart. */
int tide__raise_kind_at_user(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_at_user(L, fmt, ap);
  va_end(ap);
  tide__err_push(L, kind, "%s", lua_tostring(L, -1));
  return lua_error(L);
}

/* core.raise_at_user(msg [, kind]): for tide's Lua modules; with a kind, a
 * tide error (tide__raise_kind_at_user), else a string */
static int l_raise_at_user(lua_State *L) {
  const char *msg = luaL_checkstring(L, 1);
  if (!lua_isnoneornil(L, 2))
    return tide__raise_kind_at_user(L, luaL_checkstring(L, 2), "%s", msg);
  return tide__raise_at_user(L, "%s", msg);
}

/* core.argerror(fname, argn, msg): for tide's Lua modules, luaL_argerror's
 * message ("bad argument #argn to 'fname' (msg)") at the user's call */
static int l_argerror(lua_State *L) {
  const char *fname = luaL_checkstring(L, 1);
  int argn = (int)luaL_checkinteger(L, 2);
  return tide__raise_at_user(L, "bad argument #%d to '%s' (%s)", argn, fname,
                             luaL_checkstring(L, 3));
}

/* core.check_self(obj, mt, fname) -> obj: a method's self must have the
 * metatable mt (a method called with "." gets its first argument) */
static int l_check_self(lua_State *L) {
  const char *fname = luaL_checkstring(L, 3);
  const char *expected, *got;
  lua_settop(L, 3);
  if (lua_getmetatable(L, 1) && lua_rawequal(L, -1, 2)) {
    lua_settop(L, 1);
    return 1;
  }
  lua_getfield(L, 2, "__name");
  expected = lua_tostring(L, -1);
  if (lua_isnil(L, 1))
    got = "no value";
  else if (luaL_getmetafield(L, 1, "__name") == LUA_TSTRING)
    got = lua_tostring(L, -1); /* as luaL_typeerror names it */
  else
    got = luaL_typename(L, 1);
  return tide__raise_at_user(L, "bad argument #1 to '%s' (%s expected, got %s)",
                             fname, expected ? expected : "object", got);
}

static const luaL_Reg err_funcs[] = {
  {"error", l_error}, {"iserror", l_iserror},
  {"raise_at_user", l_raise_at_user}, {"argerror", l_argerror},
  {"check_self", l_check_self}, {NULL, NULL}};

/* [-1, +1, m] Adds error functions to the table on top; makes the metatable. */
int tide__open_err(lua_State *L) {
  if (luaL_newmetatable(L, TIDE_ERROR_MT)) {
    lua_pushcfunction(L, err_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushstring(L, "tide.Error");
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, err_funcs, 0);
  return 1;
}
