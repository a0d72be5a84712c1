#include "core/disks.hpp"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <simdjson.h>
#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "core/quotas.hpp"
#include "hangar/names.hpp"
#include "util/json.hpp"
#include "util/json_body.hpp"
#include "util/metrics.hpp"
#include "util/process.hpp"
#include "util/reactor.hpp"
#include "util/sha256.hpp"
#include "util/time.hpp"
#include "util/user_files.hpp"

namespace hangar::core {

namespace fs = std::filesystem;

namespace {
constexpr const char* kTable = "disks";
constexpr uint64_t kGiB = 1ull << 30;
constexpr size_t kMaxDisksPerMachine = 32;
constexpr uint64_t kMaxSourceBytes = 64ull << 40;
constexpr const char* kTmpPrefix = ".new-";

std::string gib(uint64_t bytes) {
    return std::to_string((bytes + kGiB - 1) / kGiB) + " GiB";
}

bool disk_from_json(const std::string& text, Disk& d) {
    simdjson::dom::parser parser;
    simdjson::dom::object o;
    if (parser.parse(text).get(o) != simdjson::SUCCESS) {
        return false;
    }
    auto str = [&](const char* k, std::string& to) {
        std::string_view v;
        if (o[k].get(v) == simdjson::SUCCESS) {
            to = v;
        }
    };
    str("name", d.name);
    str("pool", d.pool);
    str("format", d.format);
    str("path", d.path);
    str("created_at", d.created_at);
    str("source_type", d.source_type);
    str("source", d.source);
    str("base", d.base);
    str("base_format", d.base_format);
    str("attached_to", d.attached_to);
    uint64_t u = 0;
    if (o["owner"].get(u) == simdjson::SUCCESS) {
        d.owner = static_cast<uint32_t>(u);
    }
    if (o["size_bytes"].get(u) == simdjson::SUCCESS) {
        d.size_bytes = u;
    }
    simdjson::dom::array layers;
    if (o["layers"].get(layers) == simdjson::SUCCESS) {
        for (auto l : layers) {
            std::string_view f;
            if (l.get(f) == simdjson::SUCCESS) {
                d.layers.emplace_back(f);
            }
        }
    }
    return !d.name.empty() && !d.path.empty() && (d.format == "qcow2" || d.format == "raw");
}
}  // namespace

Status decode_disk_request(std::string_view body, DiskRequest& out) {
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (Status st = json::parse_object(parser, body, doc, false); !st) {
        return st;
    }
    bool sized = false;
    simdjson::dom::object fields = doc.get_object().value_unsafe();
    for (auto [key, v] : fields) {
        Status st;
        if (key == "name") {
            st = json::get_string(v, key, out.name);
        } else if (key == "pool") {
            st = json::get_string(v, key, out.pool);
        } else if (key == "size_gib") {
            st = json::get_u32(v, key, out.size_gib);
            sized = true;
        } else if (key == "source") {
            simdjson::dom::object src;
            if (v.get(src) != simdjson::SUCCESS) {
                return {Errc::bad_request, "field 'source' must be an object"};
            }
            size_t n = 0;
            for (auto [sk, sv] : src) {
                if (sk != "image" && sk != "disk" && sk != "file") {
                    return json::unknown_field("source.", sk);
                }
                out.source_type = sk;
                if (Status s = json::get_string(sv, "source." + std::string(sk), out.source); !s) {
                    return s;
                }
                ++n;
            }
            if (n != 1) {
                return {Errc::bad_request,
                        "source takes exactly one of \"image\", \"disk\" or \"file\""};
            }
        } else {
            st = json::unknown_field("", key);
        }
        if (!st) {
            return st;
        }
    }
    if (out.name.empty()) {
        return {Errc::bad_request, "field 'name' is required"};
    }
    if (Status st = check_name("disk", out.name); !st) {
        return st;
    }
    if (sized && (out.size_gib < 1 || out.size_gib > kMaxDiskGib)) {
        return {Errc::bad_request, "size_gib must be between 1 and " + std::to_string(kMaxDiskGib)};
    }
    if (out.source_type == "empty" && !sized) {
        return {Errc::bad_request, "an empty disk needs size_gib"};
    }
    if (out.source_type == "image" || out.source_type == "disk") {
        if (Status st = check_name(out.source_type, out.source); !st) {
            return st;
        }
    }
    if (out.source_type == "file" && (out.source.empty() || out.source.front() != '/')) {
        return {Errc::bad_request, "source.file must be an absolute path"};
    }
    return {};
}

// One disk being made: its steps' state.
struct DiskMake {
    Disk disk;
    std::string tmp;      // the file in the pool until it is complete
    uint64_t resize = 0;  // grow the copy to this size at the end (0: no)
    std::string rebase;   // the base's name relative to the disk, for a copy in another pool
    UniqueFd source_fd;   // a user's file, opened as the user
    Disks::Done done;
    bool ended = false;
};

Disks::Disks(boost::asio::io_context& io, store::Db& db, EventBus& events, Pools& pools,
             Images& images, Machines& machines)
    : io_(io), db_(db), events_(events), pools_(pools), images_(images), machines_(machines) {
    // A deleted machine lets go of its disks (they stay); a VM that ends completes the detaches
    // its guest had not acknowledged (the device is gone with QEMU).
    subscription_ = events_.subscribe([this](const Event& e) {
        bool deleted = e.kind == EventType::machine_deleted;
        const auto* st = e.data<MachineStateChanged>();
        bool ended = st && !is_active(st->to);
        if (!deleted && !ended) {
            return;
        }
        std::vector<std::string> names;
        for (const auto& [name, d] : disks_) {
            if (d.attached_to == e.machine && (deleted || pending_detach_.count(name))) {
                names.push_back(name);
            }
        }
        for (const auto& name : names) {
            detached(name, deleted ? "machine.deleted" : "machine ended");
        }
    });
}

Disks::~Disks() {
    *alive_ = false;
    events_.unsubscribe(subscription_);
}

void Disks::load() {
    HANGAR_ASSERT_REACTOR();
    for (const auto& [name, text] : db_.load_documents(kTable)) {
        Disk d;
        std::error_code ec;
        if (!disk_from_json(text, d) || d.name != name) {
            spdlog::warn("disks: dropping the unreadable record of {}", name);
            db_.delete_document(kTable, name);
            continue;
        }
        if (!fs::is_regular_file(d.path, ec)) {
            spdlog::warn("disks: {}'s file {} is gone; dropping its record", name, d.path);
            db_.delete_document(kTable, name);
            continue;
        }
        disks_[name] = std::move(d);
    }
    // What interrupted creates left: only hangard's own temporary names.
    for (const auto* p : pools_.list()) {
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(p->path, ec)) {
            if (e.path().filename().string().rfind(kTmpPrefix, 0) == 0 && e.is_regular_file(ec)) {
                spdlog::info("disks: removing {}, left by an interrupted create",
                             e.path().string());
                fs::remove(e.path(), ec);
            }
        }
    }
}

void Disks::store(const Disk& d) {
    json::Writer w;
    w.begin_object()
        .field("name", d.name)
        .field("pool", d.pool)
        .field("format", d.format)
        .field("path", d.path)
        .field("created_at", d.created_at)
        .field("owner", d.owner)
        .field("size_bytes", d.size_bytes)
        .field("source_type", d.source_type)
        .field("source", d.source)
        .field("base", d.base)
        .field("base_format", d.base_format)
        .field("attached_to", d.attached_to);
    w.key("layers").begin_array();
    for (const auto& f : d.layers) {
        w.value(f);
    }
    w.end_array().end_object();
    db_.put_document(kTable, d.name, w.take());
}

std::vector<const Disk*> Disks::list(const Caller& caller) const {
    std::vector<const Disk*> out;
    for (const auto& [name, d] : disks_) {
        if (caller.admin || d.owner == caller.uid) {
            out.push_back(&d);
        }
    }
    return out;
}

Status Disks::visible(const Caller& caller, const std::string& name, Disk** out) const {
    if (Status st = check_name("disk", name); !st) {
        return st;
    }
    auto it = disks_.find(name);
    if (it == disks_.end() || (!caller.admin && it->second.owner != caller.uid)) {
        return {Errc::not_found, "no disk named " + json::quote(name)};
    }
    *out = const_cast<Disk*>(&it->second);
    return {};
}

Status Disks::get(const Caller& caller, const std::string& name, const Disk** out) const {
    Disk* d = nullptr;
    Status st = visible(caller, name, &d);
    *out = d;
    return st;
}

std::string Disks::to_json(const Disk& d) const {
    json::Writer w;
    w.begin_object()
        .field("name", d.name)
        .field("pool", d.pool)
        .field("format", d.format)
        .field("size_bytes", d.size_bytes)
        .field("size_gib", (d.size_bytes + kGiB - 1) / kGiB)
        .field("path", d.path)
        .field("owner", d.owner)
        .field("created_at", d.created_at);
    w.key("source").begin_object();
    if (d.source_type != "empty") {
        w.field(d.source_type, d.source);
    }
    w.end_object().key("used_by").begin_array();
    if (!d.attached_to.empty()) {
        w.value(d.attached_to);
    }
    w.end_array();
    if (pending_detach_.count(d.name)) {
        w.field("detach_pending", true);
    }
    w.end_object();
    return w.take();
}

std::vector<std::string> Disks::machine_items(const std::string& machine) const {
    std::vector<std::string> out;
    for (const auto& [name, d] : disks_) {
        if (d.attached_to == machine) {
            json::Writer w;
            w.begin_object()
                .field("name", name)
                .field("disk", name)
                .field("boot", false)
                .field("size_gib", (d.size_bytes + kGiB - 1) / kGiB);
            if (pending_detach_.count(name)) {
                w.field("detach_pending", true);
            }
            w.end_object();
            out.push_back(w.take());
        }
    }
    return out;
}

std::vector<DiskAttachment> Disks::attached(const std::string& machine) const {
    std::vector<DiskAttachment> out;
    for (const auto& [name, d] : disks_) {
        if (d.attached_to == machine) {
            // A top on snapshot layers: QEMU opens the chain its headers name (hangard's own
            // files, every backing named with its format).
            out.push_back({name, d.path, d.format, d.layers.empty() ? d.base : "",
                           d.layers.empty() ? d.base_format : ""});
        }
    }
    return out;
}

std::string Disks::users_of_image(const std::string& image) const {
    std::string who;
    for (const auto& [name, d] : disks_) {
        if (d.source_type == "image" && d.source == image) {
            who += (who.empty() ? "disk " : ", ") + name;
        }
    }
    return who;
}

void Disks::render_metrics(std::string& out) const {
    metrics::header(out, "hangar_disks", "gauge", "Disks in the storage pools.");
    out += "hangar_disks " + std::to_string(disks_.size()) + "\n";
    metrics::header(out, "hangar_disk_bytes", "gauge", "A disk's size as its guest sees it.");
    for (const auto& [name, d] : disks_) {
        out += "hangar_disk_bytes{disk=\"" + metrics::label(name) + "\",pool=\"" +
               metrics::label(d.pool) + "\"} " + std::to_string(d.size_bytes) + "\n";
    }
}

Disk* Disks::settled(const std::string& name, const Status& st, const Done& done) {
    busy_.erase(name);
    auto it = disks_.find(name);
    if (!st || it == disks_.end()) {
        done(st ? Status{Errc::not_found, "disk " + name + " is gone"} : st, nullptr);
        return nullptr;
    }
    return &it->second;
}

void Disks::answer_later(Done done, Status st) {
    boost::asio::post(io_, [done = std::move(done), st = std::move(st)] { done(st, nullptr); });
}

// ---- create ----------------------------------------------------------------------------

void Disks::create(const Caller& caller, DiskRequest req, Done done) {
    HANGAR_ASSERT_REACTOR();
    auto fail = [this, &done](Status st) { answer_later(std::move(done), std::move(st)); };
    if (Status st = name_free(req.name); !st) {
        return fail(st);
    }
    const Pool* pool = nullptr;
    if (Status st = pools_.get(req.pool, &pool); !st) {
        return fail({st.code() == Errc::not_found ? Errc::invalid_spec : st.code(),
                     st.message() + " (GET /v1/pools lists them)"});
    }
    auto mk = std::make_shared<DiskMake>();
    Disk& d = mk->disk;
    d.name = req.name;
    d.pool = pool->name;
    d.owner = caller.uid;
    d.source_type = req.source_type;
    d.source = req.source;
    d.format = "qcow2";
    uint64_t asked = uint64_t(req.size_gib) * kGiB;
    std::vector<std::string> argv;  // the first step
    const Disk* from = nullptr;
    if (req.source_type == "empty") {
        d.size_bytes = asked;
    } else if (req.source_type == "image") {
        const Image* img = nullptr;
        std::string base;
        if (Status st = images_.file_of(req.source, "disk", &img, base); !st) {
            return fail({st.code() == Errc::not_found ? Errc::invalid_spec : st.code(),
                         "source.image: " + st.message()});
        }
        d.base = base;
        d.base_format = img->format;
        d.size_bytes = std::max(asked, img->virtual_size);
        if (asked && asked < img->virtual_size) {
            return fail({Errc::invalid_spec, "size_gib is smaller than the image (" +
                                                 gib(img->virtual_size) +
                                                 "): a disk never shrinks"});
        }
    } else if (req.source_type == "disk") {
        Disk* src = nullptr;
        if (Status st = visible(caller, req.source, &src); !st) {
            return fail({st.code() == Errc::not_found ? Errc::invalid_spec : st.code(),
                         "source.disk: " + st.message()});
        }
        if (busy_.count(src->name)) {
            return fail({Errc::busy, "disk " + src->name + " is being changed; try again"});
        }
        const Machine* m = nullptr;
        if (!src->attached_to.empty() && machines_.get({0, true}, src->attached_to, &m) &&
            m->live) {
            return fail({Errc::invalid_state, "disk " + src->name + " is in use by the running " +
                                                  src->attached_to +
                                                  ": stop it or detach the disk to copy it"});
        }
        if (!src->layers.empty()) {
            return fail({Errc::invalid_state, "disk " + src->name +
                                                  " has snapshot layers: copying such a disk is "
                                                  "not available yet"});
        }
        from = src;
        d.format = src->format;
        d.base = src->base;
        d.base_format = src->base_format;
        d.size_bytes = std::max(asked, src->size_bytes);
        if (asked && asked < src->size_bytes) {
            return fail({Errc::invalid_spec, "size_gib is smaller than disk " + src->name + " (" +
                                                 gib(src->size_bytes) + "): a disk never shrinks"});
        }
    } else {
        OpenedFile f;
        if (Status st = open_user_file("source.file", req.source, {caller.uid, caller.admin}, false,
                                       kMaxSourceBytes, f);
            !st) {
            return fail(st);
        }
        ImageContent c;
        if (Status st = detect_image_content(f.fd.get(), "disk", c); !st) {
            return fail({st.code(), "source.file: " + st.message()});
        }
        d.format = c.format;
        d.size_bytes = std::max<uint64_t>(asked, static_cast<uint64_t>(f.st.st_size));
        mk->source_fd = std::move(f.fd);
    }
    d.path = pool->path + "/" + d.name + "." + d.format;
    if (Status st = reserve(caller, *pool, d.name, d.format, "the disk (" + gib(d.size_bytes) + ")",
                            d.size_bytes, d.size_bytes, mk->tmp);
        !st) {
        return fail(st);
    }
    mk->done = std::move(done);
    if (!d.base.empty()) {
        mk->rebase = fs::path(d.base).lexically_relative(pool->path).string();
    }
    auto alive = alive_;
    // Each step is a child process; any failure ends in finish_create.
    auto run = [this, alive, mk](std::vector<std::string> argv, bool with_source,
                                 std::function<void(const CaptureResult&)> next) {
        CaptureOptions co;
        co.argv = std::move(argv);
        if (with_source) {
            lseek(mk->source_fd.get(), 0, SEEK_SET);
            co.fds = {{mk->source_fd.get(), 3}};
        }
        co.merge_stderr = true;
        co.new_session = true;
        co.timeout = std::chrono::seconds(600 + mk->disk.size_bytes / (16u << 20));
        std::string tool = co.argv[0] + " " + co.argv[1];
        run_capture(
            io_, std::move(co), [this, alive, mk, tool, next](const Status& st, CaptureResult r) {
                if (!*alive) {
                    return;
                }
                if (!st || r.timed_out) {
                    return finish_create(
                        mk, {Errc::internal, tool + ": " + (st ? "timed out" : st.message())});
                }
                next(r);
            });
    };
    auto failed = [this, mk](const CaptureResult& r, const std::string& what) {
        finish_create(mk,
                      {Errc::internal, what + " (" + r.exit.describe() + "): " + tail_of(r.out)});
    };
    auto ok = [](const CaptureResult& r) { return r.exit.code == 0 && r.exit.signal == 0; };
    // The last steps of a copy: a new base name when it moved pools, then its size.
    auto finish_copy = [this, mk, run, failed, ok] {
        auto grow = [this, mk, run, failed, ok] {
            if (!mk->resize) {
                return finish_create(mk, {});
            }
            run({"qemu-img", "resize", "-q", "-f", mk->disk.format, mk->tmp,
                 std::to_string(mk->resize)},
                false, [this, mk, failed, ok](const CaptureResult& r) {
                    ok(r) ? finish_create(mk, {}) : failed(r, "growing the copy");
                });
        };
        if (mk->disk.base.empty()) {
            return grow();
        }
        run({"qemu-img", "rebase", "-u", "-f", "qcow2", "-F", mk->disk.base_format, "-b",
             mk->rebase, mk->tmp},
            false, [mk, grow, failed, ok](const CaptureResult& r) {
                ok(r) ? grow() : failed(r, "naming the copy's base image");
            });
    };
    if (req.source_type == "empty" || req.source_type == "image") {
        argv = {"qemu-img", "create", "-q", "-f", "qcow2"};
        if (req.source_type == "image") {
            argv.insert(argv.end(), {"-F", d.base_format, "-b", mk->rebase});
        }
        argv.insert(argv.end(), {mk->tmp, std::to_string(d.size_bytes)});
        run(argv, false, [this, mk, failed, ok](const CaptureResult& r) {
            ok(r) ? finish_create(mk, {}) : failed(r, "qemu-img create");
        });
    } else if (from) {
        mk->resize = d.size_bytes > from->size_bytes ? d.size_bytes : 0;
        run({"cp", "--reflink=auto", "--sparse=always", "--", from->path, mk->tmp}, false,
            [finish_copy, failed, ok](const CaptureResult& r) {
                ok(r) ? finish_copy() : failed(r, "copying the disk");
            });
    } else {
        // A user's file: copied by its descriptor, then the copy inspected like an image.
        run({"cp", "--reflink=auto", "--sparse=always", "/dev/fd/3", mk->tmp}, true,
            [this, mk, run, failed, ok, finish_copy, asked](const CaptureResult& r) {
                if (!ok(r)) {
                    return failed(r, "copying the file");
                }
                mk->source_fd.reset();
                run({"qemu-img", "info", "--output=json", "-f", mk->disk.format, "--", mk->tmp},
                    false, [this, mk, finish_copy, asked, ok](const CaptureResult& r) {
                        uint64_t size = 0;
                        Status st =
                            ok(r) ? check_disk_info(r.out, mk->disk.format, size)
                                  : Status{Errc::invalid_spec,
                                           "qemu-img cannot read the file: " + tail_of(r.out)};
                        if (st && asked && asked < size) {
                            st = {Errc::invalid_spec, "size_gib is smaller than the file's disk (" +
                                                          gib(size) + "): a disk never shrinks"};
                        }
                        if (!st) {
                            return finish_create(mk, {st.code(), "source.file: " + st.message()});
                        }
                        mk->disk.size_bytes = std::max(asked, size);
                        mk->resize = asked > size ? asked : 0;
                        finish_copy();
                    });
            });
    }
}

void Disks::finish_create(const std::shared_ptr<DiskMake>& mk, const Status& st) {
    if (mk->ended) {
        return;
    }
    mk->ended = true;
    busy_.erase(mk->disk.name);
    making_.erase(mk->disk.name);
    Status result = st;
    if (result && renameat2(AT_FDCWD, mk->tmp.c_str(), AT_FDCWD, mk->disk.path.c_str(),
                            RENAME_NOREPLACE) != 0) {
        result = {Errc::conflict,
                  "cannot move the disk into place at " + mk->disk.path + ": " + strerror(errno)};
    }
    if (!result) {
        ::unlink(mk->tmp.c_str());
        spdlog::warn("disks: creating {} failed: {}", mk->disk.name, result.message());
        return mk->done(result, nullptr);
    }
    mk->disk.created_at = now_rfc3339();
    Disk& d = disks_[mk->disk.name] = mk->disk;
    store(d);
    events_.publish(DiskCreated{d.name, to_json(d)}, "", d.owner);
    db_.flush();
    spdlog::info("disks: {} made in pool {} ({} bytes, {})", d.name, d.pool, d.size_bytes,
                 d.source_type);
    mk->done({}, &d);
}

// ---- quota -----------------------------------------------------------------------------

uint64_t Disks::bytes_of(uint32_t uid) const {
    uint64_t n = 0;
    for (const auto& [name, d] : disks_) {
        n += d.owner == uid ? d.size_bytes : 0;
    }
    for (const auto& [name, m] : making_) {
        n += m.first == uid ? m.second : 0;
    }
    return n;
}

Status Disks::within_quota(const Caller& caller, uint64_t more) const {
    if (!quotas_ || caller.admin || quotas_->exempt(caller.uid)) {
        return {};
    }
    QuotaUsage before = quotas_->usage(caller.uid), after = before;
    after.disk_bytes += more;
    return quotas_->check(caller.uid, before, after);
}

Status Disks::name_free(const std::string& name) const {
    if (disks_.count(name) || busy_.count(name)) {
        return {Errc::conflict, "disk " + json::quote(name) + " already exists"};
    }
    if (disks_.size() + busy_.size() >= kMaxDisks) {
        return {Errc::busy, "there are " + std::to_string(kMaxDisks) + " disks already"};
    }
    return {};
}

Status Disks::reserve(const Caller& caller, const Pool& pool, const std::string& name,
                      const std::string& format, const std::string& what, uint64_t data,
                      uint64_t size_bytes, std::string& tmp) {
    std::string path = pool.path + "/" + name + "." + format;
    std::error_code ec;
    if (fs::exists(fs::symlink_status(path, ec))) {
        return {Errc::conflict, "pool " + pool.name + " holds a file " + path +
                                    " already; hangard does not overwrite it"};
    }
    PoolSpace space = Pools::space(pool);
    if (space.status && data > space.free) {
        return {Errc::invalid_spec, what + " does not fit in the free space of pool " + pool.name +
                                        " (" + std::to_string(space.free / kGiB) + " GiB free)"};
    }
    if (Status st = within_quota(caller, size_bytes); !st) {
        return st;
    }
    tmp = pool.path + "/" + kTmpPrefix + name + "-" + random_hex(4) + "." + format;
    busy_.insert(name);
    making_[name] = {caller.uid, size_bytes};
    return {};
}

// ---- copies made by others (core::Clones) ------------------------------------------------

Status Disks::begin_copy(const Caller& caller, const std::string& name, const std::string& from,
                         uint64_t bytes, std::string& tmp) {
    HANGAR_ASSERT_REACTOR();
    if (Status st = check_name("disk", name); !st) {
        return st;
    }
    if (Status st = name_free(name); !st) {
        return st;
    }
    Disk* src = nullptr;
    if (Status st = visible(caller, from, &src); !st) {
        return st;
    }
    const Pool* pool = nullptr;
    if (Status st = pools_.get(src->pool, &pool); !st) {
        return st;
    }
    return reserve(caller, *pool, name, src->format,
                   "the copy of disk " + from + " (" + gib(bytes) + " of data)", bytes,
                   src->size_bytes, tmp);
}

Status Disks::end_copy(const Caller& caller, const std::string& name, const std::string& from,
                       const std::string& tmp, uint64_t size_bytes, const Disk** out) {
    HANGAR_ASSERT_REACTOR();
    Disk* src = nullptr;
    if (Status st = visible(caller, from, &src); !st) {
        abort_copy(name, tmp);
        return st;
    }
    Disk d;
    d.name = name;
    d.pool = src->pool;
    d.owner = caller.uid;
    d.format = src->format;
    d.source_type = "disk";
    d.source = from;
    d.base = src->base;
    d.base_format = src->base_format;
    d.size_bytes = size_bytes;
    d.path = fs::path(tmp).parent_path().string() + "/" + name + "." + d.format;
    busy_.erase(name);
    making_.erase(name);
    if (renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, d.path.c_str(), RENAME_NOREPLACE) != 0) {
        Status st{Errc::conflict,
                  "cannot move the disk into place at " + d.path + ": " + strerror(errno)};
        ::unlink(tmp.c_str());
        return st;
    }
    d.created_at = now_rfc3339();
    Disk& made = disks_[name] = std::move(d);
    store(made);
    events_.publish(DiskCreated{made.name, to_json(made)}, "", made.owner);
    db_.flush();
    spdlog::info("disks: {} made in pool {} as a copy of {} ({} bytes)", made.name, made.pool, from,
                 made.size_bytes);
    *out = &made;
    return {};
}

void Disks::abort_copy(const std::string& name, const std::string& tmp) {
    busy_.erase(name);
    making_.erase(name);
    ::unlink(tmp.c_str());
}

// ---- resize, delete --------------------------------------------------------------------

void Disks::resize(const Caller& caller, const std::string& name, uint32_t size_gib, Done done) {
    HANGAR_ASSERT_REACTOR();
    auto fail = [this, &done](Status st) { answer_later(std::move(done), std::move(st)); };
    Disk* d = nullptr;
    if (Status st = visible(caller, name, &d); !st) {
        return fail(st);
    }
    uint64_t bytes = uint64_t(size_gib) * kGiB;
    if (size_gib < 1 || size_gib > kMaxDiskGib) {
        return fail(
            {Errc::bad_request, "size_gib must be between 1 and " + std::to_string(kMaxDiskGib)});
    }
    if (bytes < d->size_bytes) {
        return fail(
            {Errc::invalid_spec, "disk " + name + " is " + gib(d->size_bytes) +
                                     "; shrinking a disk is refused (it would cut off data)"});
    }
    if (bytes == d->size_bytes) {
        const Disk* same = d;
        return boost::asio::post(io_, [done = std::move(done), same] { done({}, same); });
    }
    if (Status st = within_quota({d->owner, caller.admin}, bytes - d->size_bytes); !st) {
        return fail(st);
    }
    if (busy_.count(name)) {
        return fail({Errc::busy, "disk " + name + " is being changed; try again"});
    }
    const Pool* pool = nullptr;
    if (pools_.get(d->pool, &pool)) {
        PoolSpace space = Pools::space(*pool);
        if (space.status && bytes - d->size_bytes > space.free) {
            return fail({Errc::invalid_spec, "growing by " + gib(bytes - d->size_bytes) +
                                                 " does not fit in the free space of pool " +
                                                 pool->name});
        }
    }
    const Machine* m = nullptr;
    bool live = !d->attached_to.empty() && machines_.get({0, true}, d->attached_to, &m) && m->live;
    if (!d->attached_to.empty() && m && m->op != Op::none) {
        return fail({Errc::busy, d->attached_to + " is busy (" + std::string(to_string(m->op)) +
                                     "); try again"});
    }
    busy_.insert(name);
    auto alive = alive_;
    auto grown = [this, alive, name, bytes, done](const Status& st) {
        if (!*alive) {
            return;
        }
        Disk* changed = settled(name, st, done);
        if (!changed) {
            return;
        }
        Disk& d = *changed;
        d.size_bytes = bytes;
        store(d);
        events_.publish(DiskUpdated{name, to_json(d), "api:resize"}, "", d.owner);
        if (!d.attached_to.empty()) {
            machines_.disks_changed(d.attached_to, "api:resize disk " + name);
        }
        db_.flush();
        done({}, &d);
    };
    if (live) {
        // QEMU grows the file and tells the guest (its next I/O sees the new capacity).
        return m->runtime->resize_disk(m->instance(), name, bytes, grown);
    }
    CaptureOptions co;
    co.argv = {"qemu-img", "resize", "-q", "-f", d->format, d->path, std::to_string(bytes)};
    co.merge_stderr = true;
    co.new_session = true;
    co.timeout = std::chrono::seconds(300);
    run_capture(io_, std::move(co), [grown](const Status& st, CaptureResult r) {
        if (!st || r.exit.code != 0 || r.exit.signal != 0) {
            return grown(
                {Errc::internal, "qemu-img resize: " + (st ? tail_of(r.out) : st.message())});
        }
        grown({});
    });
}

Status Disks::remove(const Caller& caller, const std::string& name) {
    HANGAR_ASSERT_REACTOR();
    Disk* d = nullptr;
    if (Status st = visible(caller, name, &d); !st) {
        return st;
    }
    if (busy_.count(name)) {
        return {Errc::busy, "disk " + name + " is being changed; try again"};
    }
    if (!d->attached_to.empty()) {
        return {Errc::invalid_state,
                "disk " + name + " is attached to " + d->attached_to + "; detach it first"};
    }
    if (::unlink(d->path.c_str()) != 0 && errno != ENOENT) {
        return {Errc::internal, "cannot remove " + d->path + ": " + strerror(errno)};
    }
    for (const auto& f : d->layers) {
        if (::unlink(f.c_str()) != 0 && errno != ENOENT) {
            spdlog::warn("disks: cannot remove {}'s layer {}: {}", name, f, strerror(errno));
        }
    }
    uint32_t owner = d->owner;
    db_.delete_document(kTable, name);
    events_.publish(DiskDeleted{name}, "", owner);
    disks_.erase(name);
    return {};
}

Status Disks::usable(const std::string& name) const {
    if (busy_.count(name) || pending_detach_.count(name)) {
        return {Errc::busy, "disk " + name + " is being changed; try again"};
    }
    return {};
}

void Disks::set_top(const std::string& name, const std::string& path) {
    auto it = disks_.find(name);
    if (it == disks_.end()) {
        return;
    }
    it->second.path = path;
    it->second.format = "qcow2";
    store(it->second);
}

void Disks::add_layers(const std::string& name, const std::vector<std::string>& files) {
    auto it = disks_.find(name);
    if (it == disks_.end()) {
        return;
    }
    for (const auto& f : files) {
        if (std::find(it->second.layers.begin(), it->second.layers.end(), f) ==
            it->second.layers.end()) {
            it->second.layers.push_back(f);
        }
    }
    store(it->second);
}

void Disks::drop_layer(const std::string& name, const std::string& file) {
    auto it = disks_.find(name);
    if (it == disks_.end()) {
        return;
    }
    std::erase(it->second.layers, file);
    store(it->second);
}

// ---- attach, detach --------------------------------------------------------------------

Status Disks::machine_for(const Caller& caller, const std::string& name,
                          const Machine** out) const {
    if (Status st = machines_.get(caller, name, out); !st) {
        return st;
    }
    if ((*out)->type != MachineType::vm) {
        return {Errc::invalid_spec, "disks attach to VMs; " + name + " is a container"};
    }
    if ((*out)->op != Op::none) {
        return {Errc::busy, name + " is busy (" + std::string(to_string((*out)->op)) +
                                "); try again when it is done"};
    }
    return {};
}

void Disks::attach(const Caller& caller, const std::string& machine, const std::string& disk,
                   Done done) {
    HANGAR_ASSERT_REACTOR();
    auto fail = [this, &done](Status st) { answer_later(std::move(done), std::move(st)); };
    const Machine* m = nullptr;
    Disk* d = nullptr;
    if (Status st = machine_for(caller, machine, &m); !st) {
        return fail(st);
    }
    if (Status st = visible(caller, disk, &d); !st) {
        return fail(st);
    }
    if (!d->attached_to.empty()) {
        return fail({Errc::conflict, "disk " + disk + " is attached to " + d->attached_to +
                                         (d->attached_to == machine ? " already" : "")});
    }
    if (busy_.count(disk)) {
        return fail({Errc::busy, "disk " + disk + " is being changed; try again"});
    }
    if (attached(machine).size() >= kMaxDisksPerMachine) {
        return fail({Errc::invalid_spec, machine + " has " + std::to_string(kMaxDisksPerMachine) +
                                             " disks attached already"});
    }
    auto alive = alive_;
    auto attached_now = [this, alive, machine, disk, done](const Status& st) {
        if (!*alive) {
            return;
        }
        Disk* d = settled(disk, st, done);
        if (!d) {
            return;
        }
        d->attached_to = machine;
        store(*d);
        events_.publish(DiskUpdated{disk, to_json(*d), "api:attach"}, "", d->owner);
        machines_.disks_changed(machine, "api:attach disk " + disk);
        db_.flush();
        done({}, d);
    };
    busy_.insert(disk);
    if (m->live) {
        return m->runtime->attach_disk(
            m->instance(), {d->name, d->path, d->format, d->base, d->base_format}, attached_now);
    }
    boost::asio::post(io_, [attached_now] { attached_now({}); });
}

void Disks::detach(const Caller& caller, const std::string& machine, const std::string& disk,
                   Done done) {
    HANGAR_ASSERT_REACTOR();
    auto fail = [this, &done](Status st) { answer_later(std::move(done), std::move(st)); };
    const Machine* m = nullptr;
    Disk* d = nullptr;
    if (Status st = machines_.get(caller, machine, &m); !st) {
        return fail(st);
    }
    if (Status st = visible(caller, disk, &d); !st) {
        return fail(st);
    }
    if (d->attached_to != machine) {
        return fail({Errc::not_found, "disk " + disk + " is not attached to " + machine});
    }
    if (pending_detach_.count(disk)) {
        return fail({Errc::busy,
                     "the detach of " + disk + " is pending: the guest has not released it yet"});
    }
    if (busy_.count(disk)) {
        return fail({Errc::busy, "disk " + disk + " is being changed; try again"});
    }
    if (m->op != Op::none) {
        return fail({Errc::busy, machine + " is busy (" + std::string(to_string(m->op)) +
                                     "); try again when it is done"});
    }
    if (std::string who = snapshot_users_ ? snapshot_users_(disk) : ""; !who.empty()) {
        return fail({Errc::invalid_state,
                     "disk " + disk + " is in " + who + ": delete those snapshots first"});
    }
    if (!m->live) {
        detached(disk, "api:detach");
        return boost::asio::post(io_, [this, disk, done] {
            auto it = disks_.find(disk);
            done({}, it == disks_.end() ? nullptr : &it->second);
        });
    }
    busy_.insert(disk);
    auto alive = alive_;
    m->runtime->detach_disk(
        m->instance(), disk, kDetachDeadline, [this, alive, disk, done](const Status& st) {
            if (!*alive) {
                return;
            }
            busy_.erase(disk);
            auto it = disks_.find(disk);
            if (st.code() == Errc::timeout && it != disks_.end()) {
                // The guest may release it later (Machines' disk_released), or the VM ends.
                pending_detach_.insert(disk);
                events_.publish(DiskUpdated{disk, to_json(it->second), "api:detach pending"}, "",
                                it->second.owner);
                machines_.disks_changed(it->second.attached_to, "api:detach pending " + disk);
                return done(st, nullptr);
            }
            if (!st) {
                return done(st, nullptr);
            }
            detached(disk, "qmp:DEVICE_DELETED");
            it = disks_.find(disk);
            done({}, it == disks_.end() ? nullptr : &it->second);
        });
}

void Disks::released(const std::string& machine, const std::string& disk) {
    auto it = disks_.find(disk);
    if (it != disks_.end() && it->second.attached_to == machine) {
        detached(disk, "qmp:DEVICE_DELETED (late)");
    }
}

void Disks::detached(const std::string& name, const std::string& reason) {
    auto it = disks_.find(name);
    if (it == disks_.end() || it->second.attached_to.empty()) {
        return;
    }
    pending_detach_.erase(name);
    std::string machine = it->second.attached_to;
    it->second.attached_to.clear();
    store(it->second);
    events_.publish(DiskUpdated{name, to_json(it->second), reason}, "", it->second.owner);
    machines_.disks_changed(machine, reason + " disk " + name);
    db_.flush();
}

}  // namespace hangar::core
