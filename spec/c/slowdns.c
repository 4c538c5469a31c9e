/*
 * slowdns.c: an LD_PRELOAD shim for the HTTP and net specs. Host names
 * ending in ".slow" take 2 s to fail to resolve (a stalled DNS server, made
 * local); names ending in ".two" resolve to ::1, then 127.0.0.1 (a host
 * whose first address does not answer); every other name goes to the real
 * getaddrinfo. Used to check that a request cancelled while its name is
 * resolving does not stall the loop, and that a connect tries every
 * address.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <string.h>
#include <unistd.h>

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *,
                      struct addrinfo **);

int getaddrinfo(const char *node, const char *service,
                const struct addrinfo *hints, struct addrinfo **res) {
  size_t n = node ? strlen(node) : 0;
  gai_fn real;
  if (n > 5 && strcmp(node + n - 5, ".slow") == 0) {
    sleep(2);
    return EAI_NONAME;
  }
  *(void **)&real = dlsym(RTLD_NEXT, "getaddrinfo");
  if (n > 4 && strcmp(node + n - 4, ".two") == 0) {
    struct addrinfo h = {0}, *v4, *last;
    int rc;
    if (hints)
      h = *hints;
    h.ai_flags |= AI_NUMERICHOST;
    h.ai_family = AF_INET6;
    if ((rc = real("::1", service, &h, res)) != 0)
      return rc;
    h.ai_family = AF_INET;
    if ((rc = real("127.0.0.1", service, &h, &v4)) != 0) {
      freeaddrinfo(*res);
      return rc;
    }
    for (last = *res; last->ai_next; last = last->ai_next)
      ;
    last->ai_next = v4; /* glibc's freeaddrinfo frees node by node */
    return 0;
  }
  return real(node, service, hints, res);
}
