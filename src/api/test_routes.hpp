#pragma once
// Fault routes for the test suite, registered only with `hangard --test-hooks` (never in the
// route table otherwise, so a normal daemon answers them 404; not in docs/openapi.json).
#include <boost/asio/io_context.hpp>

#include "api/router.hpp"

namespace hangar::api {

// POST /v1/test/throw (admins): throws std::logic_error in the handler, or with ?later=true
// from a handler of the next reactor turn; either way the daemon ends (util/reactor.hpp).
void register_test_routes(Router& router, boost::asio::io_context& io);

}  // namespace hangar::api
