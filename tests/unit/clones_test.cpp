// The clone request's decoding: names checked, nothing else accepted.
#include <gtest/gtest.h>

#include "core/clones.hpp"

using hangar::Errc;
using hangar::core::CloneRequest;
using hangar::core::decode_clone_request;

TEST(CloneRequest, NameAndSnapshot) {
    CloneRequest r;
    ASSERT_TRUE(decode_clone_request(R"({"name": "web2", "snapshot": "s1"})", r));
    EXPECT_EQ(r.name, "web2");
    EXPECT_EQ(r.snapshot, "s1");
    CloneRequest plain;
    ASSERT_TRUE(decode_clone_request(R"({"name": "web2"})", plain));
    EXPECT_EQ(plain.snapshot, "");
}

TEST(CloneRequest, Refusals) {
    struct Case {
        const char* body;
        Errc code;
    };
    for (const Case& c : {Case{"", Errc::invalid_json}, Case{"{}", Errc::bad_request},
                          Case{"[]", Errc::bad_request}, Case{R"({"name": 7})", Errc::bad_request},
                          Case{R"({"name": "a", "memory": true})", Errc::bad_request},
                          Case{R"({"name": "../x"})", Errc::invalid_name},
                          Case{R"({"name": "Web"})", Errc::invalid_name},
                          Case{R"({"name": "a", "snapshot": "a b"})", Errc::invalid_name},
                          Case{R"({"name": "a", "snapshot": 1})", Errc::bad_request},
                          Case{R"({"name": "a")", Errc::invalid_json}}) {
        CloneRequest r;
        hangar::Status st = decode_clone_request(c.body, r);
        EXPECT_FALSE(st) << c.body;
        EXPECT_EQ(st.code(), c.code) << c.body << ": " << st.message();
    }
}
