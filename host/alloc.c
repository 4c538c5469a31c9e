/*
 * alloc.c: the allocator of the Lua state a runtime creates (workers have
 * theirs in thread.c). A program of many tasks is mostly small blocks:
 * each task is a coroutine (~200 bytes), its stack (720), a few call
 * frames and a userdata. Blocks of up to SMALL_MAX bytes come from size
 * classes, 16 bytes apart, carved from 2 MB chunks; a freed block goes on
 * its class's free list for the next block of that class. Lua hands a
 * block's size back when it frees or resizes it, so blocks carry no header
 * (malloc spends 8-16 bytes on each). Chunks after the first are marked
 * MADV_HUGEPAGE: the kernel then backs them with 2 MB pages, one page
 * fault instead of 512 (1M sleeping tasks fault in 1.3 GB; with 4 KB pages
 * the faults were a third of the run). Blocks of BIG_MIN bytes and more
 * (the arrays of big tables; the scheduler's timer heap and ready ring
 * through tide__big) are mappings of their own, also MADV_HUGEPAGE, grown
 * with mremap: malloc would serve them from its heap once a big block was
 * freed (its mmap threshold rises), copying on every growth into fresh
 * 4 KB pages, and with a million entries read at random every access is a
 * TLB miss. Blocks in between are malloc's.
 *
 * Small blocks are reused within their class only, and chunks go back to
 * the system when the runtime closes, not before: memory a program needed
 * at its peak of small blocks stays with it, as with most mallocs' small
 * bins. Under AddressSanitizer the state uses malloc for everything, so
 * the sanitizer sees every block.
 */
#define _GNU_SOURCE /* mremap */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#define SMALL_MAX 1024
#define GRAIN 16
#define NCLASS (SMALL_MAX / GRAIN)
#define CHUNK ((size_t)2 << 20)
#define BIG_MIN ((size_t)1 << 20)
#define PAGE ((size_t)4096)

typedef struct chunk {
  struct chunk *next;
} chunk;

struct tide_arena {
  tide_runtime *rt;       /* the runtime of the state, once it has one */
  void *free[NCLASS + 1]; /* per class: a list linked through the blocks */
  char *bump, *end;       /* the unused rest of the newest chunk */
  chunk *chunks;          /* every chunk, for tide__arena_free */
  size_t nchunks;
  int warn_on, warn_midline; /* the state's warnings (see warnf) */
};

/* A CHUNK-aligned mapping of CHUNK bytes (aligned, so that one huge page
 * covers it exactly), or NULL. */
static void *map_chunk(int huge) {
  char *p = mmap(NULL, 2 * CHUNK, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char *start;
  size_t head;
  if (p == MAP_FAILED)
    return NULL;
  start = (char *)(((uintptr_t)p + CHUNK - 1) & ~(uintptr_t)(CHUNK - 1));
  head = (size_t)(start - p);
  if (head)
    munmap(p, head);
  munmap(start + CHUNK, CHUNK - head);
#ifdef MADV_HUGEPAGE
  if (huge)
    madvise(start, CHUNK, MADV_HUGEPAGE); /* advice: failing is harmless */
#else
  (void)huge;
#endif
  return start;
}

/* A fresh mapping of len bytes (whole pages) advised onto 2 MB pages, or
 * NULL. The worker states' allocator (thread.c) maps its big blocks here
 * too. */
void *tide__map_big(size_t len) {
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
  if (p == MAP_FAILED)
    return NULL;
#ifdef MADV_HUGEPAGE
  madvise(p, len, MADV_HUGEPAGE); /* advice: failing is harmless */
#endif
  return p;
}

/* The lua_Alloc contract for blocks above SMALL_MAX: a mapping from
 * BIG_MIN bytes up, malloc's below (nsize 0 frees; NULL: no memory, the
 * old block stays). */
#if defined(__SANITIZE_ADDRESS__) /* malloc's, so the sanitizer sees them */
static void *big(void *ptr, size_t osize, size_t nsize) {
  (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}
#else
static size_t pages(size_t n) {
  return (n + PAGE - 1) & ~(PAGE - 1);
}

static void *big(void *ptr, size_t osize, size_t nsize) {
  void *np;
  if (ptr == NULL)
    osize = 0;
  if (osize < BIG_MIN && nsize < BIG_MIN) {
    if (nsize > 0)
      return realloc(ptr, nsize);
    free(ptr);
    return NULL;
  }
  if (nsize == 0) {
    munmap(ptr, pages(osize));
    return NULL;
  }
  if (osize >= BIG_MIN && nsize >= BIG_MIN) {
    np = pages(osize) == pages(nsize)
             ? ptr
             : mremap(ptr, pages(osize), pages(nsize), MREMAP_MAYMOVE);
    return np == MAP_FAILED ? NULL : np;
  }
  if (nsize >= BIG_MIN) { /* from malloc's to a mapping */
    np = tide__map_big(pages(nsize)); /* mremap keeps its advice */
    if (np == NULL)
      return NULL;
    if (ptr)
      memcpy(np, ptr, osize);
    free(ptr);
    return np;
  }
  np = malloc(nsize); /* from a mapping to malloc's */
  if (np == NULL)
    return NULL;
  memcpy(np, ptr, nsize);
  munmap(ptr, pages(osize));
  return np;
}
#endif

void *tide__big(void *ptr, size_t osize, size_t nsize) {
  return big(ptr, osize, nsize);
}

/* A block of class c from the newest chunk, or from a new one. */
static void *carve(tide_arena *a, int c) {
  size_t size = (size_t)c * GRAIN;
  void *p;
  if ((size_t)(a->end - a->bump) < size) {
    chunk *ch = map_chunk(a->nchunks > 0);
    if (ch == NULL)
      return NULL;
    ch->next = a->chunks;
    a->chunks = ch;
    a->nchunks++;
    a->bump = (char *)ch + GRAIN; /* after the link, keeping the alignment */
    a->end = (char *)ch + CHUNK;
  }
  p = a->bump;
  a->bump += size;
  return p;
}

static int class_of(size_t n) {
  return (int)((n + GRAIN - 1) / GRAIN);
}

static void *small_alloc(tide_arena *a, int c) {
  void *p = a->free[c];
  if (p) {
    memcpy(&a->free[c], p, sizeof(void *)); /* its next */
    return p;
  }
  return carve(a, c);
}

static void small_free(tide_arena *a, void *p, int c) {
  memcpy(p, &a->free[c], sizeof(void *));
  a->free[c] = p;
}

void *tide__arena_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  tide_arena *a = ud;
  int oc, nc;
  void *np;
  if (a == NULL) { /* malloc's (under tide_options.memory_limit) */
    if (nsize > 0)
      return realloc(ptr, nsize);
    free(ptr);
    return NULL;
  }
  if (ptr == NULL)
    osize = 0; /* then osize tells the type of object, not a size */
  oc = osize <= SMALL_MAX ? class_of(osize) : -1;
  nc = nsize <= SMALL_MAX ? class_of(nsize) : -1;
  if (nsize == 0) {
    if (ptr == NULL)
      return NULL;
    if (oc > 0)
      small_free(a, ptr, oc);
    else
      big(ptr, osize, 0);
    return NULL;
  }
  if (oc == nc && oc > 0) /* the block still fits its class */
    return ptr;
  if (oc < 0 && nc < 0) /* big to big */
    return big(ptr, osize, nsize);
  np = nc > 0 ? small_alloc(a, nc) : big(NULL, 0, nsize);
  if (np == NULL)
    return NULL; /* Lua collects and retries, then raises */
  if (ptr) {
    memcpy(np, ptr, osize < nsize ? osize : nsize);
    if (oc > 0)
      small_free(a, ptr, oc);
    else
      big(ptr, osize, 0);
  }
  return np;
}

/* The state's allocator data is its runtime's fastest address: tide__rt
 * asks here before the registry (a hash lookup, ~140 instructions). */
tide_runtime *tide__arena_rt(lua_State *L) {
  void *ud;
  if (lua_getallocf(L, &ud) == tide__arena_alloc && ud)
    return ((tide_arena *)ud)->rt;
  return NULL;
}

void tide__arena_set_rt(tide_arena *a, tide_runtime *rt) {
  if (a)
    a->rt = rt;
}

tide_arena *tide__arena_new(void) {
#if defined(__SANITIZE_ADDRESS__)
  return NULL;
#else
  return calloc(1, sizeof(tide_arena));
#endif
}

void tide__arena_free(tide_arena *a) {
  if (a == NULL)
    return;
  while (a->chunks) {
    chunk *ch = a->chunks;
    a->chunks = ch->next;
    munmap(ch, CHUNK);
  }
  free(a);
}

/* What luaL_newstate adds to lua_newstate: a panic function and warnings
 * (off until "@on"; lua5.4's -W), for a state made with another allocator. */
static int panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "PANIC: unprotected error in call to Lua API (%s)\n",
          msg ? msg : "error object is not a string");
  fflush(stderr);
  return 0; /* then Lua aborts */
}

/* midline: the last piece said a continuation follows (tocont). */
static void warnf(void *ud, const char *msg, int tocont) {
  tide_arena *a = ud;
  if (!a->warn_midline && !tocont && msg[0] == '@') { /* a control message */
    if (strcmp(msg + 1, "on") == 0)
      a->warn_on = 1;
    else if (strcmp(msg + 1, "off") == 0)
      a->warn_on = 0;
    return;
  }
  if (!a->warn_on)
    return;
  if (!a->warn_midline)
    fputs("Lua warning: ", stderr);
  fputs(msg, stderr);
  a->warn_midline = tocont;
  if (!tocont)
    fputs("\n", stderr);
  fflush(stderr);
}

lua_State *tide__newstate(tide_arena *a) {
  lua_State *L;
  if (a == NULL)
    return luaL_newstate();
  L = lua_newstate(tide__arena_alloc, a);
  if (L) {
    lua_atpanic(L, panic);
    lua_setwarnf(L, warnf, a);
  }
  return L;
}
