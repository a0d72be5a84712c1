#include "hangar/names.hpp"

#include <string>

namespace hangar {

bool is_valid_name(std::string_view name) {
    if (name.empty() || name.size() > 63) {
        return false;
    }
    auto lower_or_digit = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
    if (!lower_or_digit(name[0])) {
        return false;
    }
    for (char c : name) {
        if (!lower_or_digit(c) && c != '-') {
            return false;
        }
    }
    return true;
}

Status check_name(std::string_view what, std::string_view name) {
    if (is_valid_name(name)) {
        return {};
    }
    std::string shown;
    for (char c : name.substr(0, 64)) {
        shown += (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? c : '?';
    }
    if (name.size() > 64) {
        shown += "...";
    }
    return {Errc::invalid_name, std::string(what) + " name \"" + shown +
                                    "\" is invalid: use 1-63 characters of a-z, 0-9 and '-', "
                                    "starting with a letter or digit"};
}

}  // namespace hangar
