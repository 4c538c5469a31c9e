/*
 * queue.c: tide.Queue, tide.LifoQueue and tide.PriorityQueue, with
 * asyncio's semantics: put/get suspend, *_nowait raise ("queue_full",
 * "queue_empty"), task_done/join, shutdown([immediate]) after which put
 * raises "queue_shutdown" and get does once the queue is empty. nil is a
 * valid item. A cancelled get takes nothing and a cancelled put leaves
 * nothing; a wake such a waiter had already received is passed on.
 *
 * The queue is a userdata; its items live in its user value (a table):
 * FIFO as a ring of indices, LIFO as a stack, priority as a binary heap of
 * {item, seq} pairs (ties leave in insertion order; tables without __lt
 * compare by their first element, as Python compares tuples). The three
 * wait lists are C arrays of parked tasks (waitlist.c).
 */
#include <string.h>

#include "internal.h"

enum { Q_FIFO, Q_LIFO, Q_PRIO };

static const char *const q_names[] = {"tide.Queue", "tide.LifoQueue",
                                      "tide.PriorityQueue"};
static char q_mt_keys[3];

typedef struct tqueue {
  int kind;
  lua_Integer maxsize; /* <= 0: unbounded */
  lua_Integer first;   /* FIFO: index of the oldest item */
  lua_Integer n;
  lua_Integer unfinished;
  lua_Integer seq; /* PRIO: insertion order */
  int shutdown;
  tide_waitlist getters, putters, joiners;
} tqueue;

/* Methods may be called with '.' by mistake: say so like luaL_argerror,
 * naming the method even when the call site has no name (pcall). */
static tqueue *check_q(lua_State *L, const char *fname) {
  int i;
  if (lua_getmetatable(L, 1)) {
    for (i = 0; i < 3; i++) {
      lua_rawgetp(L, LUA_REGISTRYINDEX, &q_mt_keys[i]);
      if (lua_rawequal(L, -1, -2)) {
        lua_pop(L, 2);
        return lua_touserdata(L, 1);
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  luaL_error(L, "bad argument #1 to '%s' (tide queue expected, got %s; call "
                "it as q:%s(...))", fname, luaL_typename(L, 1), fname);
  return NULL;
}

static int full(const tqueue *q) {
  return q->maxsize > 0 && q->n >= q->maxsize;
}

/* ---- storage --------------------------------------------------------- */

/* [-0, +1, e] Pushes the priority key of the heap entry at idx. */
static void push_key(lua_State *L, int entry) {
  lua_rawgeti(L, entry, 1);
  if (lua_type(L, -1) == LUA_TTABLE) {
    if (luaL_getmetafield(L, -1, "__lt") == LUA_TNIL) {
      lua_rawgeti(L, -1, 1); /* no __lt: its first element */
      lua_remove(L, -2);
    } else {
      lua_pop(L, 1); /* the __lt: the table compares itself */
    }
  }
}

/* Tables without __lt compare like Python tuples: element by element, a
 * shorter one first when it is a prefix. Past the first element (checked
 * at put), elements that '<' cannot compare without an error (other than
 * two numbers or two strings) count as equal. -1, 0 or 1 for a <, =, > b,
 * the items of entries a and b being tables. */
static int tuple_order(lua_State *L, int a, int b) {
  lua_Integer i;
  int r = 0;
  lua_rawgeti(L, a, 1);
  lua_rawgeti(L, b, 1);
  for (i = 2; r == 0; i++) {
    int ta = lua_rawgeti(L, -2, i), tb = lua_rawgeti(L, -2, i);
    if (ta == LUA_TNIL || tb == LUA_TNIL)
      r = ta == tb ? 2 : ta == LUA_TNIL ? -1 : 1; /* 2: equal, stop */
    else if (ta == tb && (ta == LUA_TNUMBER || ta == LUA_TSTRING))
      r = lua_compare(L, -2, -1, LUA_OPLT)   ? -1
          : lua_compare(L, -1, -2, LUA_OPLT) ? 1 : 0;
    else
      r = 2; /* not comparable: equal */
    lua_pop(L, 2);
  }
  lua_pop(L, 2);
  return r == 2 ? 0 : r;
}

/* Whether heap entry a leaves before heap entry b (both absolute). */
static int before(lua_State *L, int a, int b) {
  int r, tuples;
  push_key(L, a);
  push_key(L, b);
  lua_rawgeti(L, a, 1); /* a table item compared by its elements? */
  tuples = lua_type(L, -1) == LUA_TTABLE && !lua_rawequal(L, -1, -3);
  lua_pop(L, 1);
  if (lua_compare(L, -2, -1, LUA_OPLT))
    r = -1;
  else if (lua_compare(L, -1, -2, LUA_OPLT))
    r = 1;
  else {
    r = 0;
    if (tuples) {
      int both = lua_rawgeti(L, b, 1) == LUA_TTABLE;
      lua_pop(L, 1);
      if (both)
        r = tuple_order(L, a, b);
    }
  }
  lua_pop(L, 2);
  if (r == 0) { /* equal: first in, first out */
    lua_rawgeti(L, a, 2);
    lua_rawgeti(L, b, 2);
    r = lua_tointeger(L, -2) < lua_tointeger(L, -1) ? -1 : 1;
    lua_pop(L, 2);
  }
  return r < 0;
}

static int cmp_item(lua_State *L) { /* protected: can these keys compare? */
  lua_compare(L, 1, 2, LUA_OPLT);
  return 0;
}

/* Stores the value at vidx; the queue's item table is at items. */
static void store(lua_State *L, tqueue *q, int items, int vidx) {
  if (q->kind == Q_FIFO) {
    lua_pushvalue(L, vidx);
    lua_rawseti(L, items, q->first + q->n);
  } else if (q->kind == Q_LIFO) {
    lua_pushvalue(L, vidx);
    lua_rawseti(L, items, q->n + 1);
  } else {
    lua_Integer i, j, n = q->n + 1;
    int entry;
    lua_createtable(L, 2, 0);
    entry = lua_gettop(L);
    lua_pushvalue(L, vidx);
    lua_rawseti(L, entry, 1);
    lua_pushinteger(L, ++q->seq);
    lua_rawseti(L, entry, 2);
    /* a key '<' cannot compare with the first item's is refused up front;
     * a queue's only item compares with nothing (as in asyncio's, which
     * takes one None and refuses a second) */
    if (q->n > 0) {
      int ktype, htype;
      lua_pushcfunction(L, cmp_item);
      push_key(L, entry);
      lua_rawgeti(L, items, 1);
      push_key(L, lua_gettop(L));
      lua_remove(L, -2);
      ktype = lua_type(L, -2), htype = lua_type(L, -1);
      if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        if (ktype == htype)
          luaL_error(L, "bad argument #1 to 'put' (priority queue items must "
                        "be comparable with '<', or tables whose first element "
                        "is; got %s)", lua_typename(L, ktype));
        luaL_error(L, "bad argument #1 to 'put' (an item comparable with the "
                      "queue's items with '<' expected, got %s where they are %s)",
                   lua_typename(L, ktype), lua_typename(L, htype));
      }
    }
    /* find the slot first, so a comparison that raises changes nothing */
    for (i = n; i > 1; i /= 2) {
      lua_rawgeti(L, items, i / 2);
      if (!before(L, entry, lua_gettop(L))) {
        lua_pop(L, 1);
        break;
      }
      lua_pop(L, 1);
    }
    for (j = n; j > i; j /= 2) {
      lua_rawgeti(L, items, j / 2);
      lua_rawseti(L, items, j);
    }
    lua_rawseti(L, items, i);
  }
  q->n++;
}

/* Pushes and removes the next item. */
static void take(lua_State *L, tqueue *q, int items) {
  if (q->kind == Q_FIFO) {
    lua_rawgeti(L, items, q->first);
    lua_pushnil(L);
    lua_rawseti(L, items, q->first);
    q->first++;
    q->n--;
    if (q->n == 0)
      q->first = 1;
  } else if (q->kind == Q_LIFO) {
    lua_rawgeti(L, items, q->n);
    lua_pushnil(L);
    lua_rawseti(L, items, q->n);
    q->n--;
  } else {
    lua_Integer i = 1, n = q->n;
    int last;
    lua_rawgeti(L, items, 1);
    lua_rawgeti(L, -1, 1); /* the item */
    lua_remove(L, -2);
    lua_rawgeti(L, items, n);
    last = lua_gettop(L);
    lua_pushnil(L);
    lua_rawseti(L, items, n);
    q->n = --n;
    if (n > 0) {
      for (;;) {
        lua_Integer c = 2 * i;
        int ci;
        if (c > n)
          break;
        lua_rawgeti(L, items, c);
        ci = lua_gettop(L);
        if (c < n) {
          lua_rawgeti(L, items, c + 1);
          if (before(L, lua_gettop(L), ci)) {
            c++;
            lua_replace(L, ci);
          } else {
            lua_pop(L, 1);
          }
        }
        if (!before(L, ci, last)) {
          lua_pop(L, 1);
          break;
        }
        lua_rawseti(L, items, i);
        i = c;
      }
      lua_rawseti(L, items, i); /* last */
    } else {
      lua_pop(L, 1);
    }
  }
}

/* ---- put / get ------------------------------------------------------- */

static void raise_shutdown(lua_State *L) {
  tide__err_raise(L, "queue_shutdown", "the queue is shut down");
}

/* Stores the item at 2 and wakes a getter. */
static int insert(lua_State *L, tqueue *q) {
  lua_getiuservalue(L, 1, 1);
  store(L, q, lua_gettop(L), 2);
  q->unfinished++;
  tide__wl_wake_one(L, &q->getters);
  return 0;
}

static int remove_next(lua_State *L, tqueue *q) {
  lua_getiuservalue(L, 1, 1);
  take(L, q, lua_gettop(L));
  tide__wl_wake_one(L, &q->putters);
  return 1;
}

/* After a park in list w: on a cancel, leave the list, pass on a wake we
 * had received if `can_pass`, and raise. Stack: [q, ..., ok, err, woken]. */
static void after_park(lua_State *L, tide_waitlist *w, int base, int can_pass) {
  if (!lua_toboolean(L, base)) {
    tide__wl_remove(w, tide__rt(L)->current);
    if (lua_toboolean(L, base + 2) && can_pass)
      tide__wl_wake_one(L, w);
    lua_pushvalue(L, base + 1);
    lua_error(L);
  }
  lua_settop(L, base - 1);
}

static int put_k(lua_State *L, int status, lua_KContext ctx) {
  tqueue *q = lua_touserdata(L, 1);
  (void)status;
  if (ctx)
    after_park(L, &q->putters, 3, !full(q));
  if (full(q) && !q->shutdown) {
    tide_task *me = tide__current(L);
    tide__wl_push(L, &q->putters, me);
    return tide__park(L, me, 1, put_k);
  }
  if (q->shutdown)
    raise_shutdown(L);
  return insert(L, q);
}

/* q:put(item): waits while the queue is full */
static int q_put(lua_State *L) {
  check_q(L, "put");
  lua_settop(L, 2);
  return put_k(L, LUA_OK, 0);
}

/* q:put_nowait(item) */
static int q_put_nowait(lua_State *L) {
  tqueue *q = check_q(L, "put_nowait");
  lua_settop(L, 2);
  if (q->shutdown)
    raise_shutdown(L);
  if (full(q))
    return tide__err_raise(L, "queue_full", "queue is full (maxsize %d)",
                           (int)q->maxsize);
  return insert(L, q);
}

static int get_k(lua_State *L, int status, lua_KContext ctx) {
  tqueue *q = lua_touserdata(L, 1);
  (void)status;
  if (ctx)
    after_park(L, &q->getters, 2, q->n > 0);
  if (q->n == 0) {
    if (q->shutdown)
      raise_shutdown(L);
    tide_task *me = tide__current(L);
    tide__wl_push(L, &q->getters, me);
    return tide__park(L, me, 1, get_k);
  }
  return remove_next(L, q);
}

/* q:get() -> item: waits while the queue is empty */
static int q_get(lua_State *L) {
  check_q(L, "get");
  lua_settop(L, 1);
  return get_k(L, LUA_OK, 0);
}

/* q:get_nowait() -> item */
static int q_get_nowait(lua_State *L) {
  tqueue *q = check_q(L, "get_nowait");
  lua_settop(L, 1);
  if (q->n == 0) {
    if (q->shutdown)
      raise_shutdown(L);
    return tide__err_raise(L, "queue_empty", "queue is empty");
  }
  return remove_next(L, q);
}

/* ---- task_done / join / shutdown -------------------------------------- */

static int q_task_done(lua_State *L) {
  tqueue *q = check_q(L, "task_done");
  if (q->unfinished <= 0)
    return tide__err_raise(L, "invalid_state", "task_done() called more "
                                               "times than items were put");
  if (--q->unfinished == 0)
    tide__wl_wake_all(L, &q->joiners);
  return 0;
}

static int join_k(lua_State *L, int status, lua_KContext ctx) {
  tqueue *q = lua_touserdata(L, 1);
  (void)status;
  if (ctx) { /* woken: the count reached 0, whatever was put since (as
               * asyncio's join, which waits on an event task_done sets) */
    after_park(L, &q->joiners, 2, 0);
    return 0;
  }
  if (q->unfinished > 0) {
    tide_task *me = tide__current(L);
    tide__wl_push(L, &q->joiners, me);
    return tide__park(L, me, 1, join_k);
  }
  return 0;
}

/* q:join(): waits until every item put has been marked done */
static int q_join(lua_State *L) {
  check_q(L, "join");
  lua_settop(L, 1);
  return join_k(L, LUA_OK, 0);
}

/* q:shutdown([immediate]): immediate drops the items left, counting them
 * as done for join. Every blocked put, get and join wakes up. */
static int q_shutdown(lua_State *L) {
  tqueue *q = check_q(L, "shutdown");
  int immediate = lua_toboolean(L, 2);
  lua_settop(L, 1);
  q->shutdown = 1;
  if (immediate) {
    lua_getiuservalue(L, 1, 1);
    while (q->n > 0) {
      take(L, q, 2);
      lua_pop(L, 1);
      if (q->unfinished > 0)
        q->unfinished--;
    }
    if (q->unfinished == 0)
      tide__wl_wake_all(L, &q->joiners);
  }
  tide__wl_wake_all(L, &q->getters);
  tide__wl_wake_all(L, &q->putters);
  return 0;
}

static int q_qsize(lua_State *L) {
  lua_pushinteger(L, check_q(L, "qsize")->n);
  return 1;
}

static int q_empty(lua_State *L) {
  lua_pushboolean(L, check_q(L, "empty")->n == 0);
  return 1;
}

static int q_full(lua_State *L) {
  lua_pushboolean(L, full(check_q(L, "full")));
  return 1;
}

static int q_index(lua_State *L) {
  tqueue *q;
  const char *k;
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
    return 1; /* a method: the hot path, no string compare */
  q = check_q(L, "__index");
  k = lua_tostring(L, 2);
  if (k && strcmp(k, "maxsize") == 0) {
    lua_pushinteger(L, q->maxsize);
    return 1;
  }
  return 1; /* nil */
}

static int q_tostring(lua_State *L) {
  tqueue *q = check_q(L, "__tostring");
  lua_pushfstring(L, "%s(maxsize=%d, qsize=%d%s)", q_names[q->kind],
                  (int)q->maxsize, (int)q->n,
                  q->shutdown ? ", shut down" : "");
  return 1;
}

static int q_gc(lua_State *L) {
  tqueue *q = check_q(L, "__gc");
  tide__wl_free(&q->getters);
  tide__wl_free(&q->putters);
  tide__wl_free(&q->joiners);
  return 0;
}

static int new_queue(lua_State *L, int kind) {
  static const char *const ctor[] = {"Queue", "LifoQueue", "PriorityQueue"};
  lua_Integer maxsize = 0;
  tqueue *q;
  if (!lua_isnoneornil(L, 1)) {
    int isint;
    maxsize = lua_tointegerx(L, 1, &isint);
    if (!isint)
      return luaL_error(L, "bad argument #1 to '%s' (integer maxsize "
                           "expected, got %s)", ctor[kind],
                        lua_type(L, 1) == LUA_TNUMBER ? lua_tostring(L, 1)
                                                      : luaL_typename(L, 1));
  }
  q = lua_newuserdatauv(L, sizeof(*q), 1);
  memset(q, 0, sizeof(*q));
  q->kind = kind;
  q->maxsize = maxsize;
  q->first = 1;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &q_mt_keys[kind]);
  lua_setmetatable(L, -2);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static int l_queue(lua_State *L) { return new_queue(L, Q_FIFO); }
static int l_lifo(lua_State *L) { return new_queue(L, Q_LIFO); }
static int l_prio(lua_State *L) { return new_queue(L, Q_PRIO); }

static const luaL_Reg q_methods[] = {
  {"put", q_put}, {"get", q_get}, {"put_nowait", q_put_nowait},
  {"get_nowait", q_get_nowait}, {"task_done", q_task_done}, {"join", q_join},
  {"shutdown", q_shutdown}, {"qsize", q_qsize}, {"empty", q_empty},
  {"full", q_full}, {NULL, NULL}};

static const luaL_Reg q_funcs[] = {
  {"Queue", l_queue}, {"LifoQueue", l_lifo}, {"PriorityQueue", l_prio},
  {NULL, NULL}};

/* [-1, +1, m] Adds the queue constructors to the module table on top. */
int tide__open_queue(lua_State *L) {
  int i;
  luaL_newlib(L, q_methods);
  for (i = 0; i < 3; i++) {
    luaL_newmetatable(L, q_names[i]);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, q_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, q_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, q_gc);
    lua_setfield(L, -2, "__gc");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &q_mt_keys[i]);
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, q_funcs, 0);
  return 1;
}
