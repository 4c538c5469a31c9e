/*
 * http.c: "tide.http.core", the HTTP client on libcurl's multi socket
 * interface driven by the tide loop. (stub)
 */
#include <curl/curl.h>

#include "internal.h"

int luaopen_tide_http_core(lua_State *L) {
  lua_newtable(L);
  return 1;
}
