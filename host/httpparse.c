/*
 * httpparse.c: "tide.http.parser", the HTTP/1.1 request parser behind
 * tide.http_server, a binding of Debian's libhttp-parser (HTTP_REQUEST mode).
 * Owns the "tide.HttpParser" userdata: the http_parser state and the C
 * buffers of the request being read (URL, header names and values, body).
 * The callbacks only append to those buffers and count bytes against the
 * limits; at headers-complete and message-complete they pause the parser,
 * so feed() builds the Lua tables outside http_parser_execute.
 *
 *   parser.new([{max_header_size =, max_body_size =}]) -> p
 *   p:feed(data) -> list of events, in order (pipelined requests included):
 *     {type = "headers", request = req}   the head is complete, body to come
 *     {type = "request", request = req}   the same req, with its body
 *     {type = "error", status = 400 | 413 | 414 | 431 | 501 | 505, errno =,
 *      message =}
 *   After an error or an upgrade the parser takes no more data (feed -> {}).
 *   p:pending() -> true while a request has begun and is not complete, and
 *                  whether its head is still coming
 *   Besides libhttp-parser's own checks (400), the head must be sound by
 *   RFC 9112: no whitespace before a header name's colon and exactly one
 *   Host in HTTP/1.1 (400), no transfer coding but chunked (501), HTTP/1.0
 *   or 1.1 (505), a target within max_header_size (414); HTTP/1.0 with a
 *   Transfer-Encoding is answered, then the connection closes.
 *   parser.reason(status) -> "OK", "Not Found", ... ("<unknown>" if unknown)
 *
 *   req = {method =, url =, path =, query = raw query or nil, version = "1.1",
 *          headers = {name1, value1, ...}, keep_alive =, upgrade =,
 *          content_length = n or nil, chunked =, body = string (at the end)}
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <http_parser.h>

#include "internal.h"

#define PARSER_MT "tide.HttpParser"

typedef tide_buf buf;

enum { EV_NONE, EV_HEADERS, EV_MESSAGE };
enum { FAIL_NONE, FAIL_HEADER, FAIL_BODY, FAIL_MEMORY, FAIL_URL, FAIL_BAD,
       FAIL_CODING, FAIL_VERSION };

typedef struct hparser {
  http_parser hp;
  buf url, hdr, body;   /* hdr: header names and values back to back */
  size_t *spans;        /* where each name and each value starts in hdr */
  int nspans, capspans;
  int last;             /* 1: appending to a name, 2: to a value */
  size_t header_bytes, max_header, max_body;
  int event;            /* the event a callback paused for */
  int fail;             /* why a callback stopped the parser */
  const char *why;      /* FAIL_BAD's message */
  int in_message, done; /* done: after an error or an upgrade */
  int in_head;          /* a request has begun and its head is not complete */
  int close_after;      /* framing that must not be trusted further (1.0 + TE) */
  int ck;               /* the chunked body's framing, CK_ (see chunk_check) */
  uint64_t ck_left;     /* bytes of chunk data still to come */
  int ck_digits;        /* significant hex digits of the chunk size so far */
  int ck_sized;         /* the chunk size has a digit */
} hparser;

/* ---- a chunked body's framing, strictly ------------------------------
 * Debian's libhttp-parser is built lax (HTTP_PARSER_STRICT 0): it ends a
 * chunk line at a bare LF, takes a CR followed by any byte as a line end
 * and any two bytes after chunk data as CRLF, and lets control bytes into
 * chunk extensions. A front end that reads those bytes as RFC 9112 says
 * would frame a different request: smuggling. So the body of a chunked
 * request is read here first, by the RFC (chunk-size [BWS; extensions]
 * CRLF, data CRLF, ..., 0, trailer lines, CRLF), and anything else is a
 * 400 before the parser sees it. */
enum { CK_OFF, CK_SIZE, CK_EXT, CK_SIZE_LF, CK_DATA, CK_DATA_CR, CK_DATA_LF,
       CK_TRAILER, CK_TRAILER_LINE, CK_TRAILER_LF, CK_END_LF };

static int hexval(int c) {
  return c >= '0' && c <= '9' ? c - '0'
       : c >= 'a' && c <= 'f' ? c - 'a' + 10
       : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* A byte a chunk extension or a trailer line may hold: visible, SP, HT. */
static int line_byte(int c) {
  return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* The states that take one byte only: which, and the state after it. */
static const struct {
  unsigned char want, next;
} exact[] = {[CK_DATA_CR] = {'\r', CK_DATA_LF}, [CK_DATA_LF] = {'\n', CK_SIZE},
             [CK_TRAILER_LF] = {'\n', CK_TRAILER}, [CK_END_LF] = {'\n', CK_OFF}};

/* Reads n bytes of the chunked body at at; returns how many belong to it
 * (n, or fewer when the body ended), or (size_t)-1 at a framing error. */
static size_t chunk_check(hparser *p, const unsigned char *at, size_t n) {
  size_t i;
  for (i = 0; i < n && p->ck != CK_OFF; i++) {
    int c = at[i], v;
    switch (p->ck) {
    case CK_SIZE:
      if ((v = hexval(c)) >= 0) {
        if ((p->ck_left || v) && ++p->ck_digits > 15) /* 2^60 and up: no real body */
          return (size_t)-1;
        p->ck_left = p->ck_left * 16 + (uint64_t)v;
        p->ck_sized = 1;
      } else if (!p->ck_sized) {
        return (size_t)-1;
      } else if (c == ';' || c == ' ' || c == '\t') {
        p->ck = CK_EXT;
      } else if (c == '\r') {
        p->ck = CK_SIZE_LF;
      } else {
        return (size_t)-1;
      }
      break;
    case CK_EXT:
      if (c == '\r')
        p->ck = CK_SIZE_LF;
      else if (!line_byte(c))
        return (size_t)-1;
      break;
    case CK_SIZE_LF:
      if (c != '\n')
        return (size_t)-1;
      p->ck = p->ck_left ? CK_DATA : CK_TRAILER;
      break;
    case CK_DATA: { /* skip the data at once */
      size_t k = n - i < p->ck_left ? n - i : (size_t)p->ck_left;
      p->ck_left -= k;
      i += k - 1;
      if (p->ck_left == 0)
        p->ck = CK_DATA_CR;
      break;
    }
    case CK_TRAILER: /* a trailer line, or the CRLF that ends the body */
      if (c == '\r')
        p->ck = CK_END_LF;
      else if (line_byte(c) && c != ' ' && c != '\t')
        p->ck = CK_TRAILER_LINE;
      else
        return (size_t)-1;
      break;
    case CK_TRAILER_LINE:
      if (c == '\r')
        p->ck = CK_TRAILER_LF;
      else if (!line_byte(c))
        return (size_t)-1;
      break;
    default: /* a state that takes one byte only (see exact) */
      if (c != exact[p->ck].want)
        return (size_t)-1;
      p->ck = exact[p->ck].next; /* CK_OFF after the body: the next request */
      p->ck_digits = p->ck_sized = 0;
      break;
    }
  }
  return i;
}


/* ---- callbacks: C buffers only --------------------------------------- */

static int count_header(hparser *p, size_t n) {
  p->header_bytes += n;
  if (p->header_bytes > p->max_header) {
    p->fail = FAIL_HEADER;
    return 1;
  }
  return 0;
}

static int on_message_begin(http_parser *hp) {
  hparser *p = hp->data;
  p->url.n = p->hdr.n = p->body.n = 0;
  p->nspans = p->last = 0;
  p->header_bytes = 0;
  p->in_message = p->in_head = 1;
  return 0;
}

static int on_url(http_parser *hp, const char *at, size_t n) {
  hparser *p = hp->data;
  if (count_header(p, n)) {
    p->fail = FAIL_URL; /* 414: the target alone is over the limit */
    return 1;
  }
  if (tide__buf_add(&p->url, at, n) < 0) {
    p->fail = FAIL_MEMORY;
    return 1;
  }
  return 0;
}

/* A name or value may come in pieces: a new span starts when the kind
 * changes (name -> value -> name ...). */
static int header_piece(hparser *p, int kind, const char *at, size_t n) {
  if (count_header(p, n + (p->last != kind ? 2 : 0))) /* ": " or CRLF */
    return 1;
  if (p->last != kind) {
    if (p->nspans == p->capspans) {
      int cap = p->capspans ? p->capspans * 2 : 32;
      size_t *ns = realloc(p->spans, (size_t)cap * sizeof(*ns));
      if (ns == NULL) {
        p->fail = FAIL_MEMORY;
        return 1;
      }
      p->spans = ns;
      p->capspans = cap;
    }
    p->spans[p->nspans++] = p->hdr.n;
    p->last = kind;
  }
  if (tide__buf_add(&p->hdr, at, n) < 0) {
    p->fail = FAIL_MEMORY;
    return 1;
  }
  return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t n) {
  return header_piece(hp->data, 1, at, n);
}

static int on_header_value(http_parser *hp, const char *at, size_t n) {
  return header_piece(hp->data, 2, at, n);
}

/* Whether the n bytes at s are name, case-insensitively. */
static int is_name(const char *s, size_t n, const char *name) {
  size_t i;
  for (i = 0; i < n && name[i]; i++)
    if ((s[i] | 0x20) != name[i])
      return 0;
  return i == n && name[i] == '\0';
}

/* Checks what libhttp-parser (built lenient in Debian) lets through and
 * RFC 9112 does not: returns the failure, FAIL_NONE if the head is sound. */
static int check_head(hparser *p) {
  http_parser *hp = &p->hp;
  int i, hosts = 0, te = 0, chunked = 0, exact = 0;
  if (hp->http_major != 1) /* 1.x: served as 1.1 (RFC 9110 2.5) */
    return FAIL_VERSION;    /* 505 */
  for (i = 0; i + 1 < p->nspans; i += 2) {
    const char *name = p->hdr.p + p->spans[i];
    size_t n = p->spans[i + 1] - p->spans[i], k;
    for (k = 0; k < n; k++)
      if (name[k] == ' ' || name[k] == '\t') { /* RFC 9112 5.1: a MUST */
        p->why = "whitespace between a header field name and the colon";
        return FAIL_BAD;
      }
    if (is_name(name, n, "host"))
      hosts++;
    if (is_name(name, n, "transfer-encoding")) {
      size_t end = i + 2 < p->nspans ? p->spans[i + 2] : p->hdr.n;
      const char *v = p->hdr.p + p->spans[i + 1], *e = p->hdr.p + end;
      const char *b = v, *f = e;
      te++;
      while (b < f && (*b == ' ' || *b == '\t'))
        b++;
      while (f > b && (f[-1] == ' ' || f[-1] == '\t'))
        f--;
      exact = is_name(b, (size_t)(f - b), "chunked");
      while (v < e) { /* every coding must be chunked: 501 for others */
        const char *c = v, *t;
        while (c < e && (*c == ' ' || *c == '\t' || *c == ','))
          c++;
        for (t = c; t < e && *t != ','; t++)
          ;
        v = t;
        while (t > c && (t[-1] == ' ' || t[-1] == '\t'))
          t--;
        if (t > c && !is_name(c, (size_t)(t - c), "chunked"))
          return FAIL_CODING;
        if (t > c)
          chunked++;
      }
    }
  }
  if (hosts > 1 || (hp->http_minor >= 1 && hosts == 0)) { /* RFC 9112 3.2 */
    p->why = hosts ? "more than one Host header" : "no Host header";
    return FAIL_BAD;
  }
  if (te && (te > 1 || !exact)) { /* what libhttp-parser would refuse
                                    * after the head: refused before a
                                    * 100 Continue could go out */
    p->why = "a Transfer-Encoding other than one \"chunked\"";
    return FAIL_BAD;
  }
  p->close_after = te && hp->http_minor == 0; /* RFC 9112 6.1 */
  return FAIL_NONE;
}

static int on_headers_complete(http_parser *hp) {
  hparser *p = hp->data;
  p->in_head = 0;
  if ((p->fail = check_head(p)) != FAIL_NONE)
    return -1;
  if ((hp->flags & F_CONTENTLENGTH) && hp->content_length > p->max_body) {
    p->fail = FAIL_BODY;
    return -1;
  }
  p->event = EV_HEADERS;
  http_parser_pause(hp, 1);
  return 0;
}

static int on_body(http_parser *hp, const char *at, size_t n) {
  hparser *p = hp->data;
  if (p->body.n + n > p->max_body) {
    p->fail = FAIL_BODY;
    return 1;
  }
  if (tide__buf_add(&p->body, at, n) < 0) {
    p->fail = FAIL_MEMORY;
    return 1;
  }
  return 0;
}

static int on_message_complete(http_parser *hp) {
  hparser *p = hp->data;
  p->in_message = 0;
  p->event = EV_MESSAGE;
  http_parser_pause(hp, 1);
  return 0;
}

static const http_parser_settings settings = {
  .on_message_begin = on_message_begin,
  .on_url = on_url,
  .on_header_field = on_header_field,
  .on_header_value = on_header_value,
  .on_headers_complete = on_headers_complete,
  .on_body = on_body,
  .on_message_complete = on_message_complete,
};

/* ---- Lua side -------------------------------------------------------- */

static hparser *check_parser(lua_State *L) {
  return luaL_checkudata(L, 1, PARSER_MT);
}

static void set_str(lua_State *L, const char *k, const char *s, size_t n) {
  lua_pushlstring(L, s, n);
  lua_setfield(L, -2, k);
}

static void set_bool(lua_State *L, const char *k, int v) {
  lua_pushboolean(L, v);
  lua_setfield(L, -2, k);
}

/* [-0, +1] The request table of the head just parsed. */
static void push_request(lua_State *L, hparser *p) {
  http_parser *hp = &p->hp;
  struct http_parser_url u;
  int i;
  lua_createtable(L, 0, 12);
  lua_pushstring(L, http_method_str((enum http_method)hp->method));
  lua_setfield(L, -2, "method");
  set_str(L, "url", p->url.p ? p->url.p : "", p->url.n);
  http_parser_url_init(&u);
  if (p->url.n < 65535 &&
      http_parser_parse_url(p->url.p, p->url.n, hp->method == HTTP_CONNECT, &u) == 0) {
    if (u.field_set & (1 << UF_PATH))
      set_str(L, "path", p->url.p + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
    else
      set_str(L, "path", "/", 1);
    if (u.field_set & (1 << UF_QUERY))
      set_str(L, "query", p->url.p + u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
  } else {
    set_str(L, "path", p->url.p ? p->url.p : "", p->url.n);
  }
  lua_pushfstring(L, "%d.%d", (int)hp->http_major,
                  hp->http_minor > 1 ? 1 : (int)hp->http_minor); /* 1.x: 1.1 */
  lua_setfield(L, -2, "version");
  lua_createtable(L, p->nspans + 1, 0);
  for (i = 0; i < p->nspans; i++) {
    size_t end = i + 1 < p->nspans ? p->spans[i + 1] : p->hdr.n;
    lua_pushlstring(L, p->hdr.p + p->spans[i], end - p->spans[i]);
    lua_rawseti(L, -2, i + 1);
  }
  if (p->nspans % 2) { /* a name without a value: never seen, but keep pairs */
    lua_pushliteral(L, "");
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "headers");
  set_bool(L, "keep_alive", http_should_keep_alive(hp) && !p->close_after);
  set_bool(L, "upgrade", hp->upgrade);
  set_bool(L, "chunked", (hp->flags & F_CHUNKED) != 0);
  if (hp->flags & F_CONTENTLENGTH) {
    lua_pushinteger(L, (lua_Integer)hp->content_length);
    lua_setfield(L, -2, "content_length");
  }
}

/* [-0, +1] {type = what, request = req}; req from the parser's user value. */
static void push_event(lua_State *L, const char *what) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, what);
  lua_setfield(L, -2, "type");
  lua_getiuservalue(L, 1, 1);
  lua_setfield(L, -2, "request");
}

static void push_error(lua_State *L, hparser *p, enum http_errno e) {
  int status = 400;
  lua_createtable(L, 0, 4);
  set_str(L, "type", "error", 5);
  if (p->fail == FAIL_URL) {
    status = 414;
    lua_pushfstring(L, "request target too long (limit %I bytes)",
                    (lua_Integer)p->max_header);
  } else if (p->fail == FAIL_BAD) {
    lua_pushstring(L, p->why);
  } else if (p->fail == FAIL_CODING) {
    status = 501;
    lua_pushliteral(L, "a transfer coding other than chunked");
  } else if (p->fail == FAIL_VERSION) {
    status = 505;
    lua_pushfstring(L, "HTTP/%d.%d is not supported", (int)p->hp.http_major,
                    (int)p->hp.http_minor);
  } else if (p->fail == FAIL_HEADER || e == HPE_HEADER_OVERFLOW) {
    status = 431;
    lua_pushfstring(L, "request header too large (limit %I bytes)",
                    (lua_Integer)p->max_header);
  } else if (p->fail == FAIL_BODY) {
    status = 413;
    lua_pushfstring(L, "request body too large (limit %I bytes)",
                    (lua_Integer)p->max_body);
  } else {
    lua_pushstring(L, http_errno_description(e));
  }
  lua_setfield(L, -2, "message");
  lua_pushstring(L, http_errno_name(e));
  lua_setfield(L, -2, "errno");
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
}

/* p:feed(data) -> list of events (see the top of the file) */
static int p_feed(lua_State *L) {
  hparser *p = check_parser(L);
  size_t len, off = 0, checked = 0; /* checked: data read by chunk_check */
  const char *data = luaL_checklstring(L, 2, &len);
  int n = 0;
  lua_settop(L, 2);
  lua_newtable(L); /* 3: the events */
  while (off < len && !p->done) {
    size_t used;
    if (p->ck != CK_OFF && checked < len) { /* a chunked body: its framing first */
      size_t k;
      k = chunk_check(p, (const unsigned char *)data + checked, len - checked);
      if (k == (size_t)-1) {
        p->fail = FAIL_BAD;
        p->why = "bad chunked framing (chunk lines end with CRLF, chunk data "
                 "is followed by CRLF, no control bytes)";
        push_error(L, p, HPE_INVALID_CHUNK_SIZE);
        lua_rawseti(L, 3, ++n);
        p->done = 1;
        break;
      }
      checked += k;
    }
    used = http_parser_execute(&p->hp, &settings, data + off, len - off);
    enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
    off += used;
    if (p->fail == FAIL_MEMORY) {
      p->done = 1;
      return luaL_error(L, "not enough memory");
    }
    if (e == HPE_PAUSED) {
      int ev = p->event;
      p->event = EV_NONE;
      http_parser_pause(&p->hp, 0);
      if (ev == EV_HEADERS) {
        if ((p->hp.flags & F_CHUNKED) && p->hp.method != HTTP_CONNECT) {
          /* its body's framing: see chunk_check (a CONNECT has none) */
          p->ck = CK_SIZE;
          p->ck_left = 0;
          p->ck_digits = p->ck_sized = 0;
          /* the parser paused on the head's last LF, not yet counted as
           * used; a chunk line cannot start with one */
          checked = off < len && data[off] == '\n' ? off + 1 : off;
        }
        push_request(L, p);
        lua_setiuservalue(L, 1, 1);
        push_event(L, "headers");
      } else {
        lua_getiuservalue(L, 1, 1);
        set_str(L, "body", p->body.p ? p->body.p : "", p->body.n);
        lua_pop(L, 1);
        push_event(L, "request");
        lua_pushnil(L);
        lua_setiuservalue(L, 1, 1);
        if (p->hp.upgrade) /* the rest is another protocol */
          p->done = 1;
      }
      lua_rawseti(L, 3, ++n);
    } else if (e != HPE_OK) {
      push_error(L, p, e);
      lua_rawseti(L, 3, ++n);
      p->done = 1;
    } else if (p->hp.upgrade || used == 0) {
      p->done = 1;
    }
  }
  return 1;
}

/* p:pending() -> whether a request has begun and is not complete, and
 * whether its head is still coming */
static int p_pending(lua_State *L) {
  hparser *p = check_parser(L);
  lua_pushboolean(L, p->in_message);
  lua_pushboolean(L, p->in_message && p->in_head);
  return 2;
}

static int p_gc(lua_State *L) {
  hparser *p = check_parser(L);
  free(p->url.p);
  free(p->hdr.p);
  free(p->body.p);
  free(p->spans);
  memset(p, 0, sizeof(*p));
  p->done = 1;
  return 0;
}

/* opts[k]: a non-negative number of bytes (a fraction is dropped; from
 * 2^53 on, math.huge included, no limit), dflt if absent. */
static size_t opt_size(lua_State *L, const char *k, size_t dflt) {
  lua_Number v;
  if (!lua_istable(L, 1))
    return dflt;
  lua_getfield(L, 1, k);
  v = luaL_optnumber(L, -1, (lua_Number)dflt);
  lua_pop(L, 1);
  if (!(v >= 0))
    luaL_error(L, "parser.new: %s must not be negative", k);
  return v >= 9007199254740992.0 ? (size_t)-1 : (size_t)v;
}

/* parser.new([{max_header_size =, max_body_size =}]) -> parser */
static int l_new(lua_State *L) {
  size_t max_header = opt_size(L, "max_header_size", 16 * 1024);
  size_t max_body = opt_size(L, "max_body_size", 16 * 1024 * 1024);
  hparser *p = lua_newuserdatauv(L, sizeof(*p), 1);
  memset(p, 0, sizeof(*p));
  http_parser_init(&p->hp, HTTP_REQUEST);
  p->hp.data = p;
  p->max_header = max_header;
  p->max_body = max_body;
  luaL_setmetatable(L, PARSER_MT);
  return 1;
}

/* parser.reason(status) -> the reason phrase */
static int l_reason(lua_State *L) {
  lua_pushstring(L, http_status_str((enum http_status)luaL_checkinteger(L, 1)));
  return 1;
}

static const luaL_Reg parser_methods[] = {
  {"feed", p_feed}, {"pending", p_pending}, {NULL, NULL}};

static const luaL_Reg parser_funcs[] = {
  {"new", l_new}, {"reason", l_reason}, {NULL, NULL}};

int luaopen_tide_http_parser(lua_State *L) {
  tide__new_type(L, PARSER_MT, parser_methods, p_gc, NULL, NULL);
  luaL_newlib(L, parser_funcs);
  return 1;
}
