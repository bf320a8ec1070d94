/* Helpers shared by the C examples: report a libmptcp failure and exit,
 * write a whole buffer, print a connection and its subflows. */
#ifndef MPTCP_EXAMPLES_COMMON_H
#define MPTCP_EXAMPLES_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mptcp.h>

/* Exits with the library's message when `rc` is a negative errno. */
static inline int check(int rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "%s failed (%s): %s\n", what, strerror(-rc), mptcp_last_error());
        exit(1);
    }
    return rc;
}

/* Writes all `len` bytes of `data` to `fd`; exits on an error. */
static inline void write_all(int fd, const void *data, size_t len)
{
    for (size_t sent = 0; sent < len;) {
        ssize_t n = write(fd, (const char *)data + sent, len - sent);
        if (n < 0) {
            perror("write");
            exit(1);
        }
        sent += (size_t)n;
    }
}

/* Waits up to `timeout_ms` for the connection on `fd` to have `want`
 * subflows; returns the number it has (an MPTCP path manager opens extra
 * subflows a moment after the connection is established). */
static inline size_t wait_for_subflows(int fd, size_t want, int timeout_ms)
{
    size_t count = 0;
    for (int waited = 0;; waited += 20) {
        count = 0;
        if (mptcp_get_subflows(fd, NULL, sizeof(mptcp_subflow_t), &count) < 0)
            return 0;
        if (count >= want || waited >= timeout_ms)
            return count;
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

/* Prints "mptcp=yes subflows=N" and one line per subflow, once the
 * connection has `want_subflows` (waiting up to 3 s for them). */
static inline void print_connection(const char *who, int fd, size_t want_subflows)
{
    int is_mptcp = check(mptcp_is_mptcp(fd), "mptcp_is_mptcp");
    if (!is_mptcp) {
        printf("%s: mptcp=no\n", who);
        return;
    }
    wait_for_subflows(fd, want_subflows, 3000);
    mptcp_info_t info = {.struct_size = sizeof info};
    check(mptcp_get_info(fd, &info), "mptcp_get_info");

    /* Ask for the count first, then list into an array of that size. */
    size_t count = 0;
    check(mptcp_get_subflows(fd, NULL, sizeof(mptcp_subflow_t), &count), "mptcp_get_subflows");
    mptcp_subflow_t *subflows = calloc(count ? count : 1, sizeof *subflows);
    if (!subflows) {
        perror("calloc");
        exit(1);
    }
    int listed = check(mptcp_get_subflows(fd, subflows, sizeof *subflows, &count),
                       "mptcp_get_subflows");
    printf("%s: mptcp=yes subflows=%d token=%08x\n", who, listed, info.token);
    for (int i = 0; i < listed; i++) {
        const mptcp_subflow_t *sf = &subflows[i];
        printf("%s: subflow %s -> %s rtt_us=%u cwnd=%u bytes_sent=%llu bytes_received=%llu\n",
               who, sf->local_text, sf->remote_text, sf->rtt_us, sf->snd_cwnd,
               (unsigned long long)sf->bytes_sent, (unsigned long long)sf->bytes_received);
    }
    free(subflows);
}

#endif
