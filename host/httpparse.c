/*
 * httpparse.c: "tide.http.parser", the HTTP/1.1 request parser of
 * http.serve, a binding of Debian's libhttp-parser. (stub)
 */
#include <http_parser.h>

#include "internal.h"

int luaopen_tide_http_parser(lua_State *L) {
  lua_newtable(L);
  return 1;
}
