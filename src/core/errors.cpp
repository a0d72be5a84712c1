#include "hangar/error.hpp"

namespace hangar {

std::string_view errc_name(Errc code) {
    switch (code) {
        case Errc::ok:
            return "ok";
        case Errc::bad_request:
            return "bad_request";
        case Errc::invalid_name:
            return "invalid_name";
        case Errc::invalid_json:
            return "invalid_json";
        case Errc::unauthorized:
            return "unauthorized";
        case Errc::forbidden:
            return "forbidden";
        case Errc::not_found:
            return "not_found";
        case Errc::method_not_allowed:
            return "method_not_allowed";
        case Errc::conflict:
            return "conflict";
        case Errc::invalid_state:
            return "invalid_state";
        case Errc::busy:
            return "busy";
        case Errc::too_large:
            return "too_large";
        case Errc::invalid_spec:
            return "invalid_spec";
        case Errc::internal:
            return "internal";
        case Errc::unavailable:
            return "unavailable";
        case Errc::timeout:
            return "timeout";
        case Errc::interrupted:
            return "interrupted";
    }
    return "internal";
}

int http_status(Errc code) {
    switch (code) {
        case Errc::ok:
            return 200;
        case Errc::bad_request:
        case Errc::invalid_name:
        case Errc::invalid_json:
            return 400;
        case Errc::unauthorized:
            return 401;
        case Errc::forbidden:
            return 403;
        case Errc::not_found:
            return 404;
        case Errc::method_not_allowed:
            return 405;
        case Errc::conflict:
        case Errc::invalid_state:
        case Errc::busy:
            return 409;
        case Errc::too_large:
            return 413;
        case Errc::invalid_spec:
            return 422;
        case Errc::internal:
        case Errc::interrupted:
            return 500;
        case Errc::unavailable:
            return 503;
        case Errc::timeout:
            return 504;
    }
    return 500;
}

}  // namespace hangar
