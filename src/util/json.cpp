#include "util/json.hpp"

#include <charconv>

#include "hangar/error.hpp"

namespace hangar::json {

namespace {
// Length of the valid UTF-8 sequence at s[i], or 0 when it is not valid.
size_t utf8_sequence(std::string_view s, size_t i) {
    auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    unsigned char c = b(i);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) {
        return 0;
    }
    for (size_t k = 1; k < n; ++k) {
        if ((b(i + k) & 0xc0) != 0x80) {
            return 0;
        }
    }
    if ((n == 2 && c < 0xc2) || (n == 3 && c == 0xe0 && b(i + 1) < 0xa0) ||
        (n == 3 && c == 0xed && b(i + 1) >= 0xa0) || (n == 4 && c == 0xf0 && b(i + 1) < 0x90) ||
        (n == 4 && (c > 0xf4 || (c == 0xf4 && b(i + 1) >= 0x90)))) {
        return 0;
    }
    return n;
}
}  // namespace

void append_string(std::string& out, std::string_view s) {
    static constexpr char kHex[] = "0123456789abcdef";
    out.push_back('"');
    for (size_t i = 0; i < s.size();) {
        // Runs of printable ASCII that need no escape are copied at once.
        size_t run = i;
        while (run < s.size()) {
            auto r = static_cast<unsigned char>(s[run]);
            if (r < 0x20 || r >= 0x7f || r == '"' || r == '\\') {
                break;
            }
            ++run;
        }
        if (run > i) {
            out.append(s.data() + i, run - i);
            i = run;
            continue;
        }
        auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0x80) {
            size_t n = utf8_sequence(s, i);
            if (n == 0) {
                out += "\\ufffd";
                ++i;
            } else {
                out.append(s.substr(i, n));
                i += n;
            }
            continue;
        }
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    out += "\\u00";
                    out.push_back(kHex[c >> 4]);
                    out.push_back(kHex[c & 0xf]);
                } else {
                    out.push_back(static_cast<char>(c));
                }
        }
        ++i;
    }
    out.push_back('"');
}

std::string quote(std::string_view s) {
    std::string out;
    append_string(out, s);
    return out;
}

void Writer::separate() {
    if (after_key_) {
        after_key_ = false;
        return;
    }
    if (!has_items_.empty()) {
        if (has_items_.back()) {
            out_.push_back(',');
        }
        has_items_.back() = true;
    }
}

Writer& Writer::begin_object() {
    separate();
    out_.push_back('{');
    has_items_.push_back(false);
    return *this;
}

Writer& Writer::end_object() {
    out_.push_back('}');
    has_items_.pop_back();
    return *this;
}

Writer& Writer::begin_array() {
    separate();
    out_.push_back('[');
    has_items_.push_back(false);
    return *this;
}

Writer& Writer::end_array() {
    out_.push_back(']');
    has_items_.pop_back();
    return *this;
}

Writer& Writer::key(std::string_view k) {
    separate();
    append_string(out_, k);
    out_.push_back(':');
    after_key_ = true;
    return *this;
}

Writer& Writer::value(std::string_view v) {
    separate();
    append_string(out_, v);
    return *this;
}

Writer& Writer::value(bool v) {
    separate();
    out_ += v ? "true" : "false";
    return *this;
}

Writer& Writer::value(int64_t v) {
    separate();
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out_.append(buf, r.ptr);
    return *this;
}

Writer& Writer::value(uint64_t v) {
    separate();
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out_.append(buf, r.ptr);
    return *this;
}

Writer& Writer::value(const Status& st) {
    return begin_object()
        .field("code", errc_name(st.code()))
        .field("message", st.message())
        .end_object();
}

Writer& Writer::null() {
    separate();
    out_ += "null";
    return *this;
}

Writer& Writer::raw(std::string_view json) {
    separate();
    out_.append(json);
    return *this;
}

}  // namespace hangar::json
