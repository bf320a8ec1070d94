/*
 * Runs the relay engine from a TOML file (see examples/relay.toml) until
 * standard input closes, then stops it with a drain and prints its final
 * counters.
 *
 *   relay CONFIG.toml [DRAIN_MS] < control
 *
 * Prints "relay: listening KIND ADDRESS" per listener, then after the stop
 * "relay: accepted=N relayed=N bytes_up=N bytes_down=N" and one line per
 * error kind that occurred.
 */
#define _POSIX_C_SOURCE 200809L
#include <unistd.h>

#include "common.h"

static const char *kind_name(uint32_t kind)
{
    switch (kind) {
    case MPTCP_RELAY_REDIRECT: return "redirect";
    case MPTCP_RELAY_TPROXY: return "tproxy";
    case MPTCP_RELAY_LOCAL_SOCKS5: return "socks5";
    case MPTCP_RELAY_HTTP: return "http";
    case MPTCP_RELAY_REMOTE_SOCKS5: return "remote-socks5";
    case MPTCP_RELAY_DNS_FORWARDER: return "dns";
    default: return "unknown";
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CONFIG.toml [DRAIN_MS] < control\n", argv[0]);
        return 2;
    }
    uint32_t drain_ms = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 5000;

    mptcp_relay_t *relay = NULL;
    check(mptcp_relay_start_file(argv[1], &relay), "mptcp_relay_start_file");

    size_t count = 0;
    check(mptcp_relay_listeners(relay, NULL, sizeof(mptcp_relay_listener_t), &count),
          "mptcp_relay_listeners");
    mptcp_relay_listener_t *listeners = calloc(count ? count : 1, sizeof *listeners);
    if (!listeners) {
        perror("calloc");
        return 1;
    }
    int listed = check(mptcp_relay_listeners(relay, listeners, sizeof *listeners, &count),
                       "mptcp_relay_listeners");
    for (int i = 0; i < listed; i++)
        printf("relay: listening %s %s\n", kind_name(listeners[i].kind), listeners[i].addr_text);
    free(listeners);
    fflush(stdout);

    /* Serve until the controlling process closes our standard input. */
    char buf[256];
    while (read(STDIN_FILENO, buf, sizeof buf) > 0)
        ;

    mptcp_relay_stats_t stats = {.struct_size = sizeof stats};
    check(mptcp_relay_stop(relay, drain_ms, &stats), "mptcp_relay_stop");
    printf("relay: accepted=%llu relayed=%llu bytes_up=%llu bytes_down=%llu\n",
           (unsigned long long)stats.accepted, (unsigned long long)stats.relayed,
           (unsigned long long)stats.bytes_up, (unsigned long long)stats.bytes_down);
    for (uint32_t i = 0; i < stats.error_kinds; i++) {
        if (stats.errors[i])
            printf("relay: errors %s=%llu\n", mptcp_relay_error_name(i),
                   (unsigned long long)stats.errors[i]);
    }
    return 0;
}
