#include "api/test_routes.hpp"

#include <stdexcept>

#include <boost/asio/post.hpp>

namespace hangar::api {

void register_test_routes(Router& router, boost::asio::io_context& io) {
    router.add("POST", "/v1/test/throw", Access::admin, [&io](Request& req, Respond respond) {
        if (!req.caller.admin) {
            return respond(error_response({Errc::forbidden, "test hooks are for admins"}));
        }
        if (req.query.count("later") && req.query["later"] == "true") {
            boost::asio::post(io, [] {
                throw std::logic_error("deliberate exception of the test hook (a later turn)");
            });
            return respond(json_response(202, "{}"));
        }
        throw std::logic_error("deliberate exception of the test hook");
    });
}

}  // namespace hangar::api
