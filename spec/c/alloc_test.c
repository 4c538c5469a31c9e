/*
 * alloc_test.c: the allocator of the states tide makes (host/alloc.c),
 * called directly as Lua calls it, then under a Lua workload. Under
 * AddressSanitizer the arena is off (tide__arena_new gives NULL) and the
 * same calls go to malloc.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "internal.h"

#include "check.h"

#define NB 5000

static void fill(unsigned char *p, size_t n, unsigned seed) {
  size_t i;
  for (i = 0; i < n; i++)
    p[i] = (unsigned char)(seed * 31 + i);
}

static int intact(const unsigned char *p, size_t n, unsigned seed) {
  size_t i;
  for (i = 0; i < n; i++)
    if (p[i] != (unsigned char)(seed * 31 + i))
      return 0;
  return 1;
}

/* Blocks of every size up to 3 KB, grown and shrunk across the small/big
 * line, keep their bytes and never overlap (each keeps its own pattern). */
static void test_resize_keeps_contents(tide_arena *a) {
  static unsigned char *p[NB];
  static size_t n[NB];
  int i, ok = 1, aligned = 1;
  for (i = 0; i < NB; i++) {
    n[i] = (size_t)(i * 7 % 3000) + 1;
    p[i] = tide__arena_alloc(a, NULL, LUA_TTABLE, n[i]);
    if (p[i] == NULL)
      ok = 0;
    else
      fill(p[i], n[i], (unsigned)i);
    aligned &= ((uintptr_t)p[i] % 16) == 0;
  }
  for (i = 0; i < NB && ok; i++) { /* every other one grows, the rest shrink */
    size_t m = i % 2 ? n[i] * 3 + 5 : n[i] / 3 + 1;
    unsigned char *q = tide__arena_alloc(a, p[i], n[i], m);
    if (q == NULL) {
      ok = 0;
      break;
    }
    aligned &= ((uintptr_t)q % 16) == 0;
    if (!intact(q, m < n[i] ? m : n[i], (unsigned)i))
      ok = 0;
    p[i] = q;
    n[i] = m;
    fill(p[i], n[i], (unsigned)i + 1);
  }
  for (i = 0; i < NB && ok; i++)
    ok = intact(p[i], n[i], (unsigned)i + 1);
  for (i = 0; i < NB; i++)
    tide__arena_alloc(a, p[i], n[i], 0);
  check(ok, "blocks keep their bytes when resized across size classes", NULL);
  check(aligned, "blocks are 16-byte aligned", NULL);
}

/* A freed small block is the next one handed out in its class. */
static void test_reuse(tide_arena *a) {
  void *x = tide__arena_alloc(a, NULL, 0, 200);
  void *y;
  tide__arena_alloc(a, x, 200, 0);
  y = tide__arena_alloc(a, NULL, 0, 193); /* same 16-byte class */
  check(a == NULL || x == y, "a freed block is reused within its class", NULL);
  tide__arena_alloc(a, y, 193, 0);
}

/* The VmFlags of the mapping holding p say "hg" (MADV_HUGEPAGE). */
static int advised_huge(const void *p) {
  FILE *f = fopen("/proc/self/smaps", "r");
  char line[512];
  int in = 0, hg = 0;
  if (f == NULL)
    return 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) /* a mapping's first line */
      in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
    else if (in && strncmp(line, "VmFlags:", 8) == 0)
      hg = strstr(line, " hg") != NULL;
  }
  fclose(f);
  return hg;
}

/* Big blocks (a million-entry table's array, the timer heap) keep their
 * bytes as they grow and shrink across the 1 MB line, and from 1 MB up
 * they are advised onto 2 MB pages, also after malloc's own mmap
 * threshold has risen (it does once a big block is freed; then malloc
 * served them from its heap in 4 KB pages, copying on every growth). */
static void test_big_blocks(tide_arena *a) {
  static const size_t sizes[] = {1500, 600000, 1048575, 1048576, 1048577,
                                 3u << 20, 9u << 20, 2u << 20, 5000, 1200};
  unsigned char *p = NULL, *freed = malloc(20u << 20);
  size_t n = 0, i;
  int ok = 1, hg = 1;
  if (freed)
    memset(freed, 1, 20u << 20);
  free(freed); /* raises malloc's mmap threshold to 20 MB */
  for (i = 0; i < sizeof sizes / sizeof *sizes && ok; i++) {
    unsigned char *q = p ? tide__arena_alloc(a, p, n, sizes[i])
                         : tide__arena_alloc(a, NULL, LUA_TTABLE, sizes[i]);
    if (q == NULL || (p && !intact(q, n < sizes[i] ? n : sizes[i], (unsigned)i))) {
      ok = 0;
      break;
    }
    p = q;
    n = sizes[i];
    fill(p, n, (unsigned)i + 1);
    if (a && n >= (1u << 20))
      hg &= advised_huge(p);
  }
  check(ok, "big blocks keep their bytes across the 1 MB line", NULL);
  check(hg, "big blocks are advised onto 2 MB pages", NULL);
  tide__arena_alloc(a, p, n, 0);
  p = tide__big(NULL, 0, 4u << 20);
  ok = p != NULL;
  if (ok) {
    fill(p, 4u << 20, 7);
    p = tide__big(p, 4u << 20, 16u << 20);
    ok = p && intact(p, 4u << 20, 7);
    tide__big(p, 16u << 20, 0);
  }
  check(ok, "tide__big grows an array in place or by moving it", NULL);
}

/* A Lua state on the arena runs a churn of strings, tables and
 * coroutines, and the GC accounting matches what it holds. */
static void test_state(tide_arena *a) {
  lua_State *L = tide__newstate(a);
  int st;
  luaL_openlibs(L);
  st = luaL_dostring(L,
    "local keep = {}\n"
    "for i = 1, 200000 do\n"
    "  local s = string.rep('x', i % 1500) .. i\n"
    "  local t = {i, s, {s}}\n"
    "  if i % 7 == 0 then keep[#keep + 1] = t end\n"
    "  if i % 1000 == 0 then\n"
    "    local co = coroutine.wrap(function(...) coroutine.yield(...) end)\n"
    "    assert(co(i) == i)\n"
    "  end\n"
    "end\n"
    "for i, t in ipairs(keep) do\n"
    "  assert(t[1] == i * 7 and t[2] == string.rep('x', t[1] % 1500) .. t[1])\n"
    "  assert(t[3][1] == t[2])\n"
    "end\n"
    "keep = nil\n"
    "collectgarbage()\n"
    "return collectgarbage('count')");
  check(st == LUA_OK && lua_tonumber(L, -1) < 1024,
        "a Lua state on the arena runs a churn of strings, tables, coroutines",
        st == LUA_OK ? NULL : lua_tostring(L, -1));
  lua_close(L);
}

int main(void) {
  tide_arena *a = tide__arena_new();
  test_resize_keeps_contents(a);
  test_reuse(a);
  test_big_blocks(a);
  test_state(a);
  tide__arena_free(a);
  return check_summary();
}
