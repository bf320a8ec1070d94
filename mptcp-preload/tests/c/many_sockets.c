/* Opens COUNT TCP sockets and keeps them open, then prints how much the
 * resident set grew: "rss_growth_kib N". MODE: "open" (socket() only),
 * "options" (SO_KEEPALIVE set, never connected), "connected" (SO_KEEPALIVE
 * set, then a non-blocking connect to a closed loopback port).
 * Usage: many_sockets MODE COUNT (raises the soft RLIMIT_NOFILE to the
 * hard one, which must leave room for COUNT descriptors). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

/* A socket as MODE says; its descriptor, or -1 (reported). */
static int one_socket(const char *mode, const struct sockaddr_in *closed) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s < 0) {
        perror("socket");
        return -1;
    }
    if (strcmp(mode, "open") != 0) {
        int one = 1;
        if (setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) != 0) {
            perror("setsockopt");
            return -1;
        }
    }
    if (!strcmp(mode, "connected") &&
        connect(s, (const struct sockaddr *)closed, sizeof *closed) != 0 && errno != EINPROGRESS &&
        errno != ECONNREFUSED) {
        perror("connect");
        return -1;
    }
    return s;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    const char *mode = argv[1];
    int count = atoi(argv[2]);
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_max < (rlim_t)count + 16) {
        fprintf(stderr, "RLIMIT_NOFILE is below %d\n", count + 16);
        return 1;
    }
    lim.rlim_cur = lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) {
        perror("setrlimit");
        return 1;
    }
    struct sockaddr_in closed = {.sin_family = AF_INET, .sin_port = htons(1)};
    closed.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* One socket first, closed again: what a preload library sets up on
     * its first socket (function lookups, its table's owner) is not per
     * socket, and stays out of the growth. */
    int first = one_socket(mode, &closed);
    if (first < 0)
        return 1;
    close(first);
    long before = rss_kib();
    for (int i = 0; i < count; i++)
        if (one_socket(mode, &closed) < 0)
            return 1;
    printf("rss_growth_kib %ld\n", rss_kib() - before);
    return 0;
}
