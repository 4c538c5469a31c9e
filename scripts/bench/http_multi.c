/*
 * http_multi.c: N keep-alive GETs of URL with C concurrent requests, straight on
 * libcurl's multi interface. The ceiling for any client built on libcurl: C easy
 * handles, each re-added as soon as its request completes, so the multi's connection
 * cache hands it back its connection.
 *
 *   cc -O2 http_multi.c $(pkg-config --cflags --libs libcurl) -o http_multi
 *   ./http_multi URL [N] [C] [perform|socket] [plain|tide-headers]
 *       -> RESULT name=http_get impl=c_multi n=... c=... seconds=... rps=... connects=...
 *
 * "perform" (the default) is the plain curl_multi_perform + curl_multi_poll loop;
 * "socket" drives curl_multi_socket_action from epoll (what an event-loop client
 * such as tide does).  connects is the number of connections opened (C when every
 * request after the first C reuses one).
 *
 * "plain" (the default) sends curl's own minimal request; "tide-headers" sends the
 * request tide sends by default, with its User-Agent and Accept-Encoding lines (as
 * aiohttp and Node's fetch send theirs), and decodes compressed bodies as tide does:
 * libcurl formats a request a byte at a time, so those two lines cost it about a
 * tenth of a keep-alive GET.
 */
#include <curl/curl.h>
#include <string.h>
#include <sys/epoll.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static size_t body_bytes;
static long started, done, failed, bad_status, connects, n_total;
static CURLM *m;

static size_t discard(char *ptr, size_t size, size_t nmemb, void *ud) {
  static char sink[16384];
  size_t n = size * nmemb;
  (void)ud;
  memcpy(sink, ptr, n < sizeof sink ? n : sizeof sink); /* the body goes to a buffer */
  body_bytes += n;
  return n;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Handles finished transfers; re-adds each handle while requests remain. */
static void reap(void) {
  CURLMsg *msg;
  int q;
  while ((msg = curl_multi_info_read(m, &q))) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL *e = msg->easy_handle;
    long status = 0, nc = 0;
    if (msg->data.result != CURLE_OK) {
      if (failed++ < 5) fprintf(stderr, "request failed: %s\n", curl_easy_strerror(msg->data.result));
    } else {
      curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
      if (status != 200) bad_status++;
    }
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nc);
    connects += nc;
    done++;
    curl_multi_remove_handle(m, e);
    if (started < n_total) { /* same handle, same URL: reuses its keep-alive connection */
      curl_multi_add_handle(m, e);
      started++;
    }
  }
}

static void run_perform(void) {
  while (done < n_total) {
    int running;
    long before = started;
    if (curl_multi_perform(m, &running) != CURLM_OK) {
      fprintf(stderr, "curl_multi_perform failed\n");
      exit(1);
    }
    reap();
    if (done < n_total && started == before) curl_multi_poll(m, NULL, 0, 1000, NULL);
  }
}

/* ---- socket mode: curl_multi_socket_action driven by epoll ---- */
static int ep;
static long timeout_ms = -1;

static int on_socket(CURL *e, curl_socket_t s, int what, void *ud, void *sp) {
  struct epoll_event ev = {0};
  (void)e, (void)ud;
  ev.data.fd = s;
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL);
    curl_multi_assign(m, s, NULL);
    return 0;
  }
  ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
  if (sp) {
    epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev);
  } else {
    epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    curl_multi_assign(m, s, (void *)1);
  }
  return 0;
}

static int on_timer(CURLM *mm, long ms, void *ud) {
  (void)mm, (void)ud;
  timeout_ms = ms;
  return 0;
}

static void run_socket(void) {
  struct epoll_event evs[256];
  int running;
  while (done < n_total) {
    int k = epoll_wait(ep, evs, 256, timeout_ms < 0 ? 1000 : (int)timeout_ms);
    if (k == 0 || timeout_ms == 0) {
      timeout_ms = -1;
      curl_multi_socket_action(m, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    for (int i = 0; i < k; i++) {
      int f = (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR) ? CURL_CSELECT_IN : 0) |
              (evs[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
              (evs[i].events & EPOLLERR ? CURL_CSELECT_ERR : 0);
      curl_multi_socket_action(m, evs[i].data.fd, f, &running);
    }
    reap();
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s URL [N] [C] [perform|socket] [plain|tide-headers]\n", argv[0]);
    return 2;
  }
  const char *url = argv[1];
  const char *headers = argc > 5 ? argv[5] : "plain";
  int tide_headers = strcmp(headers, "tide-headers") == 0;
  long c = argc > 3 ? atol(argv[3]) : 100;
  const char *mode = argc > 4 ? argv[4] : "perform";
  int sock = strcmp(mode, "socket") == 0;
  n_total = argc > 2 ? atol(argv[2]) : 50000;
  if (n_total < 1 || c < 1 || (!sock && strcmp(mode, "perform") != 0) ||
      (!tide_headers && strcmp(headers, "plain") != 0)) {
    fprintf(stderr, "usage: %s URL [N] [C] [perform|socket] [plain|tide-headers]\n", argv[0]);
    return 2;
  }
  if (c > n_total) c = n_total;

  curl_global_init(CURL_GLOBAL_DEFAULT);
  m = curl_multi_init();
  curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, c);
  if (sock) {
    ep = epoll_create1(0);
    curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, on_timer);
  }
  CURL **h = calloc(c, sizeof *h);
  struct curl_slist *lines = NULL;
  if (tide_headers) { /* as host/http.c's default_headers */
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    char ae[96];
    snprintf(ae, sizeof ae, "Accept-Encoding: %s%s%s", (v->features & CURL_VERSION_LIBZ) ? "deflate, gzip, " : "",
             (v->features & CURL_VERSION_BROTLI) ? "br, " : "", (v->features & CURL_VERSION_ZSTD) ? "zstd, " : "");
    if (strlen(ae) > strlen("Accept-Encoding: ")) ae[strlen(ae) - 2] = '\0';
    else strcpy(ae, "Accept-Encoding: identity");
    lines = curl_slist_append(curl_slist_append(NULL, "User-Agent: tide/0.1"), ae);
  }

  double t0 = now();
  for (long i = 0; i < c; i++) {
    h[i] = curl_easy_init();
    curl_easy_setopt(h[i], CURLOPT_URL, url);
    curl_easy_setopt(h[i], CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h[i], CURLOPT_NOSIGNAL, 1L);
    if (tide_headers) {
      curl_easy_setopt(h[i], CURLOPT_HTTPHEADER, lines);
      curl_easy_setopt(h[i], CURLOPT_ACCEPT_ENCODING, "");
    }
    curl_multi_add_handle(m, h[i]);
    started++;
  }
  if (sock) run_socket();
  else run_perform();
  double dt = now() - t0;

  for (long i = 0; i < c; i++) curl_easy_cleanup(h[i]);
  curl_multi_cleanup(m);
  curl_slist_free_all(lines);
  curl_global_cleanup();
  free(h);
  if (failed || bad_status) {
    fprintf(stderr, "%ld failed, %ld non-200 of %ld\n", failed, bad_status, n_total);
    return 1;
  }
  printf("RESULT name=http_get impl=c_multi mode=%s headers=%s n=%ld c=%ld seconds=%.3f rps=%.0f connects=%ld bytes=%zu\n",
         mode, headers, n_total, c, dt, n_total / dt, connects, body_bytes);
  return 0;
}
