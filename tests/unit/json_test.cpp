#include "util/json.hpp"

#include <gtest/gtest.h>

using hangar::json::quote;

TEST(Json, EscapesControlAndInvalidUtf8) {
    EXPECT_EQ(quote("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
    EXPECT_EQ(quote("\xff"), "\"\\ufffd\"");
    EXPECT_EQ(quote("h\xc3\xa9"), "\"h\xc3\xa9\"");
}
