#pragma once
// Expected runtime failures are values: a code from the API contract plus a human message.
// They are mapped to HTTP statuses in exactly one place (errors.cpp).
#include <string>
#include <string_view>
#include <utility>

namespace hangar {

enum class Errc {
    ok = 0,
    bad_request,
    invalid_name,
    invalid_json,
    unauthorized,
    forbidden,
    not_found,
    method_not_allowed,
    conflict,
    invalid_state,
    busy,
    too_large,
    invalid_spec,
    internal,
    unavailable,
    timeout,
    // Only in an operation's result: hangard was restarted while the operation was in flight.
    interrupted,
};

// The snake_case code of the API's error shape, e.g. "invalid_state".
std::string_view errc_name(Errc code);
// The HTTP status that carries `code`.
int http_status(Errc code);

class Status {
  public:
    Status() = default;
    Status(Errc code, std::string message) : code_(code), message_(std::move(message)) {}

    bool ok() const { return code_ == Errc::ok; }
    explicit operator bool() const { return ok(); }
    Errc code() const { return code_; }
    const std::string& message() const { return message_; }

  private:
    Errc code_ = Errc::ok;
    std::string message_;
};

}  // namespace hangar
