#include "util/reactor.hpp"

#include <cxxabi.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <thread>
#include <typeinfo>

#include <spdlog/spdlog.h>

namespace hangar::reactor {

namespace {
std::atomic<bool> g_marked{false};
std::atomic<std::thread::id> g_thread{};

std::string demangle(const char* name) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(name, nullptr, nullptr, &status),
                                               std::free);
    return status == 0 && out ? std::string(out.get()) : std::string(name);
}

// The innermost exception's type and what(), and the contexts around it, outermost last.
void unwrap(std::exception_ptr e, std::string& what, std::string& where) {
    try {
        std::rethrow_exception(e);
    } catch (const EscapedFrom& ctx) {
        where += std::string(where.empty() ? " in " : ", in ") + ctx.what();
        try {
            std::rethrow_if_nested(ctx);
            what = "an exception of unknown type";
        } catch (...) {
            std::string inner_where;
            unwrap(std::current_exception(), what, inner_where);
            where = inner_where + where;
        }
    } catch (const std::exception& ex) {
        what = demangle(typeid(ex).name()) + " \"" + ex.what() + "\"";
    } catch (...) {
        const std::type_info* t = abi::__cxa_current_exception_type();
        what = t ? "an exception of type " + demangle(t->name()) : "an exception of unknown type";
    }
}
}  // namespace

void mark_this_thread() {
    g_thread.store(std::this_thread::get_id());
    g_marked.store(true);
}

bool on_reactor_thread() {
    return !g_marked.load(std::memory_order_relaxed) ||
           g_thread.load(std::memory_order_relaxed) == std::this_thread::get_id();
}

void off_reactor(const char* function) {
    spdlog::critical("reactor check failed: {} called off the reactor thread", function);
    spdlog::default_logger()->flush();
    std::abort();
}

std::string describe(std::exception_ptr e) {
    std::string what, where;
    unwrap(e, what, where);
    return what + where;
}

void die(std::exception_ptr e) {
    spdlog::critical(
        "bug: exception on the reactor: {}; exiting with status {} (machines are left "
        "running; the next start adopts them)",
        describe(e), kReactorBugExit);
    spdlog::default_logger()->flush();
    _exit(kReactorBugExit);
}

void die_in(const std::string& where) {
    try {
        std::throw_with_nested(EscapedFrom(where));
    } catch (...) {
        die(std::current_exception());
    }
}

void install_terminate_handler() {
    std::set_terminate([] {
        if (std::exception_ptr e = std::current_exception()) {
            die(e);
        }
        spdlog::critical("bug: std::terminate without an exception; exiting with status {}",
                         kReactorBugExit);
        spdlog::default_logger()->flush();
        _exit(kReactorBugExit);
    });
}

}  // namespace hangar::reactor
