#pragma once
// A small streaming JSON writer (the only way hangar produces JSON) and parse helpers over
// simdjson's DOM.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hangar {
class Status;
}

namespace hangar::json {

// Appends `s` as a quoted JSON string. Control characters are escaped and bytes that are not
// valid UTF-8 become U+FFFD, so the output is always valid JSON.
void append_string(std::string& out, std::string_view s);
std::string quote(std::string_view s);

class Writer {
  public:
    Writer& begin_object();
    Writer& end_object();
    Writer& begin_array();
    Writer& end_array();
    Writer& key(std::string_view k);
    Writer& value(std::string_view v);
    Writer& value(const char* v) { return value(std::string_view(v)); }
    Writer& value(const std::string& v) { return value(std::string_view(v)); }
    Writer& value(bool v);
    Writer& value(int64_t v);
    Writer& value(uint64_t v);
    Writer& value(int v) { return value(static_cast<int64_t>(v)); }
    Writer& value(unsigned v) { return value(static_cast<uint64_t>(v)); }
    // An error as the API shows it: {"code": errc_name, "message": ...}.
    Writer& value(const Status& st);
    Writer& null();
    // Inserts already-serialized JSON as one value.
    Writer& raw(std::string_view json);

    template <typename T>
    Writer& field(std::string_view k, const T& v) {
        key(k);
        return value(v);
    }

    const std::string& str() const { return out_; }
    std::string take() { return std::move(out_); }

  private:
    void separate();
    std::string out_;
    std::vector<bool> has_items_;
    bool after_key_ = false;
};

}  // namespace hangar::json

namespace hangar::json {
// Reads an optional field: true when `result` holds a value of T (stored in `out`).
template <typename Result, typename T>
bool try_get(Result&& result, T& out) {
    return std::forward<Result>(result).get(out) == 0;
}
}  // namespace hangar::json
