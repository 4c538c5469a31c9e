#!/usr/bin/python3
"""A small httpbin-like test server for the tide.http specs (stdlib only).

Usage: /usr/bin/python3 spec/servers/httpbin.py PORTFILE [CLEANUP_DIR]

Binds 127.0.0.1 with two ephemeral ports:
  * the main port, which serves every endpoint below and whose TCP
    connections are counted in /stats;
  * a control port, serving the same endpoints but whose connections are NOT
    counted (so a spec can read /stats without disturbing the numbers).
When both listen, writes "MAINPORT CONTROLPORT PID\n" to PORTFILE (atomically:
tmp file then rename). Exits as soon as its stdin reaches EOF, so it never
outlives the process that started it with a pipe on its stdin.

HTTP/1.1 with keep-alive, one daemon thread per connection. Every request
body is read (Content-Length or chunked) before the endpoint runs, so
keep-alive stays in sync for all endpoints. HEAD gets the headers of GET and
no body. Responses are JSON with Content-Length unless said otherwise.

Endpoints (see ENDPOINTS in spec/servers.lua's header for the full shapes):
  /get, /anything[/...] (any method)   echo, see echo()
  /status/<code>                       that status, body {"status": code}
  /redirect/<n>[?absolute=1]           302 -> /redirect/<n-1> ... -> /get
  /redirect-to?url=U[&status=302]      <status> with Location: U (any method)
  /loop                                302 -> /loop forever
  /delay/<seconds>                     sleeps (float), then echo + "delay"
  /bytes/<n>                           n bytes of pattern(), Content-Length
  /stream-bytes/<n>?chunk=&delay=      n bytes of pattern(), chunked
  /reset[?after=&delay=]               Content-Length 100000, part, then RST
  /close                               closes the connection, sends nothing
  /folded, /folded-first               obs-folded header lines (later, first)
  /hang                                sends nothing until the client goes
  /cookies/set?name=value...           Set-Cookie for each, JSON {"cookies"}
  /cookies/delete?name...              Set-Cookie name=; Max-Age=0
  /cookies                             {"cookies": {name: value}} from Cookie
  /headers-repeat                      2 x Set-Cookie, 2 x X-Multi
  /gzip, /deflate                      compressed echo + "gzipped"/"deflated"
  /stats, /stats/reset                 TCP connection counters (main port)

pattern(n): byte i (0-based) is i % 256 (binary, includes NUL).
"""

import os
import sys

# Close every fd inherited from the parent (beyond stdio) before anything
# else: tide's sockets (e.g. an HTTP client's pooled connections) must not be
# held open by this process, or closing them in tide would not reach the peer.
try:
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
except (ValueError, OSError):
    os.closerange(3, 4096)

import base64
import resource
import gzip
import http.server
import json
import select
import shutil
import socket
import struct
import threading
import time
import urllib.parse
import zlib

LOG = os.environ.get("HTTPBIN_LOG") == "1"
MAX_SLEEP = 300.0  # an upper bound for /delay and /hang


def pattern(n):
    block = bytes(range(256))
    return (block * (n // 256 + 1))[:n]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.total = 0
        self.open = 0
        self.max_open = 0
        self.requests = 0

    def opened(self):
        with self.lock:
            self.total += 1
            self.open += 1
            self.max_open = max(self.max_open, self.open)

    def closed(self):
        with self.lock:
            self.open -= 1

    def request(self):
        with self.lock:
            self.requests += 1

    def snapshot(self):
        with self.lock:
            return {
                "connections_total": self.total,
                "connections_open": self.open,
                "max_connections_open": self.max_open,
                "requests_total": self.requests,
            }

    def reset(self):
        with self.lock:
            self.total = 0
            self.requests = 0
            self.max_open = self.open


STATS = Stats()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # specs open 1,000 connections at once: with a short backlog the SYNs
    # past it wait for the kernel's retransmits (1 s, 3 s, 7 s...)
    request_queue_size = 1024

    def __init__(self, addr, handler, counted):
        self.counted = counted
        super().__init__(addr, handler)

    # Called in the accepting thread for each accepted connection; the
    # matching shutdown_request runs exactly once when the connection ends.
    def process_request(self, request, client_address):
        if self.counted:
            STATS.opened()
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        try:
            super().shutdown_request(request)
        finally:
            if self.counted:
                STATS.closed()

    def handle_error(self, request, client_address):
        if LOG:
            super().handle_error(request, client_address)


class BadRequest(Exception):
    pass


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "httpbin.py"
    sys_version = ""

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        if LOG:
            super().log_message(fmt, *args)

    # ---- request plumbing -------------------------------------------------

    def handle_one_request(self):
        # Like the base class, but every method goes through dispatch().
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self.dispatch()
            self.wfile.flush()
        except (socket.timeout, ConnectionError, BrokenPipeError, OSError):
            self.close_connection = True

    def read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise BadRequest("eof in chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers up to the empty line
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)  # CRLF after the chunk
            return b"".join(parts)
        n = self.headers.get("Content-Length")
        if n is None:
            return b""
        n = int(n)
        data = self.rfile.read(n) if n > 0 else b""
        if len(data) < n:
            raise BadRequest("eof in body")
        return data

    def dispatch(self):
        if self.server.counted:
            STATS.request()
        try:
            self.body = self.read_body()
        except (BadRequest, ValueError):
            self.close_connection = True
            self.send_json({"error": "bad request body"}, 400)
            return
        split = urllib.parse.urlsplit(self.path)
        self.url_path = split.path
        self.query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        parts = [p for p in split.path.split("/") if p]
        name = parts[0] if parts else ""
        route = ROUTES.get(name)
        if route is None:
            self.send_json({"error": "not found", "path": split.path}, 404)
            return
        try:
            route(self, parts[1:])
        except (ValueError, IndexError, KeyError) as e:
            self.send_json({"error": "bad request: %s" % e}, 400)

    def q(self, name, default=None):
        v = self.query.get(name)
        return v[0] if v else default

    # ---- responses --------------------------------------------------------

    def send(self, status, body=b"", ctype="application/json", headers=()):
        self.send_response(status)
        if body is not None and status not in (204, 304) and status >= 200:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and body and status not in (204, 304):
            self.wfile.write(body)

    def send_json(self, obj, status=200, headers=()):
        body = (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
        self.send(status, body, "application/json", headers)

    def echo(self):
        """{method, path, target, query = {name: [values]}, headers =
        {lowercased name: value (repeats joined by ", ")}, raw_headers =
        [[name, value], ...] as received, body (utf-8 text, or base64 with
        body_encoding = "base64"), body_length, json (parsed or null),
        form ({name: [values]} for urlencoded bodies, else null), http_version}
        """
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = headers[k] + ", " + v if k in headers else v
        body = self.body
        try:
            text, enc = body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, enc = base64.b64encode(body).decode(), "base64"
        ctype = headers.get("content-type", "").lower()
        parsed = None
        if "json" in ctype and body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        form = None
        if "application/x-www-form-urlencoded" in ctype:
            form = urllib.parse.parse_qs(body.decode("latin-1"), keep_blank_values=True)
        return {
            "method": self.command,
            "path": self.url_path,
            "target": self.path,
            "http_version": self.request_version,
            "query": self.query,
            "headers": headers,
            "raw_headers": [[k, v] for k, v in self.headers.items()],
            "body": text,
            "body_encoding": enc,
            "body_length": len(body),
            "json": parsed,
            "form": form,
        }

    def client_gone(self, seconds):
        """Waits up to seconds; True as soon as the client closed (EOF/reset).
        Data the client pipelines meanwhile is left unread."""
        deadline = time.monotonic() + min(seconds, MAX_SLEEP)
        sock = self.connection
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                # poll, not select: select fails on fds over 1024 (FD_SETSIZE)
                p = select.poll()
                p.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
                # the whole wait in one poll: 1,000 hanging threads waking
                # every few ms starve the accepting thread of the GIL
                if p.poll(left * 1000):
                    if not sock.recv(1, socket.MSG_PEEK):
                        return True
                    time.sleep(min(left, 0.05))  # pipelined data: just wait
            except (OSError, ValueError):
                return True

    # ---- endpoints --------------------------------------------------------

    def ep_get(self, rest):
        self.send_json(self.echo())

    def ep_status(self, rest):
        code = int(rest[0])
        if code < 200 or code > 599:
            raise ValueError("status out of range")
        if code in (204, 304):
            self.send(code, None)
        else:
            self.send_json({"status": code}, code)

    def ep_redirect(self, rest):
        n = int(rest[0])
        target = "/get" if n <= 1 else "/redirect/%d" % (n - 1)
        if self.q("absolute") and target != "/get":
            target += "?absolute=1"
        if self.q("absolute"):
            target = "http://%s%s" % (self.headers.get("Host", "127.0.0.1"), target)
        self.send_json({"redirect": target}, 302, [("Location", target)])

    def ep_redirect_to(self, rest):
        url = self.q("url")
        if url is None:
            raise ValueError("url missing")
        status = int(self.q("status", "302"))
        self.send_json({"redirect": url}, status, [("Location", url)])

    def ep_loop(self, rest):
        self.send_json({"redirect": "/loop"}, 302, [("Location", "/loop")])

    def ep_delay(self, rest):
        seconds = float(rest[0])
        if self.client_gone(seconds):
            self.close_connection = True
            return
        r = self.echo()
        r["delay"] = seconds
        self.send_json(r)

    def ep_bytes(self, rest):
        n = int(rest[0])
        self.send(200, pattern(n), "application/octet-stream")

    def ep_stream_bytes(self, rest):
        n = int(rest[0])
        chunk = max(1, int(self.q("chunk", "1024")))
        delay = float(self.q("delay", "0"))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        data = pattern(n)
        for i in range(0, n, chunk):
            if i and delay > 0 and self.client_gone(delay):
                self.close_connection = True
                return
            part = data[i:i + chunk]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def ep_reset(self, rest):
        after = int(self.q("after", "1000"))
        delay = float(self.q("delay", "0.1"))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(pattern(after))
        self.wfile.flush()
        time.sleep(delay)  # let the client take the headers and the part
        self.abort_connection()

    def abort_connection(self):
        """Closes the socket with SO_LINGER 0: the peer gets a RST."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # detach: the fd is closed now even though rfile/wfile still
            # reference the socket object; they see a closed socket after.
            os.close(sock.detach())
        except OSError:
            pass

    def ep_close(self, rest):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def ep_folded_first(self, rest):
        """A response whose first header line is folded (starts with a space)."""
        self.close_connection = True
        self.wfile.write(b"HTTP/1.1 200 OK\r\n X: 3\r\nContent-Length: 2\r\n\r\nok")

    def ep_folded(self, rest):
        """A response with obs-folded header lines (not the first)."""
        self.close_connection = True
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n  b: c\r\nX-Tab: 1\r\n\t2\r\n"
                         b"Content-Length: 2\r\n\r\nok")

    def ep_redirect_close(self, rest):
        """A 301 to a new URL each time, closing the connection after it."""
        self.close_connection = True
        self.wfile.write(b"HTTP/1.1 301 Moved\r\nLocation: /redirect-close/%d\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n" % time.monotonic_ns())

    def ep_hang(self, rest):
        self.client_gone(MAX_SLEEP)
        self.close_connection = True

    def ep_cookies(self, rest):
        sub = rest[0] if rest else ""
        if sub == "set":
            cookies = {k: v[-1] for k, v in self.query.items()}
            hdrs = [("Set-Cookie", "%s=%s; Path=/" % (k, v)) for k, v in cookies.items()]
            self.send_json({"cookies": cookies}, 200, hdrs)
        elif sub == "delete":
            hdrs = [("Set-Cookie", "%s=; Path=/; Max-Age=0" % k) for k in self.query]
            self.send_json({"deleted": sorted(self.query)}, 200, hdrs)
        elif sub == "":
            cookies = {}
            for h in self.headers.get_all("Cookie") or []:
                for part in h.split(";"):
                    part = part.strip()
                    if part:
                        k, _, v = part.partition("=")
                        cookies[k.strip()] = v.strip()
            self.send_json({"cookies": cookies})
        else:
            self.send_json({"error": "not found"}, 404)

    def ep_headers_repeat(self, rest):
        self.send_json({"repeated": ["Set-Cookie", "X-Multi"]}, 200, [
            ("Set-Cookie", "a=1; Path=/"),
            ("Set-Cookie", "b=2; Path=/"),
            ("X-Multi", "one"),
            ("X-Multi", "two"),
        ])

    def ep_gzip(self, rest):
        r = self.echo()
        r["gzipped"] = True
        body = gzip.compress((json.dumps(r, indent=1, sort_keys=True) + "\n").encode())
        self.send(200, body, "application/json", [("Content-Encoding", "gzip")])

    def ep_deflate(self, rest):
        r = self.echo()
        r["deflated"] = True
        body = zlib.compress((json.dumps(r, indent=1, sort_keys=True) + "\n").encode())
        self.send(200, body, "application/json", [("Content-Encoding", "deflate")])

    def ep_stats(self, rest):
        if rest and rest[0] == "reset":
            STATS.reset()
        self.send_json(STATS.snapshot())


ROUTES = {
    "get": Handler.ep_get,
    "anything": Handler.ep_get,
    "status": Handler.ep_status,
    "redirect": Handler.ep_redirect,
    "redirect-to": Handler.ep_redirect_to,
    "loop": Handler.ep_loop,
    "delay": Handler.ep_delay,
    "bytes": Handler.ep_bytes,
    "stream-bytes": Handler.ep_stream_bytes,
    "reset": Handler.ep_reset,
    "close": Handler.ep_close,
    "hang": Handler.ep_hang,
    "folded-first": Handler.ep_folded_first,
    "folded": Handler.ep_folded,
    "redirect-close": Handler.ep_redirect_close,
    "cookies": Handler.ep_cookies,
    "headers-repeat": Handler.ep_headers_repeat,
    "gzip": Handler.ep_gzip,
    "deflate": Handler.ep_deflate,
    "stats": Handler.ep_stats,
}


def watch_stdin(cleanup_dir):
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    if cleanup_dir:
        shutil.rmtree(cleanup_dir, ignore_errors=True)
    os._exit(0)


def main():
    if len(sys.argv) not in (2, 3):
        sys.stderr.write("usage: httpbin.py PORTFILE [CLEANUP_DIR]\n")
        sys.exit(2)
    cleanup_dir = sys.argv[2] if len(sys.argv) == 3 else None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 1,000+ clients
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    threading.Thread(target=watch_stdin, args=(cleanup_dir,), daemon=True).start()
    main_srv = Server(("127.0.0.1", 0), Handler, counted=True)
    ctl_srv = Server(("127.0.0.1", 0), Handler, counted=False)
    for s in (main_srv, ctl_srv):
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True).start()
    portfile = sys.argv[1]
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %d %d\n" % (main_srv.server_address[1], ctl_srv.server_address[1],
                                os.getpid()))
    os.rename(tmp, portfile)
    threading.Event().wait()  # forever; watch_stdin ends the process


if __name__ == "__main__":
    main()
