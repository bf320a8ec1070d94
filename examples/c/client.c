/*
 * An MPTCP client: connects with libmptcp (falling back to TCP when the
 * kernel refuses MPTCP), sends a first part of a pattern, waits for the
 * path manager's extra subflows (they open once the connection is fully
 * established, which takes a first data exchange), prints the connection
 * and its subflows, sends the rest, and checks the echo.
 *
 *   client HOST:PORT [SUBFLOWS [BYTES]]
 *
 * The echo is read after everything is sent: keep BYTES within the socket
 * buffers (a few hundred kB).
 *
 * Output: "client: mptcp=yes subflows=2 ..." then "client: echo ok BYTES".
 */
#define _POSIX_C_SOURCE 200809L
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#include "common.h"

static unsigned char pattern_byte(size_t i)
{
    return (unsigned char)(i * 31 + (i >> 8));
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s HOST:PORT [SUBFLOWS [BYTES]]\n", argv[0]);
        return 2;
    }
    size_t want_subflows = argc > 2 ? strtoul(argv[2], NULL, 10) : 1;
    size_t total = argc > 3 ? strtoul(argv[3], NULL, 10) : 100000;

    int fd = check(mptcp_connect(argv[1], MPTCP_FALLBACK_TCP), "mptcp_connect");

    unsigned char *out = malloc(total ? total : 1);
    unsigned char *in = malloc(total ? total : 1);
    if (!out || !in) {
        perror("malloc");
        return 1;
    }
    for (size_t i = 0; i < total; i++)
        out[i] = pattern_byte(i);
    size_t first = total < 16384 ? total : 16384;
    write_all(fd, out, first);
    print_connection("client", fd, want_subflows);
    write_all(fd, out + first, total - first);
    shutdown(fd, SHUT_WR);
    size_t received = 0;
    for (;;) {
        ssize_t n = read(fd, in + received, total - received);
        if (n < 0) {
            perror("read");
            return 1;
        }
        if (n == 0 || (received += (size_t)n) == total)
            break;
    }
    int ok = received == total && memcmp(in, out, total) == 0;
    printf("client: echo %s %zu\n", ok ? "ok" : "MISMATCH", received);
    free(in);
    free(out);
    close(fd);
    return ok ? 0 : 1;
}
