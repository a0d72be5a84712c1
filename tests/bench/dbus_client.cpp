// dbus_client ADDRESS calls N NAME: N round trips each of org.hangar.Manager1.GetMachine(NAME)
// and ListMachines over sd-bus (blocking calls from one thread, as a script would make them);
// prints one JSON line with the medians and p99s in µs and the size of the list.
// dbus_client ADDRESS signals SECONDS: counts MachineStateChanged signals for SECONDS after the
// first one arrives; prints one JSON line with the count and the rate.
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <systemd/sd-bus.h>

namespace {

uint64_t now_us() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000 + uint64_t(ts.tv_nsec) / 1000;
}

[[noreturn]] void fail(const char* what, int r, sd_bus_error* e = nullptr) {
    fprintf(stderr, "dbus_client: %s: %s\n", what, e && e->message ? e->message : strerror(-r));
    exit(1);
}

uint64_t pct(std::vector<uint64_t> v, double q) {
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, size_t(q / 100 * double(v.size())))];
}

long signals_seen = 0;
uint64_t first_signal = 0;

int on_signal(sd_bus_message*, void*, sd_bus_error*) {
    if (signals_seen++ == 0) {
        first_signal = now_us();
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: dbus_client ADDRESS calls N NAME | ADDRESS signals SECONDS\n");
        return 2;
    }
    sd_bus* bus = nullptr;
    int r = sd_bus_new(&bus);
    if (r >= 0) {
        r = sd_bus_set_address(bus, argv[1]);
    }
    if (r >= 0) {
        r = sd_bus_set_bus_client(bus, 1);
    }
    if (r >= 0) {
        r = sd_bus_start(bus);
    }
    if (r < 0) {
        fail("connect", r);
    }
    if (strcmp(argv[2], "calls") == 0 && argc == 5) {
        long n = atol(argv[3]);
        const char* name = argv[4];
        std::vector<uint64_t> get, list;
        size_t entries = 0;
        for (long i = 0; i < n; ++i) {
            sd_bus_error err = SD_BUS_ERROR_NULL;
            sd_bus_message* reply = nullptr;
            uint64_t t0 = now_us();
            r = sd_bus_call_method(bus, "org.hangar", "/org/hangar", "org.hangar.Manager1",
                                   "GetMachine", &err, &reply, "s", name);
            get.push_back(now_us() - t0);
            if (r < 0) {
                fail("GetMachine", r, &err);
            }
            sd_bus_message_unref(reply);
            t0 = now_us();
            r = sd_bus_call_method(bus, "org.hangar", "/org/hangar", "org.hangar.Manager1",
                                   "ListMachines", &err, &reply, "");
            list.push_back(now_us() - t0);
            if (r < 0) {
                fail("ListMachines", r, &err);
            }
            if (i == 0) {
                sd_bus_message_enter_container(reply, 'a', "(sssuo)");
                while (sd_bus_message_skip(reply, "(sssuo)") > 0) {
                    ++entries;
                }
            }
            sd_bus_message_unref(reply);
        }
        printf(
            "{\"get_p50_us\": %lu, \"get_p99_us\": %lu, \"list_p50_us\": %lu, "
            "\"list_p99_us\": %lu, \"list_entries\": %zu}\n",
            pct(get, 50), pct(get, 99), pct(list, 50), pct(list, 99), entries);
    } else if (strcmp(argv[2], "signals") == 0) {
        double seconds = atof(argv[3]);
        r = sd_bus_match_signal(bus, nullptr, "org.hangar", "/org/hangar", "org.hangar.Manager1",
                                "MachineStateChanged", on_signal, nullptr);
        if (r < 0) {
            fail("match", r);
        }
        printf("ready\n");
        fflush(stdout);
        for (;;) {
            r = sd_bus_process(bus, nullptr);
            if (r < 0) {
                fail("process", r);
            }
            if (first_signal && now_us() - first_signal >= uint64_t(seconds * 1e6)) {
                break;
            }
            if (r == 0) {
                sd_bus_wait(bus, 100000);
            }
        }
        double elapsed = double(now_us() - first_signal) / 1e6;
        printf("{\"signals\": %ld, \"per_second\": %.0f}\n", signals_seen,
               double(signals_seen) / elapsed);
    } else {
        fprintf(stderr, "dbus_client: unknown mode %s\n", argv[2]);
        return 2;
    }
    sd_bus_flush_close_unref(bus);
    return 0;
}
