/*
 * An MPTCP echo server: listens with libmptcp, and for each accepted
 * connection prints whether it is MPTCP and its subflows, then echoes
 * everything back until the client closes.
 *
 *   server ADDRESS:PORT [CONNECTIONS [SUBFLOWS]]
 *
 * Prints "server: listening on PORT" first (port 0 picks a free port), then
 * per connection "server: mptcp=yes subflows=N ..." and
 * "server: echoed BYTES".
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#include "common.h"

static unsigned short local_port(int fd)
{
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
    if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0) {
        perror("getsockname");
        exit(1);
    }
    if (addr.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
    return ntohs(((struct sockaddr_in *)&addr)->sin_port);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s ADDRESS:PORT [CONNECTIONS [SUBFLOWS]]\n", argv[0]);
        return 2;
    }
    long connections = argc > 2 ? strtol(argv[2], NULL, 10) : 1;
    size_t want_subflows = argc > 3 ? strtoul(argv[3], NULL, 10) : 1;

    int listener = check(mptcp_listen(argv[1], MPTCP_FALLBACK_TCP), "mptcp_listen");
    printf("server: listening on %u mptcp=%s\n", local_port(listener),
           mptcp_is_mptcp(listener) == 1 ? "yes" : "no");
    fflush(stdout);

    for (long served = 0; served < connections; served++) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) {
            perror("accept");
            return 1;
        }
        char buf[16384];
        ssize_t n = read(fd, buf, sizeof buf);
        /* The client sends only once its subflows are up; ours follow. */
        print_connection("server", fd, want_subflows);
        size_t echoed = 0;
        while (n > 0) {
            write_all(fd, buf, (size_t)n);
            echoed += (size_t)n;
            n = read(fd, buf, sizeof buf);
        }
        if (n < 0) {
            perror("read");
            return 1;
        }
        printf("server: echoed %zu\n", echoed);
        fflush(stdout);
        close(fd);
    }
    close(listener);
    return 0;
}
