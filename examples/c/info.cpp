// A C++ program using libmptcp: prints the kernel probe, the path manager's
// limits and endpoints, the MPTCP connections of the host with their
// subflows, and optionally the path-manager events that arrive within some
// milliseconds (needs CAP_NET_ADMIN).
//
//   info [--events MILLISECONDS [COUNT]]
//
// Handles are held by std::unique_ptr with the library's close functions as
// deleters; errors become exceptions carrying mptcp_last_error().
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <mptcp.h>

namespace {

int check(int rc, const char *what)
{
    if (rc < 0)
        throw std::runtime_error(std::string(what) + ": " + mptcp_last_error());
    return rc;
}

struct PmClose {
    void operator()(mptcp_pm_t *pm) const { mptcp_pm_close(pm); }
};
struct EventsClose {
    void operator()(mptcp_pm_events_t *events) const { mptcp_pm_events_close(events); }
};
struct DiagClose {
    void operator()(mptcp_diag_t *snapshot) const { mptcp_diag_close(snapshot); }
};
using PathManager = std::unique_ptr<mptcp_pm_t, PmClose>;
using Events = std::unique_ptr<mptcp_pm_events_t, EventsClose>;
using Diag = std::unique_ptr<mptcp_diag_t, DiagClose>;

// Lists into a vector with the library's two-call protocol: ask for the
// count, then fill.
template <typename T, typename List> std::vector<T> list_all(List list, const char *what)
{
    size_t count = 0;
    check(list(nullptr, sizeof(T), &count), what);
    std::vector<T> items(count);
    check(list(items.data(), sizeof(T), &count), what);
    items.resize(std::min(count, items.size()));
    return items;
}

std::string availability(int code)
{
    if (code == 0)
        return "available";
    const char *advice = mptcp_refusal_advice(code);
    return advice ? std::string("unavailable: ") + advice : "unknown (error " + std::to_string(code) + ")";
}

void print_probe()
{
    mptcp_probe_t probe{};
    probe.struct_size = sizeof probe;
    check(mptcp_probe(&probe), "mptcp_probe");
    std::printf("libmptcp %s, kernel %u.%u.%u\n", mptcp_version(), probe.kernel_major,
                probe.kernel_minor, probe.kernel_patch);
    std::printf("ipv4: %s\n", availability(probe.ipv4).c_str());
    std::printf("ipv6: %s\n", availability(probe.ipv6).c_str());
    std::printf("enabled: %s, path manager: %s, scheduler: %s\n",
                probe.enabled == 1 ? "yes" : probe.enabled == 0 ? "no" : "unknown",
                probe.path_manager[0] ? probe.path_manager : "unknown",
                probe.scheduler[0] ? probe.scheduler : "unknown");
}

void print_path_manager()
{
    mptcp_pm_t *raw = nullptr;
    check(mptcp_pm_open(&raw), "mptcp_pm_open");
    PathManager pm(raw);

    mptcp_limits_t limits{};
    limits.struct_size = sizeof limits;
    check(mptcp_pm_get_limits(pm.get(), &limits), "mptcp_pm_get_limits");
    std::printf("limits: subflows %u add_addr_accepted %u\n", limits.subflows,
                limits.add_addr_accepted);

    // The kernel keeps at most 8 endpoints; grow if a future kernel has more.
    std::vector<mptcp_endpoint_t> endpoints(8);
    size_t count = endpoints.size();
    check(mptcp_pm_endpoints(pm.get(), endpoints.data(), sizeof(mptcp_endpoint_t), &count),
          "mptcp_pm_endpoints");
    if (count > endpoints.size()) {
        endpoints.resize(count);
        check(mptcp_pm_endpoints(pm.get(), endpoints.data(), sizeof(mptcp_endpoint_t), &count),
              "mptcp_pm_endpoints");
    }
    std::printf("endpoints: %zu\n", count);
    for (size_t i = 0; i < count; i++) {
        const mptcp_endpoint_t &e = endpoints[i];
        char flags[64];
        check(mptcp_endpoint_flags_format(e.flags, flags, sizeof flags), "flags");
        std::printf("endpoint: %s id %u %s", e.addr_text, e.id, flags);
        if (e.port)
            std::printf(" port %u", e.port);
        if (e.ifname[0])
            std::printf(" dev %s", e.ifname);
        std::printf("\n");
    }
}

void print_connections()
{
    mptcp_diag_t *raw = nullptr;
    check(mptcp_diag_open(&raw), "mptcp_diag_open");
    Diag snapshot(raw);
    auto connections = list_all<mptcp_diag_connection_t>(
        [&](mptcp_diag_connection_t *out, size_t size, size_t *count) {
            return mptcp_diag_connections(snapshot.get(), out, size, count);
        },
        "mptcp_diag_connections");
    std::printf("connections: %zu\n", connections.size());
    for (size_t i = 0; i < connections.size(); i++) {
        const mptcp_diag_connection_t &c = connections[i];
        std::printf("connection: %s -> %s %s token %08x%s\n", c.local_text, c.remote_text,
                    mptcp_tcp_state_name(c.state), c.token, c.fallback ? " fallback" : "");
        auto subflows = list_all<mptcp_diag_subflow_t>(
            [&](mptcp_diag_subflow_t *out, size_t size, size_t *count) {
                return mptcp_diag_subflows(snapshot.get(), i, out, size, count);
            },
            "mptcp_diag_subflows");
        for (const mptcp_diag_subflow_t &sf : subflows)
            std::printf("  subflow: %s -> %s rtt_us %u cwnd %u\n", sf.local_text, sf.remote_text,
                        sf.rtt_us, sf.cwnd);
    }
}

void print_events(int milliseconds, long wanted)
{
    mptcp_pm_events_t *raw = nullptr;
    check(mptcp_pm_events_open(&raw), "mptcp_pm_events_open");
    Events events(raw);
    std::printf("events: listening\n");
    std::fflush(stdout);

    using Clock = std::chrono::steady_clock;
    auto deadline = Clock::now() + std::chrono::milliseconds(milliseconds);
    long seen = 0;
    pollfd pfd{check(mptcp_pm_events_fd(events.get()), "mptcp_pm_events_fd"), POLLIN, 0};
    while (seen < wanted) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0 || poll(&pfd, 1, static_cast<int>(left.count())) <= 0)
            break;
        // The handle may hold several events per wake-up: drain them.
        mptcp_event_t event{};
        event.struct_size = sizeof event;
        while (seen < wanted && check(mptcp_pm_events_next(events.get(), &event, 0), "next") == 1) {
            std::printf("event: %s\n", event.text);
            std::fflush(stdout);
            seen++;
            event.struct_size = sizeof event;
        }
    }
    std::printf("events: %ld\n", seen);
}

} // namespace

int main(int argc, char **argv)
{
    try {
        print_probe();
        print_path_manager();
        print_connections();
        if (argc > 2 && std::string(argv[1]) == "--events")
            print_events(std::atoi(argv[2]), argc > 3 ? std::atol(argv[3]) : 1000);
    } catch (const std::exception &err) {
        std::fprintf(stderr, "info: %s\n", err.what());
        return 1;
    }
    return 0;
}
