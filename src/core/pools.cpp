#include "core/pools.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <simdjson.h>
#include <spdlog/spdlog.h>

#include "core/machines.hpp"
#include "hangar/names.hpp"
#include "util/json.hpp"
#include "util/json_body.hpp"
#include "util/metrics.hpp"
#include "util/reactor.hpp"
#include "util/time.hpp"

namespace hangar::core {

namespace fs = std::filesystem;

namespace {
constexpr const char* kTable = "pools";
constexpr const char* kDefault = "default";

struct Fd {
    int fd = -1;
    ~Fd() {
        if (fd >= 0) {
            ::close(fd);
        }
    }
};

// `a` is `b` or lies below it (both in normal form).
bool within(const std::string& a, const std::string& b) {
    return a == b || (a.size() > b.size() && a.compare(0, b.size(), b) == 0 &&
                      (b == "/" || a[b.size()] == '/'));
}

std::string errno_text() {
    return std::strerror(errno);
}
}  // namespace

Status decode_pool(std::string_view body, Pool& out, bool stored) {
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (Status st = json::parse_object(parser, body, doc, false); !st) {
        return st;
    }
    simdjson::dom::object fields = doc.get_object().value_unsafe();
    for (auto [key, v] : fields) {
        Status st;
        if (key == "name") {
            st = json::get_string(v, key, out.name);
        } else if (key == "driver") {
            st = json::get_string(v, key, out.driver);
        } else if (key == "path") {
            st = json::get_string(v, key, out.path);
        } else if (stored && key == "reflink") {
            st = json::get_bool(v, key, out.reflink);
        } else if (stored && key == "created_at") {
            st = json::get_string(v, key, out.created_at);
        } else if (stored && (key == "capacity_bytes" || key == "free_bytes" || key == "error")) {
            continue;  // figures of the moment the record was written
        } else {
            st = json::unknown_field("", key);
        }
        if (!st) {
            return st;
        }
    }
    if (out.name.empty() || out.path.empty()) {
        return {Errc::bad_request, "'name' and 'path' are required"};
    }
    if (Status st = check_name("pool", out.name); !st) {
        return st;
    }
    if (out.driver != "dir") {
        return {Errc::bad_request, "driver " + json::quote(out.driver) + " is not known: \"dir\""};
    }
    if (out.path.size() > 1024) {
        return {Errc::bad_request, "path is longer than 1024 bytes"};
    }
    fs::path p(out.path);
    std::string normal = p.lexically_normal().string();
    if (!p.is_absolute() || (normal != out.path && normal + "/" != out.path)) {
        return {Errc::bad_request,
                "path must be absolute and in normal form (no '.', '..' "
                "or '//'): " +
                    json::quote(out.path)};
    }
    out.path =
        normal.size() > 1 && normal.back() == '/' ? normal.substr(0, normal.size() - 1) : normal;
    if (out.path == "/") {
        return {Errc::bad_request, "a pool cannot be the root directory"};
    }
    return {};
}

Status probe_reflink(const std::string& dir, bool& reflink) {
    reflink = false;
    Fd src{::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600)};
    if (src.fd < 0) {
        return {Errc::invalid_spec, "hangard cannot write files in " + dir + ": " + errno_text()};
    }
    Fd dst{::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600)};
    if (dst.fd < 0) {
        return {Errc::invalid_spec, "hangard cannot write files in " + dir + ": " + errno_text()};
    }
    char block[4096] = {1};
    if (::write(src.fd, block, sizeof block) != static_cast<ssize_t>(sizeof block)) {
        return {Errc::invalid_spec, "hangard cannot write files in " + dir + ": " + errno_text()};
    }
    reflink = ::ioctl(dst.fd, FICLONE, src.fd) == 0;
    return {};
}

Pools::Pools(store::Db& db, std::string state_dir) : db_(db), state_dir_(std::move(state_dir)) {
    state_dir_ = fs::path(state_dir_).lexically_normal().string();
    if (state_dir_.size() > 1 && state_dir_.back() == '/') {
        state_dir_.pop_back();
    }
}

Status Pools::load() {
    HANGAR_ASSERT_REACTOR();
    Pool def;
    def.name = kDefault;
    def.path = state_dir_ + "/pools/default";
    std::error_code ec;
    fs::create_directories(def.path, ec);
    if (ec || ::chmod((state_dir_ + "/pools").c_str(), 0700) != 0 ||
        ::chmod(def.path.c_str(), 0700) != 0) {
        return {Errc::internal, "cannot make the default pool's directory " + def.path + ": " +
                                    (ec ? ec.message() : errno_text())};
    }
    if (Status st = probe_reflink(def.path, def.reflink); !st) {
        return st;
    }
    for (const auto& [name, text] : db_.load_documents(kTable)) {
        Pool p;
        if (Status st = decode_pool(text, p, true); !st || p.name != name) {
            spdlog::warn("pools: skipping the unreadable record of {}: {}", name,
                         st ? "its name differs" : st.message());
            continue;
        }
        if (name == kDefault) {
            def.created_at = p.created_at;  // its path is always the state dir's
            continue;
        }
        pools_[name] = std::move(p);
    }
    if (def.created_at.empty()) {
        def.created_at = now_rfc3339();
    }
    pools_[kDefault] = def;
    db_.put_document(kTable, def.name, to_json(def));  // the state dir may have moved
    return {};
}

std::vector<const Pool*> Pools::list() const {
    std::vector<const Pool*> out;
    for (const auto& [name, p] : pools_) {
        out.push_back(&p);
    }
    return out;
}

Status Pools::get(const std::string& name, const Pool** out) const {
    if (Status st = check_name("pool", name); !st) {
        return st;
    }
    auto it = pools_.find(name);
    if (it == pools_.end()) {
        return {Errc::not_found, "no pool named " + json::quote(name)};
    }
    *out = &it->second;
    return {};
}

Status Pools::create(const Caller& caller, Pool p, const Pool** out) {
    HANGAR_ASSERT_REACTOR();
    if (!caller.admin) {
        return {Errc::forbidden, "only an admin may create pools"};
    }
    if (pools_.count(p.name)) {
        return {Errc::conflict, "a pool named " + json::quote(p.name) + " already exists"};
    }
    if (pools_.size() >= kMaxPools) {
        return {Errc::unavailable,
                "there are " + std::to_string(kMaxPools) + " pools already; delete one first"};
    }
    // The directory itself, not a symlink to one.
    Fd dir{::open(p.path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)};
    if (dir.fd < 0) {
        return {Errc::invalid_spec,
                p.path + " is not a directory hangard can open: " + errno_text() +
                    (errno == ELOOP || errno == ENOTDIR ? " (a symlink is not followed)" : "")};
    }
    // Overlaps, also through symlinks further up either path.
    std::error_code ec;
    auto real = [&ec](const std::string& path) {
        std::string r = fs::canonical(path, ec).string();
        return ec ? path : r;
    };
    std::string here = real(p.path);
    for (const std::string& state : {state_dir_, real(state_dir_)}) {
        if (within(p.path, state) || within(state, p.path) || within(here, state) ||
            within(state, here)) {
            return {Errc::invalid_spec,
                    p.path + " is in or around hangard's state dir " + state_dir_};
        }
    }
    for (const auto& [name, other] : pools_) {
        std::string there = real(other.path);
        if (within(p.path, other.path) || within(other.path, p.path) || within(here, there) ||
            within(there, here)) {
            return {Errc::conflict, p.path + " is in or around pool " + name + "'s " + other.path};
        }
    }
    if (Status st = probe_reflink(p.path, p.reflink); !st) {
        return st;
    }
    p.created_at = now_rfc3339();
    auto& stored = pools_[p.name] = std::move(p);
    db_.put_document(kTable, stored.name, to_json(stored));
    *out = &stored;
    return {};
}

Status Pools::remove(const Caller& caller, const std::string& name) {
    HANGAR_ASSERT_REACTOR();
    const Pool* p = nullptr;
    if (Status st = get(name, &p); !st) {
        return st;
    }
    if (!caller.admin) {
        return {Errc::forbidden, "only an admin may delete pools"};
    }
    if (name == kDefault) {
        return {Errc::invalid_state, "pool default cannot be deleted"};
    }
    db_.delete_document(kTable, name);
    pools_.erase(name);
    return {};
}

PoolSpace Pools::space(const Pool& p) {
    return space_at(p.path);
}

PoolSpace Pools::space_at(const std::string& path) {
    PoolSpace s;
    struct statvfs v {};
    if (::statvfs(path.c_str(), &v) != 0) {
        s.status = {Errc::unavailable, path + ": " + errno_text()};
        return s;
    }
    s.capacity = static_cast<uint64_t>(v.f_blocks) * v.f_frsize;
    s.free = static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
    return s;
}

std::string Pools::to_json(const Pool& p) const {
    PoolSpace s = space(p);
    json::Writer w;
    w.begin_object()
        .field("name", p.name)
        .field("driver", p.driver)
        .field("path", p.path)
        .field("reflink", p.reflink)
        .field("created_at", p.created_at);
    if (s.status) {
        w.field("capacity_bytes", s.capacity).field("free_bytes", s.free);
    } else {
        w.field("error", s.status.message());
    }
    w.end_object();
    return w.take();
}

void Pools::render_metrics(std::string& out) const {
    metrics::header(out, "hangar_pools", "gauge", "Storage pools");
    out += "hangar_pools " + std::to_string(pools_.size()) + "\n";
    std::string cap, free;
    for (const auto& [name, p] : pools_) {
        PoolSpace s = space(p);
        if (!s.status) {
            continue;
        }
        std::string labels = "{pool=\"" + metrics::label(name) + "\"} ";
        cap += "hangar_pool_capacity_bytes" + labels + std::to_string(s.capacity) + "\n";
        free += "hangar_pool_free_bytes" + labels + std::to_string(s.free) + "\n";
    }
    metrics::header(out, "hangar_pool_capacity_bytes", "gauge",
                    "Size of the file system each pool is on");
    out += cap;
    metrics::header(out, "hangar_pool_free_bytes", "gauge",
                    "Bytes free for unprivileged writers on each pool's file system");
    out += free;
}

}  // namespace hangar::core
