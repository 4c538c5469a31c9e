/*
 * fs.c: "tide.fs", files without blocking. Owns the "tide.File" type and
 * the filesystem primitives: each call is a libuv fs request (a read or a
 * write: as many as it takes), run in libuv's thread pool while the calling
 * task is suspended (tide_suspend) and completed from the request's
 * callback on the task's loop. The calls made of several requests
 * (read_file, write_file and its atomic form, append_file, mkdir with
 * parents, recursive remove, list_dir) are in lua/tide/fs_lua.lua, which
 * this module loads with the primitives.
 *
 * A cancelled call cannot stop a request the pool has started: the request
 * is abandoned and its callback only cleans up (frees its buffers, closes a
 * file opened meanwhile, removes one that an exclusive open made). A File
 * is a box pointing at a malloc'd struct, so a request in flight never sees
 * it freed: closing or collecting a File while a request uses it hands the
 * fd to that request to close. One request at a time works on a File: a
 * call made while an abandoned one still runs waits for it (the File's
 * `next`), then starts; a call made while another task's call is under way
 * raises "busy" (they would race for the position).
 *
 * Errors are tide errors of kind "fs": "<op> <path>: <reason> (<ENAME>)",
 * fields code (the errno name, e.g. "ENOENT") and path.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define FILE_MT "tide.File"
#define CHUNK (64 * 1024) /* first read buffer; it doubles as needed */
#define MAXIO (1u << 30)  /* at most this much per read or write request */

enum { FS_AGAIN = -1, FS_FAILED = -2 }; /* besides a count of results */

typedef struct fsreq fsreq;

typedef struct file {
  uv_file fd;
  int64_t pos;  /* where the next read or write goes */
  int append;   /* opened with "a": writes go to the end */
  int stream;   /* a pipe, FIFO, socket or device: no offsets (ESPIPE) */
  fsreq *cur;   /* the request in flight on fd, or NULL */
  fsreq *next;  /* a call waiting for cur, abandoned, to end; or NULL */
  int detached; /* let go of while cur: that request closes fd, frees this */
  char path[];  /* for messages */
} file;

typedef struct file_box {
  file *f; /* NULL once closed */
} file_box;

/* Called when a request of a waiting task is done: pushes its results and
 * returns their count, or pushes an error (FS_FAILED), or starts the next
 * request of the call (FS_AGAIN). */
typedef int (*fs_then)(fsreq *r, lua_State *L);
/* Submits the request of a File method (returns the libuv result). */
typedef int (*fs_submit)(fsreq *r);

struct fsreq {
  uv_fs_t req;      /* first: the callback's uv_fs_t * is the fsreq */
  tide_pending *p;  /* NULL once the task stopped waiting */
  tide_sched *s;
  fs_then then;
  fs_submit submit; /* File methods: the first request */
  const char *op;   /* for messages */
  file *f;          /* the File a method works on (its cur or next) */
  int ref;          /* registry ref of the File box (write returns it) */
  int flags;        /* open: the flags */
  char *buf;        /* read: what was read; write: the data */
  size_t len, size; /* bytes done; size of buf */
  size_t want;      /* read: at most this many bytes */
  int64_t off;      /* seek "end": offset from the end */
  char *to;         /* rename: the second path */
  char path[];
};

/* ---- errors ---------------------------------------------------------- */

/* [-0, +1, m] Pushes the "fs" error for libuv error rc. */
static void push_err(lua_State *L, const char *op, const char *path,
                     const char *to, int rc) {
  if (to)
    tide__err_push(L, "fs", "%s %s -> %s: %s (%s)", op, path, to,
                   uv_strerror(rc), uv_err_name(rc));
  else
    tide__err_push(L, "fs", "%s %s: %s (%s)", op, path, uv_strerror(rc),
                   uv_err_name(rc));
  lua_pushstring(L, uv_err_name(rc));
  lua_setfield(L, -2, "code");
  lua_pushstring(L, path);
  lua_setfield(L, -2, "path");
}

static int fail(fsreq *r, lua_State *L, int rc) {
  push_err(L, r->op, r->path, r->to, rc);
  return FS_FAILED;
}

/* ---- requests nobody waits for --------------------------------------- */

static void on_forgotten(uv_fs_t *req) {
  uv_fs_req_cleanup(req);
  free(req);
}

/* Closes fd without waiting: a request nobody awaits on loop, or close(2)
 * at once when no loop runs any more (the Lua state is closing). */
static void close_fd(uv_loop_t *loop, uv_file fd) {
  uv_fs_t *req = loop ? malloc(sizeof(*req)) : NULL;
  if (req && uv_fs_close(loop, req, fd, on_forgotten) == 0)
    return;
  free(req);
  close(fd);
}

/* Removes the file made by an exclusive open whose caller left: it never
 * saw the file, and nobody else could have opened that name. */
static void unlink_made(uv_loop_t *loop, const char *path) {
  uv_fs_t *req = malloc(sizeof(*req));
  if (req && uv_fs_unlink(loop, req, path, on_forgotten) != 0)
    free(req);
}

/* The loop of the running task, or of the innermost run, or NULL. */
static uv_loop_t *live_loop(lua_State *L) {
  tide_runtime *rt = tide__rt(L);
  if (rt->current)
    return rt->current->s->loop;
  return rt->sched ? rt->sched->loop : NULL;
}

/* ---- requests -------------------------------------------------------- */

static void req_free(fsreq *r, lua_State *L) {
  file *f = r->f;
  if (f && f->cur == r) {
    f->cur = NULL;
    if (f->detached) {
      close_fd(r->req.loop, f->fd);
      free(f);
    }
  }
  if (L && r->ref != LUA_NOREF)
    luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
  uv_fs_req_cleanup(&r->req);
  free(r->buf);
  free(r);
}

static void start_next(file *f);

static void on_fs(uv_fs_t *req) {
  fsreq *r = (fsreq *)req;
  tide_pending *p = r->p;
  lua_State *L;
  int n;
  if (p == NULL) { /* the task left: clean up only */
    file *f = r->f && r->f->next ? r->f : NULL; /* not detached, then */
    if (req->fs_type == UV_FS_OPEN && req->result >= 0) {
      close_fd(req->loop, (uv_file)req->result);
      if (r->flags & UV_FS_O_EXCL)
        unlink_made(req->loop, r->path);
    }
    req_free(r, NULL);
    if (f)
      start_next(f);
    return;
  }
  L = tide_pending_L(p);
  n = r->then(r, L);
  if (n == FS_AGAIN)
    return;
  r->s->io_pending--;
  req_free(r, L);
  if (n == FS_FAILED)
    tide_fail(p);
  else
    tide_complete(p, n);
}

/* The call that waited on f for an abandoned request starts. */
static void start_next(file *f) {
  fsreq *r = f->next;
  int rc;
  f->next = NULL;
  f->cur = r;
  rc = r->submit(r);
  if (rc < 0) {
    tide_pending *p = r->p;
    lua_State *L = tide_pending_L(p);
    fail(r, L, rc);
    r->s->io_pending--;
    req_free(r, L);
    tide_fail(p);
  }
}

static void on_cancel(tide_pending *p, void *data) {
  fsreq *r = data;
  if (r->ref != LUA_NOREF)
    luaL_unref(tide_pending_L(p), LUA_REGISTRYINDEX, r->ref);
  r->ref = LUA_NOREF;
  r->p = NULL;
  r->s->io_pending--;
  if (r->f && r->f->next == r) { /* never started: drop it */
    r->f->next = NULL;
    req_free(r, NULL);
  } else if (r->req.fs_type != UV_FS_CLOSE) { /* a close must run */
    uv_cancel((uv_req_t *)&r->req);
  }
}

/* Starts the next request of a call from its then (rc: its submission). */
static int again(fsreq *r, lua_State *L, int rc) {
  return rc < 0 ? fail(r, L, rc) : FS_AGAIN;
}

/* [-0, +0, e] A request of the running task (raises outside a task). */
static fsreq *new_req(lua_State *L, const char *op, const char *path,
                      const char *to, fs_then then) {
  tide_task *t = tide__current(L);
  size_t n = strlen(path) + 1, m = to ? strlen(to) + 1 : 0;
  fsreq *r = calloc(1, sizeof(*r) + n + m);
  if (r == NULL) {
    luaL_error(L, "not enough memory");
    return NULL;
  }
  memcpy(r->path, path, n);
  if (to)
    r->to = memcpy(r->path + n, to, m);
  r->s = t->s;
  r->op = op;
  r->then = then;
  r->ref = LUA_NOREF;
  return r;
}

/* Suspends the task until r is done; rc is the request's submission. Use
 * as the C function's return. */
static int start(lua_State *L, fsreq *r, int rc) {
  if (rc < 0) {
    push_err(L, r->op, r->path, r->to, rc);
    req_free(r, L);
    return lua_error(L);
  }
  r->s->io_pending++; /* a virtual clock waits for it */
  return tide_suspend(L, on_cancel, r, &r->p);
}

static const char *check_path(lua_State *L, int i) {
  size_t len;
  const char *path = luaL_checklstring(L, i, &len);
  luaL_argcheck(L, strlen(path) == len, i, "path contains a zero byte");
  return path;
}

static fsreq *path_req(lua_State *L, const char *op, fs_then then) {
  return new_req(L, op, check_path(L, 1), NULL, then);
}

/* ---- results --------------------------------------------------------- */

static int then_none(fsreq *r, lua_State *L) {
  return r->req.result < 0 ? fail(r, L, (int)r->req.result) : 0;
}

static const char *mode_type(uint64_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG: return "file";
    case S_IFDIR: return "directory";
    case S_IFLNK: return "link";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
    case S_IFCHR: return "char";
    case S_IFBLK: return "block";
    default: return "unknown";
  }
}

static const char *dirent_type(uv_dirent_type_t t) {
  switch (t) {
    case UV_DIRENT_FILE: return "file";
    case UV_DIRENT_DIR: return "directory";
    case UV_DIRENT_LINK: return "link";
    case UV_DIRENT_FIFO: return "fifo";
    case UV_DIRENT_SOCKET: return "socket";
    case UV_DIRENT_CHAR: return "char";
    case UV_DIRENT_BLOCK: return "block";
    default: return "unknown";
  }
}

static void set_time(lua_State *L, const char *name, uv_timespec_t ts) {
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  lua_setfield(L, -2, name);
}

static void set_int(lua_State *L, const char *name, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, name);
}

static int then_stat(fsreq *r, lua_State *L) {
  const uv_stat_t *st = &r->req.statbuf;
  if (r->req.result < 0)
    return fail(r, L, (int)r->req.result);
  lua_createtable(L, 0, 12);
  lua_pushstring(L, mode_type(st->st_mode));
  lua_setfield(L, -2, "type");
  set_int(L, "size", st->st_size);
  set_int(L, "mode", st->st_mode & 07777);
  set_time(L, "mtime", st->st_mtim);
  set_time(L, "atime", st->st_atim);
  set_time(L, "ctime", st->st_ctim);
  set_int(L, "uid", st->st_uid);
  set_int(L, "gid", st->st_gid);
  set_int(L, "nlink", st->st_nlink);
  set_int(L, "ino", st->st_ino);
  set_int(L, "dev", st->st_dev);
  return 1;
}

static int then_exists(fsreq *r, lua_State *L) {
  int rc = (int)r->req.result;
  /* a link loop, a path too long or one it may not look into does not
   * exist, as for Python's os.path.exists */
  if (rc < 0 && rc != UV_ENOENT && rc != UV_ENOTDIR && rc != UV_ELOOP &&
      rc != UV_EACCES && rc != UV_ENAMETOOLONG)
    return fail(r, L, rc);
  lua_pushboolean(L, rc >= 0);
  return 1;
}

static int then_scandir(fsreq *r, lua_State *L) {
  uv_dirent_t ent;
  int i = 0;
  if (r->req.result < 0)
    return fail(r, L, (int)r->req.result);
  lua_createtable(L, (int)r->req.result, 0);
  lua_createtable(L, (int)r->req.result, 0);
  while (uv_fs_scandir_next(&r->req, &ent) != UV_EOF) {
    lua_pushstring(L, ent.name);
    lua_rawseti(L, -3, ++i);
    lua_pushstring(L, dirent_type(ent.type));
    lua_rawseti(L, -2, i);
  }
  return 2;
}

/* ---- path functions (fs.stat, fs.exists...; the rest for fs_lua) ------ */

static int l_stat(lua_State *L) {
  fsreq *r = path_req(L, "stat", then_stat);
  return start(L, r, uv_fs_stat(r->s->loop, &r->req, r->path, on_fs));
}

static int l_lstat(lua_State *L) {
  fsreq *r = path_req(L, "lstat", then_stat);
  return start(L, r, uv_fs_lstat(r->s->loop, &r->req, r->path, on_fs));
}

static int l_exists(lua_State *L) {
  fsreq *r = path_req(L, "stat", then_exists);
  return start(L, r, uv_fs_stat(r->s->loop, &r->req, r->path, on_fs));
}

static int l_unlink(lua_State *L) {
  fsreq *r = path_req(L, "unlink", then_none);
  return start(L, r, uv_fs_unlink(r->s->loop, &r->req, r->path, on_fs));
}

static int l_rmdir(lua_State *L) {
  fsreq *r = path_req(L, "rmdir", then_none);
  return start(L, r, uv_fs_rmdir(r->s->loop, &r->req, r->path, on_fs));
}

static int l_scandir(lua_State *L) {
  fsreq *r = path_req(L, "scandir", then_scandir);
  return start(L, r, uv_fs_scandir(r->s->loop, &r->req, r->path, 0, on_fs));
}

static int check_perm(lua_State *L, int i, lua_Integer dflt) {
  lua_Integer perm = luaL_optinteger(L, i, dflt);
  luaL_argcheck(L, perm >= 0 && perm <= 07777, i, "permission bits expected");
  return (int)perm;
}

/* mkdir(path [, perm]): one directory (parents: fs_lua) */
static int l_mkdir(lua_State *L) {
  int perm = check_perm(L, 2, 0777);
  fsreq *r = path_req(L, "mkdir", then_none);
  return start(L, r, uv_fs_mkdir(r->s->loop, &r->req, r->path, perm, on_fs));
}

static int l_rename(lua_State *L) {
  const char *from = check_path(L, 1), *to = check_path(L, 2);
  fsreq *r = new_req(L, "rename", from, to, then_none);
  return start(L, r, uv_fs_rename(r->s->loop, &r->req, r->path, r->to, on_fs));
}

static int then_realpath(fsreq *r, lua_State *L) {
  if (r->req.result < 0)
    return fail(r, L, (int)r->req.result);
  lua_pushstring(L, r->req.ptr);
  return 1;
}

/* readlink(path) -> where the symbolic link points (then_realpath's shape:
 * a string in req.ptr) */
static int l_readlink(lua_State *L) {
  fsreq *r = path_req(L, "readlink", then_realpath);
  return start(L, r, uv_fs_readlink(r->s->loop, &r->req, r->path, on_fs));
}

/* realpath(path) -> the absolute path, symbolic links resolved */
static int l_realpath(lua_State *L) {
  fsreq *r = path_req(L, "realpath", then_realpath);
  return start(L, r, uv_fs_realpath(r->s->loop, &r->req, r->path, on_fs));
}

/* temp_name(path) -> a fresh name in path's directory, for an atomic
 * write: "<dir>/.<base>.<pid>-<n>.tmp" (fs_lua retries on EEXIST). */
static int l_temp_name(lua_State *L) {
  static unsigned counter;
  const char *path = check_path(L, 1), *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  char suffix[64];
  int n = snprintf(suffix, sizeof suffix, ".%d-%u%04x.tmp", (int)uv_os_getpid(),
                   ++counter, (unsigned)(uv_hrtime() & 0xffff));
  size_t keep = strlen(base);
  if (keep + 1 + (size_t)n > 255) /* NAME_MAX: a long base is cut short */
    keep = 255 - 1 - (size_t)n;
  lua_pushlstring(L, path, slash ? (size_t)(slash - path) + 1 : 0);
  lua_pushliteral(L, ".");
  lua_pushlstring(L, base, keep);
  lua_pushstring(L, suffix);
  lua_concat(L, 4);
  return 1;
}

/* ---- files ----------------------------------------------------------- */

/* Flags for an io.open mode: r, w or a, then any of "+" (read and write),
 * "b" (ignored) and, after w, "x" (fail if the file exists; C11). */
static int open_flags(const char *m) {
  int create = 0, plus = 0, excl = 0;
  switch (*m++) {
    case 'r': break;
    case 'w': create = UV_FS_O_CREAT | UV_FS_O_TRUNC; break;
    case 'a': create = UV_FS_O_CREAT | UV_FS_O_APPEND; break;
    default: return -1;
  }
  for (; *m; m++) {
    if (*m == '+' && !plus)
      plus = UV_FS_O_RDWR;
    else if (*m == 'x' && !excl && (create & UV_FS_O_TRUNC))
      excl = UV_FS_O_EXCL;
    else if (*m != 'b')
      return -1;
  }
  return create | excl |
         (plus ? plus : create ? UV_FS_O_WRONLY : UV_FS_O_RDONLY);
}

static int then_open(fsreq *r, lua_State *L) {
  uv_file fd = (uv_file)r->req.result;
  size_t n = strlen(r->path) + 1;
  file_box *b;
  file *f;
  if (fd < 0)
    return fail(r, L, fd);
  b = lua_newuserdatauv(L, sizeof(*b), 0);
  b->f = NULL;
  luaL_setmetatable(L, FILE_MT);
  f = malloc(sizeof(*f) + n);
  if (f == NULL) {
    lua_pop(L, 1);
    close_fd(r->req.loop, fd);
    return fail(r, L, UV_ENOMEM);
  }
  f->fd = fd;
  f->pos = 0;
  f->append = (r->flags & UV_FS_O_APPEND) != 0;
  {
    struct stat st;
    f->stream = fstat(fd, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode);
  }
  f->cur = f->next = NULL;
  f->detached = 0;
  memcpy(f->path, r->path, n);
  b->f = f;
  return 1;
}

/* open(path [, mode [, perm]]) -> File; mode as io.open's (default "r"),
 * perm for a file it creates (default 0666, less the umask) */
static int l_open(lua_State *L) {
  const char *path = check_path(L, 1);
  int flags = open_flags(luaL_optstring(L, 2, "r"));
  int perm = check_perm(L, 3, 0666);
  fsreq *r;
  luaL_argcheck(L, flags >= 0, 2, "invalid mode");
  r = new_req(L, "open", path, NULL, then_open);
  r->flags = flags;
  return start(L, r, uv_fs_open(r->s->loop, &r->req, r->path, flags, perm,
                                on_fs));
}

/* Raises unless f is free for a call: nothing in flight but, maybe, an
 * abandoned request (the call then waits for it: start_file). */
static void check_idle(lua_State *L, file *f) {
  if (f->next || (f->cur && f->cur->p))
    tide__raise_kind_at_user(L, "busy", "file %s is busy: a call on it from "
                             "another task has not finished", f->path);
}

static file *check_file(lua_State *L) {
  file_box *b = luaL_checkudata(L, 1, FILE_MT);
  if (b->f == NULL)
    tide__err_raise(L, "closed", "attempt to use a closed file");
  check_idle(L, b->f);
  return b->f;
}

/* A request of a File method; start_file submits it. */
static fsreq *file_req(lua_State *L, file *f, const char *op, fs_then then,
                       fs_submit submit) {
  fsreq *r = new_req(L, op, f->path, NULL, then);
  r->submit = submit;
  return r;
}

/* Submits r on f, or, while an abandoned request still works on f, makes
 * it f's next: it starts when that one ends. Use as the C function's
 * return. */
static int start_file(lua_State *L, file *f, fsreq *r) {
  r->f = f;
  if (f->cur) {
    f->next = r;
    r->s->io_pending++;
    return tide_suspend(L, on_cancel, r, &r->p);
  }
  f->cur = r;
  return start(L, r, r->submit(r));
}

static int submit_fstat(fsreq *r) {
  return uv_fs_fstat(r->s->loop, &r->req, r->f->fd, on_fs);
}

static int submit_fsync(fsreq *r) {
  return uv_fs_fsync(r->s->loop, &r->req, r->f->fd, on_fs);
}

/* pos + off, or -1 past the range of an offset */
static int64_t add_pos(int64_t pos, int64_t off) {
  if ((off > 0 && pos > INT64_MAX - off) || pos + off < 0)
    return -1;
  return pos + off;
}

/* Reads into buf[len..size) at the file's position plus len. */
static int submit_read(fsreq *r) {
  size_t n = r->size - r->len;
  uv_buf_t b = uv_buf_init(r->buf + r->len, (unsigned)(n < MAXIO ? n : MAXIO));
  return uv_fs_read(r->s->loop, &r->req, r->f->fd, &b, 1,
                    r->f->stream ? -1 : r->f->pos + (int64_t)r->len, on_fs);
}

static int then_read(fsreq *r, lua_State *L) {
  ssize_t n = r->req.result;
  if (n < 0)
    return fail(r, L, (int)n);
  if (r->want == 0) { /* read(0): a byte was there, or the end */
    if (n > 0)
      lua_pushliteral(L, "");
    else
      lua_pushnil(L);
    return 1;
  }
  r->len += (size_t)n;
  if (n > 0 && r->len < r->want) { /* more wanted and maybe more there */
    if (r->len == r->size) {
      size_t size = r->size <= r->want / 2 ? r->size * 2 : r->want;
      char *buf = realloc(r->buf, size);
      if (buf == NULL)
        return fail(r, L, UV_ENOMEM);
      r->buf = buf;
      r->size = size;
    }
    uv_fs_req_cleanup(&r->req);
    return again(r, L, submit_read(r));
  }
  r->f->pos += (int64_t)r->len;
  if (r->len == 0)
    lua_pushnil(L); /* at the end */
  else
    lua_pushlstring(L, r->buf, r->len);
  return 1;
}

/* file:read([n]) -> up to n bytes; without n, the rest; nil at the end
 * either way (so `while f:read() do` ends). read(0) is "", or nil at the
 * end, like io's: it reads one byte to tell, and keeps the position. */
static int f_read(lua_State *L) {
  file *f = check_file(L);
  size_t want = SIZE_MAX;
  fsreq *r;
  if (!lua_isnoneornil(L, 2)) {
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0, 2, "non-negative byte count expected");
    want = (size_t)n;
  }
  r = file_req(L, f, "read", then_read, submit_read);
  r->want = want;
  r->size = want == 0 ? 1 : want < CHUNK ? want : CHUNK;
  r->buf = malloc(r->size);
  if (r->buf == NULL) {
    req_free(r, L);
    return luaL_error(L, "not enough memory");
  }
  return start_file(L, f, r);
}

/* After an fstat: pos = size + off. Seek returns pos; a write (in append
 * mode, which fstats to learn where it ended) returns the File. */
static int then_at_end(fsreq *r, lua_State *L) {
  int64_t pos;
  if (r->req.result < 0)
    return fail(r, L, (int)r->req.result);
  pos = add_pos((int64_t)r->req.statbuf.st_size, r->off);
  if (pos < 0)
    return fail(r, L, UV_EINVAL);
  r->f->pos = pos;
  if (r->ref != LUA_NOREF)
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
  else
    lua_pushinteger(L, pos);
  return 1;
}

static int submit_write(fsreq *r) {
  size_t n = r->size - r->len;
  uv_buf_t b = uv_buf_init(r->buf + r->len, (unsigned)(n < MAXIO ? n : MAXIO));
  return uv_fs_write(r->s->loop, &r->req, r->f->fd, &b, 1,
                     r->f->append || r->f->stream ? -1 : r->f->pos + (int64_t)r->len,
                     on_fs);
}

static int then_write(fsreq *r, lua_State *L) {
  ssize_t n = r->req.result;
  if (n < 0)
    return fail(r, L, (int)n);
  r->len += (size_t)n;
  uv_fs_req_cleanup(&r->req);
  if (r->len < r->size) /* a short write: the rest */
    return again(r, L, n > 0 ? submit_write(r) : UV_EIO);
  if (r->f->append) {
    r->then = then_at_end;
    return again(r, L, submit_fstat(r));
  }
  r->f->pos += (int64_t)r->len;
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
  return 1;
}

/* file:write(...) -> the file; writes its arguments (strings, or numbers
 * as io.write writes them: a float with "%.14g", 3.0 as "3") in order, in
 * one request */
static int f_write(lua_State *L) {
  file *f = check_file(L);
  int i, n = lua_gettop(L);
  size_t len = 0, l;
  fsreq *r;
  for (i = 2; i <= n; i++) {
    if (lua_type(L, i) == LUA_TNUMBER && !lua_isinteger(L, i)) {
      char num[64];
      snprintf(num, sizeof(num), LUA_NUMBER_FMT, (LUAI_UACNUMBER)lua_tonumber(L, i));
      lua_pushstring(L, num);
      lua_replace(L, i);
    }
    luaL_checklstring(L, i, &l);
    len += l;
  }
  if (len == 0) {
    lua_settop(L, 1);
    return 1;
  }
  r = file_req(L, f, "write", then_write, submit_write);
  r->buf = malloc(len); /* the pool may read it after a cancel */
  if (r->buf == NULL) {
    req_free(r, L);
    return luaL_error(L, "not enough memory");
  }
  for (i = 2; i <= n; i++) {
    const char *s = lua_tolstring(L, i, &l);
    memcpy(r->buf + r->size, s, l);
    r->size += l;
  }
  lua_settop(L, 1);
  lua_pushvalue(L, 1);
  r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return start_file(L, f, r);
}

/* file:seek([whence [, offset]]) -> the new position; whence "set", "cur"
 * (default) or "end", like io's seek */
static int f_seek(lua_State *L) {
  static const char *const whences[] = {"set", "cur", "end", NULL};
  file *f = check_file(L);
  int whence = luaL_checkoption(L, 2, "cur", whences);
  lua_Integer off = luaL_optinteger(L, 3, 0);
  int64_t pos;
  if (whence == 2) {
    fsreq *r = file_req(L, f, "seek", then_at_end, submit_fstat);
    r->off = off;
    return start_file(L, f, r);
  }
  pos = add_pos(whence == 0 ? 0 : f->pos, off);
  if (pos < 0) {
    push_err(L, "seek", f->path, NULL, UV_EINVAL);
    return lua_error(L);
  }
  f->pos = pos;
  lua_pushinteger(L, pos);
  return 1;
}

static int submit_fchmod(fsreq *r) {
  return uv_fs_fchmod(r->s->loop, &r->req, r->f->fd, r->flags, on_fs);
}

/* fchmod(file, perm): sets an open file's permission bits (for fs_lua) */
static int l_fchmod(lua_State *L) {
  file *f = check_file(L);
  int perm = check_perm(L, 2, 0);
  fsreq *r = file_req(L, f, "chmod", then_none, submit_fchmod);
  r->flags = perm;
  return start_file(L, f, r);
}

/* file:sync(): flushes the file's data and metadata to the disk (fsync) */
static int f_sync(lua_State *L) {
  file *f = check_file(L);
  fsreq *r = file_req(L, f, "fsync", then_none, submit_fsync);
  return start_file(L, f, r);
}

/* __gc and __close: closes without waiting; a file in use by a request is
 * closed when that request ends. */
static int f_gc(lua_State *L) {
  file_box *b = luaL_checkudata(L, 1, FILE_MT);
  file *f = b->f;
  if (f) {
    b->f = NULL;
    if (f->cur) {
      f->detached = 1;
    } else {
      close_fd(live_loop(L), f->fd);
      free(f);
    }
  }
  return 0;
}

/* file:close(): waits for the close and raises its error; a file still in
 * use by a request (of a cancelled call) is closed when that ends. */
/* f:close() -> true, as Lua's file:close() */
static int then_true(fsreq *r, lua_State *L) {
  if (r->req.result < 0)
    return fail(r, L, (int)r->req.result);
  lua_pushboolean(L, 1);
  return 1;
}

static int f_close(lua_State *L) {
  file_box *b = luaL_checkudata(L, 1, FILE_MT);
  file *f = b->f;
  fsreq *r;
  uv_file fd;
  if (f == NULL)
    return tide__err_raise(L, "closed", "attempt to use a closed file");
  if (f->next) /* another task's call waits for the file */
    check_idle(L, f);
  if (f->cur) {
    f_gc(L);
    lua_pushboolean(L, 1);
    return 1;
  }
  r = new_req(L, "close", f->path, NULL, then_true);
  fd = f->fd;
  b->f = NULL;
  free(f);
  return start(L, r, uv_fs_close(r->s->loop, &r->req, fd, on_fs));
}

static int f_tostring(lua_State *L) {
  file_box *b = luaL_checkudata(L, 1, FILE_MT);
  if (b->f)
    lua_pushfstring(L, "tide.File (%s)", b->f->path);
  else
    lua_pushliteral(L, "tide.File (closed)");
  return 1;
}

/* ---- module ---------------------------------------------------------- */

static const luaL_Reg file_methods[] = {
  {"read", f_read}, {"write", f_write}, {"seek", f_seek}, {"sync", f_sync},
  {"close", f_close}, {NULL, NULL}};

/* The primitives; fs_lua.lua makes the module of them. */
static const luaL_Reg fs_funcs[] = {
  {"open", l_open}, {"stat", l_stat}, {"lstat", l_lstat},
  {"exists", l_exists}, {"rename", l_rename}, {"mkdir", l_mkdir},
  {"rmdir", l_rmdir}, {"unlink", l_unlink}, {"scandir", l_scandir},
  {"temp_name", l_temp_name}, {"realpath", l_realpath}, {"readlink", l_readlink},
  {"fchmod", l_fchmod}, {NULL, NULL}};

int luaopen_tide_fs(lua_State *L) {
  const tide_embedded *m = tide__lua_modules;
  tide_open(L);
  tide__new_type(L, FILE_MT, file_methods, f_gc, NULL, f_tostring);
  luaL_getmetatable(L, FILE_MT); /* a File a cancel drops closes at once */
  lua_pushcfunction(L, f_gc);
  lua_setfield(L, -2, TIDE_DROP_FIELD);
  lua_pop(L, 1);
  while (m->name && strcmp(m->name, "tide.fs_lua") != 0)
    m++;
  if (m->name == NULL)
    return luaL_error(L, "tide.fs: lua/tide/fs_lua.lua is not embedded");
  if (luaL_loadbuffer(L, m->src, m->len, m->chunkname) != LUA_OK)
    return lua_error(L);
  luaL_newlib(L, fs_funcs);
  lua_call(L, 1, 1);
  return 1;
}
