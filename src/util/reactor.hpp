#pragma once
// The reactor: one io_context run by one thread. Core code runs on that thread only (it holds
// no locks); HANGAR_ASSERT_REACTOR() at the entry of a core function checks it in debug and
// sanitizer builds (HANGAR_REACTOR_CHECKS) and compiles to nothing in release builds.
//
// A handler that throws on the reactor is a bug (expected failures are Status values): the
// daemon ends with one log line and kReactorBugExit rather than run on with half-updated
// state. Machines are left running; the next start adopts them.
#include <exception>
#include <stdexcept>
#include <string>

namespace hangar::reactor {

// EX_SOFTWARE (sysexits.h): an internal software error.
inline constexpr int kReactorBugExit = 70;

// Records the calling thread as the reactor's (main calls it as the io_context starts).
void mark_this_thread();
// True on the reactor thread, and on any thread before mark_this_thread() (start-up, tests).
bool on_reactor_thread();
// Logs "FUNCTION called off the reactor thread" and aborts.
[[noreturn]] void off_reactor(const char* function);

// Context for an exception that escapes code at `where`: a boundary that knows where it
// is (the router: "handler of GET /v1/..."; a C callback) rethrows with this wrapped around
// the original (std::throw_with_nested), which describe() unwraps.
struct EscapedFrom : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// One line for an escaped exception: its type, what() and where it escaped from, e.g.
// `std::logic_error "boom" in handler of POST /v1/test/throw`.
std::string describe(std::exception_ptr e);

// The end of the daemon for an exception that escaped a handler on the reactor: logs one
// critical line (describe(e)), flushes the log and exits with kReactorBugExit, without
// destructors (they would stop what runs) and without committing the store's open
// transaction (the turn that threw may have half-updated it).
[[noreturn]] void die(std::exception_ptr e);
// In a catch block of a boundary that must not let the exception through (a C callback):
// die() with the current exception, `where` around it.
[[noreturn]] void die_in(const std::string& where);
// std::terminate (an exception through a noexcept frame, or one that cannot unwind) logs
// as die() does and exits with kReactorBugExit too.
void install_terminate_handler();

}  // namespace hangar::reactor

#ifdef HANGAR_REACTOR_CHECKS
#define HANGAR_ASSERT_REACTOR()                                  \
    do {                                                         \
        if (!::hangar::reactor::on_reactor_thread()) {           \
            ::hangar::reactor::off_reactor(__PRETTY_FUNCTION__); \
        }                                                        \
    } while (0)
#else
#define HANGAR_ASSERT_REACTOR() ((void)0)
#endif
