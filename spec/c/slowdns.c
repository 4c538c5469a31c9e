/*
 * slowdns.c: an LD_PRELOAD shim for the HTTP specs. Host names ending in
 * ".slow" take 2 s to fail to resolve (a stalled DNS server, made local);
 * every other name goes to the real getaddrinfo. Used to check that a
 * request cancelled while its name is resolving does not stall the loop.
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
  return real(node, service, hints, res);
}
