/* Descriptor reuse, copies and vfork under libmptcp_preload.so: each case
 * prints "<case> ok" and exits 0, or prints what went wrong and exits 1.
 * Usage: stale_state CASE [PORT]. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

static const char *name;

static void fail(const char *what) {
    printf("%s FAIL: %s (errno %d)\n", name, what, errno);
    exit(1);
}

static int int_opt(int fd, int level, int opt) {
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(fd, level, opt, &v, &l) != 0)
        return -errno;
    return v;
}

static unsigned long long cookie(int fd) {
    unsigned long long c = 0;
    socklen_t l = sizeof c;
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &l) != 0)
        return 0;
    return c;
}

/* A TCP socket, which the library turns into MPTCP. */
static int mptcp_socket(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0)
        fail("socket");
    if (int_opt(s, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_MPTCP)
        fail("the library did not make an MPTCP socket");
    return s;
}

/* A refused option (TCP_USER_TIMEOUT, 6.18) must rebuild `s` as TCP. */
static void expect_rebuilt(int s) {
    unsigned timeout = 5000;
    if (setsockopt(s, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout, sizeof timeout) != 0)
        fail("setsockopt(TCP_USER_TIMEOUT) on a fresh socket");
    if (int_opt(s, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_TCP)
        fail("not rebuilt as TCP");
    if (int_opt(s, IPPROTO_TCP, TCP_USER_TIMEOUT) != 5000)
        fail("TCP_USER_TIMEOUT not applied");
}

/* `s` was closed behind the library's back: a unix socket pair takes its
 * number, and a TCP option on it must fail as it does without the library,
 * leaving a working unix socket. */
static void expect_unix_socket_untouched(int s) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        fail("socketpair");
    if (sv[0] != s)
        fail("the socket pair did not reuse the descriptor");
    int one = 1;
    errno = 0;
    if (setsockopt(sv[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0)
        fail("TCP_NODELAY succeeded on a unix socket");
    if (errno != EOPNOTSUPP)
        fail("TCP_NODELAY on a unix socket: not EOPNOTSUPP");
    if (int_opt(sv[0], SOL_SOCKET, SO_DOMAIN) != AF_UNIX)
        fail("the unix socket changed family");
    char c = 'x';
    if (write(sv[0], &c, 1) != 1 || read(sv[1], &c, 1) != 1 || c != 'x')
        fail("the unix socket pair does not carry data");
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    name = argv[1];
    if (!strcmp(name, "closefrom")) {
        int s = mptcp_socket();
        closefrom(s);
        expect_unix_socket_untouched(s);
    } else if (!strcmp(name, "close_range")) {
        int s = mptcp_socket();
        if (syscall(SYS_close_range, s, ~0U, 0) != 0)
            fail("close_range");
        expect_unix_socket_untouched(s);
    } else if (!strcmp(name, "syscall_close")) {
        int s = mptcp_socket();
        if (syscall(SYS_close, s) != 0)
            fail("SYS_close");
        expect_unix_socket_untouched(s);
    } else if (!strcmp(name, "fclose_fdopen")) {
        int s = mptcp_socket();
        FILE *f = fdopen(s, "r+");
        if (!f)
            fail("fdopen");
        fclose(f);
        expect_unix_socket_untouched(s);
    } else if (!strcmp(name, "dup_before_rebuild")) {
        int s = mptcp_socket();
        int a = dup(s);
        int b = fcntl(s, F_DUPFD_CLOEXEC, 100);
        int c = dup2(s, 200);
        if (a < 0 || b < 0 || c != 200)
            fail("dup");
        expect_rebuilt(s);
        int copies[] = {a, b, c};
        for (int i = 0; i < 3; i++) {
            if (cookie(copies[i]) != cookie(s))
                fail("a copy still names the old socket");
            if (int_opt(copies[i], IPPROTO_TCP, TCP_USER_TIMEOUT) != 5000)
                fail("a copy does not see the option");
        }
        if (!(fcntl(b, F_GETFD) & FD_CLOEXEC) || (fcntl(a, F_GETFD) & FD_CLOEXEC) ||
            (fcntl(c, F_GETFD) & FD_CLOEXEC))
            fail("a copy lost its own FD_CLOEXEC");
    } else if (!strcmp(name, "vfork")) {
        int s = mptcp_socket();
        int spare = mptcp_socket();
        /* The child runs in our memory: its close and dup2 go through the
         * hooks before it execs or exits. */
        pid_t pid = vfork();
        if (pid == 0) {
            dup2(spare, s);
            close(s);
            syscall(SYS_close_range, 3, ~0U, 0);
            close_range(3, ~0U, 0);
            _exit(0);
        }
        int status;
        if (pid < 0 || waitpid(pid, &status, 0) != pid || status != 0)
            fail("vfork child");
        expect_rebuilt(s);
        expect_rebuilt(spare);
    } else if (!strcmp(name, "fork")) {
        int s = mptcp_socket();
        pid_t pid = fork();
        if (pid == 0) {
            /* The child's copy of the table is its own. */
            expect_rebuilt(s);
            expect_rebuilt(mptcp_socket());
            _exit(0);
        }
        int status;
        if (pid < 0 || waitpid(pid, &status, 0) != pid || status != 0)
            fail("fork child");
        if (int_opt(s, SOL_SOCKET, SO_PROTOCOL) != IPPROTO_MPTCP)
            fail("the child's rebuild reached the parent");
        expect_rebuilt(s);
    } else if (!strcmp(name, "relay_pipe") && argc == 3) {
        /* A relayed socket, closed unseen; a pipe takes its number. */
        struct sockaddr_in dest = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
        dest.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int s = mptcp_socket();
        if (connect(s, (struct sockaddr *)&dest, sizeof dest) != 0)
            fail("connect through the relay");
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        if (getpeername(s, (struct sockaddr *)&peer, &len) != 0 || peer.sin_port != dest.sin_port)
            fail("getpeername of the relayed socket");
        closefrom(s);
        int p[2];
        if (pipe(p) != 0 || p[0] != s)
            fail("the pipe did not reuse the descriptor");
        len = sizeof peer;
        errno = 0;
        if (getpeername(p[0], (struct sockaddr *)&peer, &len) == 0)
            fail("getpeername succeeded on a pipe");
        if (errno != ENOTSOCK)
            fail("getpeername on a pipe: not ENOTSOCK");
    } else {
        return 2;
    }
    printf("%s ok\n", name);
    return 0;
}
