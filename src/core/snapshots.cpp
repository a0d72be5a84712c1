#include "core/snapshots.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>

#include <simdjson.h>
#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "hangar/machine_files.hpp"
#include "hangar/names.hpp"
#include "util/file_tail.hpp"
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
constexpr const char* kTable = "snapshots";
constexpr const char* kHeads = "snapshot_heads";
constexpr uint64_t kGiB = 1ull << 30;

std::string key_of(const std::string& machine, const std::string& name) {
    return machine + "/" + name;
}
std::string rel_to(const std::string& file, const std::string& dir) {
    return fs::path(file).lexically_relative(dir).string();
}
std::string str_of(simdjson::dom::element e, const char* k) {
    std::string_view v;
    return e[k].get(v) == simdjson::SUCCESS ? std::string(v) : std::string();
}
// Whether a snapshot froze a file of some disk (else it is its memory or nothing).
bool has_layers(const Snapshot& s) {
    for (const auto& l : s.layers) {
        if (!l.file.empty()) {
            return true;
        }
    }
    return false;
}
void unlink_file(const std::string& f) {
    if (!f.empty() && ::unlink(f.c_str()) != 0 && errno != ENOENT) {
        spdlog::warn("snapshots: cannot remove {}: {}", f, strerror(errno));
    }
}
}  // namespace

// A journaled step of a machine's snapshots: written before the first file changes.
struct Snapshots::Journal {
    std::string op;     // "create", "restore", "delete"
    std::string snap;   // the snapshot
    std::string phase;  // "files": being made (records unchanged); "cleanup": committed
    std::vector<std::pair<std::string, std::string>> tops;  // (disk, new top file)
    std::vector<std::string> remove;                        // files to remove at the end
    Snapshot record;                                        // a create's snapshot to be
};

// A machine's state besides its snapshots.
struct Snapshots::Head {
    std::string current;  // the snapshot the machine's disks descend from
    std::string root;     // the root disk's top when snapshots moved it; "": the default
    uint64_t seq = 0;     // snapshots taken, for their order
    std::optional<Journal> journal;
};

// A disk as a snapshot covers it.
struct Snapshots::Volume {
    std::string disk;               // "" for the root disk
    std::string top;                // the file the VM writes
    std::string dir;                // where its layers live
    std::string base, base_format;  // the disk image a root disk is an overlay on
    uint64_t size = 0;
    bool exists = true;  // false: a root disk not made yet
};

// One create, restore or delete in flight.
struct Snapshots::Step {
    std::string machine;
    Journal j;
    std::vector<Volume> vols;
    InstanceRef ref;
    Runtime* runtime = nullptr;
    bool live = false;
    Done done;
    // A delete's rebases: (child file, its new backing, that backing's format).
    struct Rebase {
        std::string child, backing, backing_format, layer;
    };
    std::vector<Rebase> rebases;
    std::set<size_t> merged;  // rebases the running QEMU did (block-stream)
    // A delete's layers (first), and the files that may be made on them.
    std::vector<std::string> to_probe;
    bool ended = false;
};

namespace {
void write_layers(json::Writer& w, const std::vector<SnapshotLayer>& layers) {
    w.key("layers").begin_array();
    for (const auto& l : layers) {
        w.begin_object()
            .field("disk", l.disk)
            .field("file", l.file)
            .field("backing", l.backing)
            .field("backing_format", l.backing_format)
            .end_object();
    }
    w.end_array();
}
void write_record(json::Writer& w, const Snapshot& s, uint64_t seq) {
    w.begin_object()
        .field("machine", s.machine)
        .field("name", s.name)
        .field("created_at", s.created_at)
        .field("parent", s.parent)
        .field("live", s.live)
        .field("seq", seq)
        .field("memory", s.memory)
        .field("memory_bytes", s.memory_bytes)
        .field("hardware", s.hardware);
    write_layers(w, s.layers);
    w.end_object();
}
bool read_record(simdjson::dom::element o, Snapshot& s, uint64_t& seq) {
    s.machine = str_of(o, "machine");
    s.name = str_of(o, "name");
    s.created_at = str_of(o, "created_at");
    s.parent = str_of(o, "parent");
    bool b = false;
    if (o["live"].get(b) == simdjson::SUCCESS) {
        s.live = b;
    }
    if (o["seq"].get(seq) != simdjson::SUCCESS) {
        seq = 0;
    }
    s.memory = str_of(o, "memory");
    s.hardware = str_of(o, "hardware");
    if (o["memory_bytes"].get(s.memory_bytes) != simdjson::SUCCESS) {
        s.memory_bytes = 0;
    }
    simdjson::dom::array layers;
    if (o["layers"].get(layers) != simdjson::SUCCESS) {
        return false;
    }
    for (auto l : layers) {
        s.layers.push_back({str_of(l, "disk"), str_of(l, "file"), str_of(l, "backing"),
                            str_of(l, "backing_format")});
    }
    return !s.machine.empty() && !s.name.empty();
}
}  // namespace

Status decode_snapshot_request(std::string_view body, SnapshotRequest& out) {
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
        } else if (key == "memory") {
            st = json::get_bool(v, key, out.memory);
        } else if (key == "description") {
            st = json::get_string(v, key, out.description);
            if (st && out.description.size() > 1024) {
                st = {Errc::bad_request, "description is longer than 1024 bytes"};
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
    return check_name("snapshot", out.name);
}

Status decode_restore_request(std::string_view body, bool& memory) {
    memory = true;
    if (body.empty()) {
        return {};
    }
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (Status st = json::parse_object(parser, body, doc, false); !st) {
        return st;
    }
    simdjson::dom::object fields = doc.get_object().value_unsafe();
    for (auto [key, v] : fields) {
        Status st = key == "memory" ? json::get_bool(v, key, memory) : json::unknown_field("", key);
        if (!st) {
            return st;
        }
    }
    return {};
}

Snapshots::Snapshots(boost::asio::io_context& io, store::Db& db, EventBus& events,
                     Machines& machines, Disks& disks, Images& images)
    : io_(io), db_(db), events_(events), machines_(machines), disks_(disks), images_(images) {
    subscription_ = events_.subscribe([this](const Event& e) {
        if (e.kind == EventType::machine_deleted) {
            machine_deleted(e.machine);
        }
    });
}

Snapshots::~Snapshots() {
    *alive_ = false;
    events_.unsubscribe(subscription_);
}

// ---- records ---------------------------------------------------------------------------

void Snapshots::load() {
    HANGAR_ASSERT_REACTOR();
    simdjson::dom::parser parser;
    for (const auto& [key, text] : db_.load_documents(kHeads)) {
        simdjson::dom::element o;
        if (parser.parse(text).get(o) != simdjson::SUCCESS) {
            spdlog::warn("snapshots: dropping the unreadable head of {}", key);
            db_.delete_document(kHeads, key);
            continue;
        }
        auto h = std::make_unique<Head>();
        h->current = str_of(o, "current");
        h->root = str_of(o, "root");
        if (o["seq"].get(h->seq) != simdjson::SUCCESS) {
            h->seq = 0;
        }
        simdjson::dom::element jo;
        if (o["journal"].get(jo) == simdjson::SUCCESS) {
            Journal j;
            j.op = str_of(jo, "op");
            j.snap = str_of(jo, "snap");
            j.phase = str_of(jo, "phase");
            simdjson::dom::array a;
            if (jo["tops"].get(a) == simdjson::SUCCESS) {
                for (auto t : a) {
                    j.tops.emplace_back(str_of(t, "disk"), str_of(t, "file"));
                }
            }
            if (jo["remove"].get(a) == simdjson::SUCCESS) {
                for (auto t : a) {
                    std::string_view f;
                    if (t.get(f) == simdjson::SUCCESS) {
                        j.remove.emplace_back(f);
                    }
                }
            }
            simdjson::dom::element rec;
            uint64_t seq = 0;
            if (jo["record"].get(rec) == simdjson::SUCCESS) {
                read_record(rec, j.record, seq);
            }
            h->journal = std::move(j);
            recovering_.insert(key);  // until recover() has ended the step
        }
        heads_[key] = std::move(h);
    }
    for (const auto& [key, text] : db_.load_documents(kTable)) {
        simdjson::dom::element o;
        Snapshot s;
        uint64_t seq = 0;
        if (parser.parse(text).get(o) != simdjson::SUCCESS || !read_record(o, s, seq) ||
            key != key_of(s.machine, s.name)) {
            spdlog::warn("snapshots: dropping the unreadable record {}", key);
            db_.delete_document(kTable, key);
            continue;
        }
        auto& head = heads_[s.machine];
        if (!head) {
            head = std::make_unique<Head>();
        }
        snaps_[s.machine][s.name] = std::move(s);
    }
}

void Snapshots::store_head(const std::string& machine) {
    const Head& h = *heads_.at(machine);
    json::Writer w;
    w.begin_object().field("current", h.current).field("root", h.root).field("seq", h.seq);
    if (h.journal) {
        const Journal& j = *h.journal;
        w.key("journal")
            .begin_object()
            .field("op", j.op)
            .field("snap", j.snap)
            .field("phase", j.phase);
        w.key("tops").begin_array();
        for (const auto& [disk, file] : j.tops) {
            w.begin_object().field("disk", disk).field("file", file).end_object();
        }
        w.end_array().key("remove").begin_array();
        for (const auto& f : j.remove) {
            w.value(f);
        }
        w.end_array();
        if (j.op == "create") {
            w.key("record");
            write_record(w, j.record, 0);
        }
        w.end_object();
    }
    w.end_object();
    db_.put_document(kHeads, machine, w.take());
}

void Snapshots::store_snapshot(const Snapshot& s) {
    json::Writer w;
    uint64_t seq = 0;
    // The order of snapshots is their creation time; seq breaks ties.
    auto hit = heads_.find(s.machine);
    if (hit != heads_.end()) {
        seq = hit->second->seq;
    }
    write_record(w, s, seq);
    db_.put_document(kTable, key_of(s.machine, s.name), w.take());
}

Status Snapshots::owned(const Caller& caller, const std::string& machine,
                        const Machine** out) const {
    if (Status st = machines_.get(caller, machine, out); !st) {
        return st;
    }
    if ((*out)->type != MachineType::vm) {
        return {Errc::invalid_spec, machine +
                                        " is a container: snapshots of containers' root file "
                                        "systems are not available yet"};
    }
    return {};
}

Status Snapshots::list(const Caller& caller, const std::string& machine,
                       std::vector<const Snapshot*>& out) const {
    const Machine* m = nullptr;
    if (Status st = owned(caller, machine, &m); !st) {
        return st;
    }
    auto it = snaps_.find(machine);
    if (it == snaps_.end()) {
        return {};
    }
    for (const auto& [name, s] : it->second) {
        out.push_back(&s);
    }
    std::sort(out.begin(), out.end(), [](const Snapshot* a, const Snapshot* b) {
        return a->created_at != b->created_at ? a->created_at < b->created_at : a->name < b->name;
    });
    return {};
}

Status Snapshots::get(const Caller& caller, const std::string& machine, const std::string& name,
                      const Snapshot** out) const {
    const Machine* m = nullptr;
    if (Status st = owned(caller, machine, &m); !st) {
        return st;
    }
    if (Status st = check_name("snapshot", name); !st) {
        return st;
    }
    auto it = snaps_.find(machine);
    if (it == snaps_.end() || !it->second.count(name)) {
        return {Errc::not_found, "machine " + machine + " has no snapshot " + json::quote(name)};
    }
    *out = &it->second.at(name);
    return {};
}

std::string Snapshots::to_json(const Snapshot& s) const {
    json::Writer w;
    auto hit = heads_.find(s.machine);
    bool current = hit != heads_.end() && hit->second->current == s.name;
    w.begin_object()
        .field("name", s.name)
        .field("machine", s.machine)
        .field("created_at", s.created_at)
        .field("parent", s.parent)
        .field("current", current)
        .field("memory", !s.memory.empty())
        .field("running", s.live);
    if (!s.memory.empty()) {
        w.field("memory_bytes", s.memory_bytes);
    }
    w.key("disks").begin_array();
    for (const auto& l : s.layers) {
        w.begin_object();
        if (l.disk.empty()) {
            w.field("root", true);
        } else {
            w.field("disk", l.disk);
        }
        w.field("file", l.file).end_object();
    }
    w.end_array().end_object();
    return w.take();
}

std::string Snapshots::take_resume(const std::string& machine) {
    auto it = resume_.find(machine);
    if (it == resume_.end()) {
        MachineFiles files(machines_.machine_dir(machine));
        std::string warm = files.warm_start().string();
        if (::access(warm.c_str(), R_OK) != 0) {
            return "";
        }
        std::string saved;
        read_file_tail(files.warm_start_hardware().string(), 4096, saved);
        std::string now = hardware(machine);
        // QEMU opens the file within this start; then it goes, whatever the start's outcome.
        boost::asio::post(io_, [files] {
            std::error_code ec;
            std::filesystem::remove(files.warm_start(), ec);
            std::filesystem::remove(files.warm_start_hardware(), ec);
        });
        if (saved != now) {
            spdlog::warn("{}: its saved guest had {}; it has {} now: it boots instead", machine,
                         saved, now);
            return "";
        }
        spdlog::info("{}: a warm start from {}", machine, warm);
        return warm;
    }
    std::string f = std::move(it->second);
    resume_.erase(it);
    return f;
}

std::string Snapshots::hardware(const std::string& machine) const {
    const Machine* m = nullptr;
    return machines_.get({0, true}, machine, &m) ? hardware_of(*m) : "";
}

std::string Snapshots::hardware_of(const Machine& m) const {
    std::string h = "cpus=" + std::to_string(m.spec.cpus) +
                    " memory_mib=" + std::to_string(m.spec.memory_mib) +
                    " firmware=" + (m.spec.firmware.empty() ? "bios" : m.spec.firmware) +
                    " root=" + (m.spec.image.empty() ? "no" : "yes") + " disks=";
    for (const auto& a : disks_.attached(m.spec.name)) {
        h += a.name + ",";
    }
    return h;
}

std::string Snapshots::root_disk(const std::string& machine) const {
    auto it = heads_.find(machine);
    return it == heads_.end() ? "" : it->second->root;
}

std::string Snapshots::users_of_disk(const std::string& disk) const {
    for (const auto& [m, snaps] : snaps_) {
        std::string names;
        for (const auto& [name, s] : snaps) {
            for (const auto& l : s.layers) {
                if (l.disk == disk) {
                    names += (names.empty() ? "" : ", ") + name;
                    break;
                }
            }
        }
        if (!names.empty()) {
            return "snapshots " + names + " of " + m;
        }
    }
    return "";
}

void Snapshots::render_metrics(std::string& out) const {
    metrics::header(out, "hangar_snapshots", "gauge", "Snapshots of a machine's disks.");
    for (const auto& [m, snaps] : snaps_) {
        out += "hangar_snapshots{machine=\"" + metrics::label(m) + "\"} " +
               std::to_string(snaps.size()) + "\n";
    }
}

Status Snapshots::volumes(const Machine& m, std::vector<Volume>& out) const {
    const std::string& name = m.spec.name;
    if (!m.spec.image.empty()) {
        Volume v;
        v.dir = machines_.machine_dir(name).string();
        std::string root = root_disk(name);
        v.top =
            root.empty() ? MachineFiles(machines_.machine_dir(name)).root_disk().string() : root;
        v.exists = ::access(v.top.c_str(), F_OK) == 0;
        if (!root.empty() && !v.exists) {
            return {Errc::internal, "the root disk " + v.top + " of " + name + " is missing"};
        }
        const Image* img = nullptr;
        if (Status st = images_.file_of(m.spec.image, "disk", &img, v.base); !st) {
            return {Errc::invalid_state, "the root disk's image: " + st.message()};
        }
        v.base_format = img->format;
        v.size = uint64_t(m.spec.disk_gib) * kGiB;
        out.push_back(std::move(v));
    }
    for (const auto& a : disks_.attached(name)) {
        const Disk* d = nullptr;
        if (!disks_.get({0, true}, a.name, &d)) {
            continue;
        }
        if (Status st = disks_.usable(a.name); !st) {
            return st;
        }
        if (d->format != "qcow2") {
            return {Errc::invalid_spec, "disk " + a.name +
                                            " is raw: snapshots need qcow2 disks (make a qcow2 "
                                            "copy with POST /v1/disks and attach that)"};
        }
        Volume v;
        v.disk = a.name;
        v.top = d->path;
        v.dir = fs::path(d->path).parent_path().string();
        v.size = d->size_bytes;
        out.push_back(std::move(v));
    }
    return {};
}

// ---- steps -----------------------------------------------------------------------------

void Snapshots::run_qemu_img(std::vector<std::string> argv,
                             std::function<void(const Status&, const std::string&)> done) {
    CaptureOptions co;
    co.argv = std::move(argv);
    co.merge_stderr = true;
    co.new_session = true;
    co.timeout = std::chrono::seconds(3600);
    std::string what = co.argv[0] + " " + co.argv[1];
    auto alive = alive_;
    run_capture(io_, std::move(co),
                [alive, what, done = std::move(done)](const Status& st, CaptureResult r) {
                    if (!*alive) {
                        return;
                    }
                    if (!st || r.timed_out || r.exit.code != 0 || r.exit.signal != 0) {
                        std::string why = !st           ? st.message()
                                          : r.timed_out ? std::string("timed out")
                                                        : r.exit.describe() + ": " + tail_of(r.out);
                        return done({Errc::internal, what + ": " + why}, r.out);
                    }
                    done({}, r.out);
                });
}

namespace {
struct Info {
    uint64_t size = 0;
    std::string backing, backing_format;
};
bool parse_info(const std::string& text, Info& out) {
    simdjson::dom::parser parser;
    simdjson::dom::element o;
    if (parser.parse(text).get(o) != simdjson::SUCCESS ||
        o["virtual-size"].get(out.size) != simdjson::SUCCESS) {
        return false;
    }
    out.backing = str_of(o, "full-backing-filename");
    out.backing_format = str_of(o, "backing-filename-format");
    return true;
}
}  // namespace

void Snapshots::probe(const std::string& file,
                      std::function<void(const Status&, uint64_t, bool)> done) {
    // Without -U qemu-img takes the image's lock: it fails while a QEMU writes the file.
    run_qemu_img(
        {"qemu-img", "info", "--output=json", "-f", "qcow2", "--", file},
        [this, file, done](const Status& st, const std::string& out) {
            Info info;
            if (st && parse_info(out, info)) {
                return done({}, info.size, false);
            }
            if (out.find("lock") == std::string::npos) {
                return done(
                    st ? Status{Errc::internal, "qemu-img info " + file + ": unreadable answer"}
                       : st,
                    0, false);
            }
            run_qemu_img({"qemu-img", "info", "-U", "--output=json", "-f", "qcow2", "--", file},
                         [file, done](const Status& st, const std::string& out) {
                             Info info;
                             if (st && parse_info(out, info)) {
                                 return done({}, info.size, true);
                             }
                             done(st ? Status{Errc::internal,
                                              "qemu-img info " + file + ": unreadable answer"}
                                     : st,
                                  0, true);
                         });
        });
}

// Makes the journal's new tops, one after another: each an empty qcow2 on its backing.
void Snapshots::create_files(const std::shared_ptr<Step>& step, size_t i,
                             std::function<void()> next) {
    if (i == step->j.tops.size()) {
        return next();
    }
    const auto& [disk, file] = step->j.tops[i];
    const Volume* vol = nullptr;
    for (const auto& v : step->vols) {
        if (v.disk == disk) {
            vol = &v;
        }
    }
    if (file.empty() || !vol) {
        return create_files(step, i + 1, std::move(next));
    }
    // What the new top is made on: the current top (create), or the snapshot's layer, or the
    // image for a root disk that had not been made when the snapshot was taken (restore).
    std::string backing = vol->top, format = "qcow2";
    if (step->j.op == "restore") {
        const Snapshot& s = snaps_[step->machine][step->j.snap];
        for (const auto& l : s.layers) {
            if (l.disk == disk) {
                backing = l.file.empty() ? vol->base : l.file;
                format = l.file.empty() ? vol->base_format : "qcow2";
            }
        }
    }
    // Named relative to the new file, so a moved state dir or pool still works; -u: the
    // backing file may be held by the running QEMU, and the size is known.
    std::vector<std::string> argv = {"qemu-img", "create",
                                     "-q",       "-f",
                                     "qcow2",    "-u",
                                     "-F",       format,
                                     "-b",       rel_to(backing, vol->dir),
                                     file,       std::to_string(vol->size)};
    auto go = [this, step, i, next, argv](uint64_t size) mutable {
        argv.back() = std::to_string(size);
        run_qemu_img(std::move(argv), [this, step, i, next](const Status& st, const std::string&) {
            if (!st) {
                return finish(step, st);
            }
            create_files(step, i + 1, next);
        });
    };
    if (step->j.op == "create") {
        // The top's own size (a root disk's may differ from the spec's disk_gib), and what it
        // is made on: the layer's backing.
        return run_qemu_img(
            {"qemu-img", "info", "-U", "--output=json", "-f", "qcow2", "--", vol->top},
            [this, step, i, go](const Status& st, const std::string& out) mutable {
                Info info;
                if (!st || !parse_info(out, info)) {
                    return finish(step, st ? Status{Errc::internal,
                                                    "qemu-img info: unreadable "
                                                    "answer"}
                                           : st);
                }
                auto& l = step->j.record.layers[i];
                l.backing = info.backing;
                l.backing_format = info.backing_format;
                go(info.size);
            });
    }
    go(vol->size);
}

void Snapshots::set_tops(const std::string& machine, const Journal& j) {
    Head& h = *heads_.at(machine);
    for (const auto& [disk, file] : j.tops) {
        if (file.empty()) {
            continue;
        }
        if (disk.empty()) {
            h.root = file;
        } else {
            disks_.set_top(disk, file);
        }
    }
}

void Snapshots::sync_disk_layers(const std::string& machine) {
    std::map<std::string, std::vector<std::string>> layers;
    for (const auto& [name, s] : snaps_[machine]) {
        for (const auto& l : s.layers) {
            if (!l.disk.empty() && !l.file.empty()) {
                layers[l.disk].push_back(l.file);
            }
        }
    }
    for (const auto& [disk, files] : layers) {
        disks_.add_layers(disk, files);
    }
}

void Snapshots::commit_create(const std::string& machine, const Journal& j) {
    Head& h = *heads_.at(machine);
    Snapshot s = j.record;
    ++h.seq;
    h.current = s.name;
    set_tops(machine, j);
    h.journal.reset();
    snaps_[machine][s.name] = s;
    store_snapshot(s);
    store_head(machine);
    sync_disk_layers(machine);
    const Machine* m = nullptr;
    uint32_t owner = machines_.get({0, true}, machine, &m) ? m->spec.owner : 0;
    events_.publish(SnapshotCreated{s.name, to_json(snaps_[machine][s.name])}, machine, owner);
    db_.flush();
    spdlog::info("{}: snapshot {} taken ({} disks{}{})", machine, s.name, s.layers.size(),
                 s.live ? ", running" : "", s.memory.empty() ? "" : ", memory");
}

void Snapshots::finish(const std::shared_ptr<Step>& step, const Status& st) {
    if (step->ended) {
        return;
    }
    step->ended = true;
    Head& h = *heads_.at(step->machine);
    const Snapshot* result = nullptr;
    if (!st) {
        // Nothing was committed: what the step made goes, the records stay as they were.
        for (const auto& [disk, file] : step->j.tops) {
            unlink_file(file);
        }
        if (step->j.op == "create") {
            unlink_file(step->j.record.memory);
        }
        h.journal.reset();
        store_head(step->machine);
        db_.flush();
        spdlog::warn("{}: snapshot {} of {} failed: {}", step->machine, step->j.op, step->j.snap,
                     st.message());
    } else {
        auto it = snaps_[step->machine].find(step->j.snap);
        result = it == snaps_[step->machine].end() ? nullptr : &it->second;
    }
    recovering_.erase(step->machine);
    machines_.release(step->machine, Op::snapshot);
    if (step->done) {
        step->done(st, result);
    }
}

// ---- create, restore, delete -----------------------------------------------------------

void Snapshots::create(const Caller& caller, const std::string& machine, SnapshotRequest req,
                       Done done) {
    HANGAR_ASSERT_REACTOR();
    auto fail = [this, &done](Status st) {
        boost::asio::post(io_, [done = std::move(done), st] { done(st, nullptr); });
    };
    const Machine* m = nullptr;
    if (Status st = owned(caller, machine, &m); !st) {
        return fail(st);
    }
    auto& snaps = snaps_[machine];
    if (snaps.count(req.name)) {
        return fail({Errc::conflict, machine + " has a snapshot " + req.name + " already"});
    }
    if (snaps.size() >= kMaxSnapshotsPerMachine) {
        return fail({Errc::invalid_spec, machine + " has " +
                                             std::to_string(kMaxSnapshotsPerMachine) +
                                             " snapshots already: delete one first"});
    }
    bool live = m->live && (m->state == MachineState::running || m->state == MachineState::paused);
    if (!live && m->state != MachineState::stopped && m->state != MachineState::crashed) {
        return fail({Errc::invalid_state, "cannot take a snapshot of " + machine + " while it is " +
                                              std::string(to_string(m->state))});
    }
    if (req.memory && !(m->live && m->state == MachineState::running)) {
        return fail({Errc::invalid_state,
                     "a snapshot with memory needs " + machine + " running: it is " +
                         std::string(to_string(m->state)) +
                         (m->state == MachineState::paused ? " (resume it first)" : "")});
    }
    if (recovering_.count(machine)) {
        return fail({Errc::busy, machine + "'s snapshots are being recovered; try again"});
    }
    auto step = std::make_shared<Step>();
    step->machine = machine;
    if (Status st = volumes(*m, step->vols); !st) {
        return fail(st);
    }
    if (step->vols.empty() && !req.memory) {
        return fail({Errc::invalid_state,
                     machine +
                         " has no disks to snapshot (a VM made from an image has a root "
                         "disk; attach disks with POST /v1/machines/" +
                         machine + "/disks)"});
    }
    if (Status st = machines_.hold(machine, Op::snapshot); !st) {
        return fail(st);
    }
    if (req.accepted) {
        req.accepted();
    }
    auto& head = heads_[machine];
    if (!head) {
        head = std::make_unique<Head>();
    }
    step->live = live;
    step->ref = m->instance();
    step->runtime = m->runtime;
    step->done = std::move(done);
    Journal& j = step->j;
    j.op = "create";
    j.snap = req.name;
    j.phase = "files";
    j.record.machine = machine;
    j.record.name = req.name;
    j.record.created_at = now_rfc3339_us();
    j.record.parent = snaps.count(head->current) ? head->current : "";
    j.record.live = live;
    for (const auto& v : step->vols) {
        std::string stem = v.disk.empty() ? "root" : v.disk;
        std::string file = v.exists ? v.dir + "/" + stem + "@" + random_hex(4) + ".qcow2" : "";
        j.tops.emplace_back(v.disk, file);
        j.record.layers.push_back({v.disk, v.exists ? v.top : "", "", ""});
    }
    if (req.memory) {
        j.record.memory =
            (machines_.machine_dir(machine) / ("memory@" + random_hex(4) + ".state")).string();
        j.record.hardware = hardware_of(*m);
    }
    head->journal = j;
    store_head(machine);
    db_.flush();
    create_files(step, 0, [this, step] {
        auto commit = [this, step] {
            commit_create(step->machine, step->j);
            finish(step, {});
        };
        if (!step->live) {
            return commit();
        }
        std::vector<DiskOverlay> overlays;
        for (const auto& [disk, file] : step->j.tops) {
            if (!file.empty()) {
                overlays.push_back({disk, file});
            }
        }
        auto alive = alive_;
        if (!step->j.record.memory.empty()) {
            const std::string& path = step->j.record.memory;
            auto fd = std::make_shared<UniqueFd>(
                ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
            if (!*fd) {
                return finish(step,
                              {Errc::internal, "create " + path + ": " + std::strerror(errno)});
            }
            return step->runtime->snapshot_with_memory(
                step->ref, overlays, fd->get(),
                [this, alive, step, commit, fd](const Status& disks, const Status& memory) {
                    if (!*alive) {
                        return;
                    }
                    if (!disks) {
                        return finish(step, disks);
                    }
                    struct stat sb {};
                    bool whole = memory && ::fstat(fd->get(), &sb) == 0 && sb.st_size > 0;
                    if (whole) {
                        step->j.record.memory_bytes = uint64_t(sb.st_size);
                        return commit();
                    }
                    std::string why =
                        memory ? std::string("the memory file is empty") : memory.message();
                    if (!has_layers(step->j.record)) {
                        return finish(step, {Errc::internal, why});  // nothing else to keep
                    }
                    // The disks moved to the new tops, which QEMU writes now: they stay, as a
                    // snapshot without memory, and the answer says so.
                    unlink_file(step->j.record.memory);
                    step->j.record.memory.clear();
                    step->j.record.hardware.clear();
                    commit_create(step->machine, step->j);
                    step->j.tops.clear();  // committed: nothing to undo
                    finish(step, {Errc::internal, why + "; snapshot " + step->j.snap +
                                                      " was kept without the guest's memory"});
                });
        }
        step->runtime->snapshot_disks(step->ref, overlays,
                                      [this, alive, step, commit](const Status& st) {
                                          if (!*alive) {
                                              return;
                                          }
                                          if (!st) {
                                              return finish(step, st);
                                          }
                                          commit();
                                      });
    });
}

void Snapshots::restore(const Caller& caller, const std::string& machine, const std::string& name,
                        bool memory, Done done) {
    HANGAR_ASSERT_REACTOR();
    const Snapshot* s = nullptr;
    const Machine* m = nullptr;
    if (Status st = get(caller, machine, name, &s); !st || !runs_now(machine, &m)) {
        return restore_stopped(caller, machine, name, memory, false, std::move(done));
    }
    // A running (or paused) VM goes back as well: what runs now is dropped (killed, as a
    // revert does), the disks restored, and the VM runs again: from the saved guest with
    // memory, else booting from the snapshot's disks. Every refusal comes before the kill.
    std::vector<Volume> vols;
    if (Status st = restorable(*m, *s, memory, vols); !st) {
        return boost::asio::post(io_, [done = std::move(done), st] { done(st, nullptr); });
    }
    if (Status st = machines_.idle(machine); !st) {
        return boost::asio::post(io_, [done = std::move(done), st] { done(st, nullptr); });
    }
    auto alive = alive_;
    ActionArgs args;
    args.reason = "api:restore snapshot " + name;
    Status st = machines_.act(
        caller, machine, Action::kill, args,
        [this, alive, caller, machine, name, memory, done](const Status& st, const Machine*) {
            if (!*alive) {
                return;
            }
            if (!st) {
                return done({st.code(),
                             "stopping " + machine + " to restore " + name + ": " + st.message()},
                            nullptr);
            }
            restore_stopped(caller, machine, name, memory, true, done);
        });
    if (!st) {
        boost::asio::post(io_, [done = std::move(done), st] { done(st, nullptr); });
    }
}

bool Snapshots::runs_now(const std::string& machine, const Machine** out) const {
    if (!machines_.get({0, true}, machine, out)) {
        return false;
    }
    return (*out)->live &&
           ((*out)->state == MachineState::running || (*out)->state == MachineState::paused);
}

Status Snapshots::restorable(const Machine& m, const Snapshot& s, bool memory,
                             std::vector<Volume>& vols) const {
    const std::string& machine = m.spec.name;
    if (recovering_.count(machine)) {
        return {Errc::busy, machine + "'s snapshots are being recovered; try again"};
    }
    if (Status st = volumes(m, vols); !st) {
        return st;
    }
    for (const auto& l : s.layers) {
        bool found = false;
        for (const auto& v : vols) {
            found = found || v.disk == l.disk;
        }
        if (!found) {
            return {Errc::invalid_state, "the snapshot's disk " + l.disk + " is not attached to " +
                                             machine + " any more"};
        }
    }
    if (memory && !s.memory.empty()) {
        if (Status st = guest_fits(m, s); !st) {
            return {st.code(),
                    st.message() + ": restore its disks only ({\"memory\": false})" +
                        (st.code() == Errc::invalid_state ? " or change the machine back" : "")};
        }
    }
    return {};
}

Status Snapshots::guest_fits(const Machine& m, const Snapshot& s) const {
    // The saved guest finds the devices it had, in the same places.
    if (std::string now = hardware_of(m); now != s.hardware) {
        return {Errc::invalid_state, "the guest's memory in " + s.name + " was saved with " +
                                         s.hardware + "; " + m.spec.name + " has " + now + " now"};
    }
    if (::access(s.memory.c_str(), R_OK) != 0) {
        return {Errc::internal, "the memory file " + s.memory + " of " + s.name + " is missing"};
    }
    return {};
}

void Snapshots::restore_stopped(const Caller& caller, const std::string& machine,
                                const std::string& name, bool memory, bool start_after, Done done) {
    auto fail = [this, &done](Status st) {
        boost::asio::post(io_, [done = std::move(done), st] { done(st, nullptr); });
    };
    const Snapshot* s = nullptr;
    if (Status st = get(caller, machine, name, &s); !st) {
        return fail(st);
    }
    const Machine* m = nullptr;
    machines_.get(caller, machine, &m);
    if (m->live || (m->state != MachineState::stopped && m->state != MachineState::crashed)) {
        return fail({Errc::invalid_state, "restoring a snapshot needs " + machine +
                                              " stopped, running or paused: it is " +
                                              std::string(to_string(m->state))});
    }
    auto step = std::make_shared<Step>();
    step->machine = machine;
    if (Status st = restorable(*m, *s, memory, step->vols); !st) {
        return fail(st);
    }
    bool resume = memory && !s->memory.empty();
    if (Status st = machines_.hold(machine, Op::snapshot); !st) {
        return fail(st);
    }
    if (resume) {
        // The disks first, then the machine starts from the saved guest; the answer waits
        // for it to run.
        std::string file = s->memory;
        auto alive = alive_;
        step->done = [this, alive, caller, machine, name, file, done = std::move(done)](
                         const Status& st, const Snapshot* snap) {
            if (!st || !*alive) {
                return done(st, snap);
            }
            resume_[machine] = file;
            ActionArgs args;
            args.reason = "api:restore snapshot " + name + " (memory)";
            Status started = machines_.act(
                caller, machine, Action::start, args,
                [this, alive, machine, name, done](const Status& st, const Machine*) {
                    if (!*alive) {
                        return;
                    }
                    resume_.erase(machine);
                    const Snapshot* snap = nullptr;
                    auto it = snaps_[machine].find(name);
                    snap = it == snaps_[machine].end() ? nullptr : &it->second;
                    if (!st) {
                        return done({st.code(), "the disks of " + name +
                                                    " were restored, but the guest did not "
                                                    "resume: " +
                                                    st.message()},
                                    nullptr);
                    }
                    done({}, snap);
                });
            if (!started) {
                resume_.erase(machine);
                done({started.code(),
                      "the disks of " + name +
                          " were restored, but the guest did not resume: " + started.message()},
                     nullptr);
            }
        };
    } else if (start_after) {
        // It ran before the restore: it boots from the snapshot's disks.
        auto alive = alive_;
        step->done = [this, alive, caller, machine, name, done = std::move(done)](
                         const Status& st, const Snapshot* snap) {
            if (!st || !*alive) {
                return done(st, snap);
            }
            ActionArgs args;
            args.reason = "api:restore snapshot " + name;
            Status started = machines_.act(
                caller, machine, Action::start, args,
                [this, alive, machine, name, done](const Status& st, const Machine*) {
                    if (!*alive) {
                        return;
                    }
                    if (!st) {
                        return done({st.code(), "the disks of " + name +
                                                    " were restored, but the VM did not start: " +
                                                    st.message()},
                                    nullptr);
                    }
                    auto it = snaps_[machine].find(name);
                    done({}, it == snaps_[machine].end() ? nullptr : &it->second);
                });
            if (!started) {
                done({started.code(),
                      "the disks of " + name +
                          " were restored, but the VM did not start: " + started.message()},
                     nullptr);
            }
        };
    } else {
        step->done = std::move(done);
    }
    Journal& j = step->j;
    j.op = "restore";
    j.snap = name;
    j.phase = "files";
    for (const auto& l : s->layers) {
        for (const auto& v : step->vols) {
            if (v.disk == l.disk) {
                std::string stem = v.disk.empty() ? "root" : v.disk;
                j.tops.emplace_back(v.disk, v.dir + "/" + stem + "@" + random_hex(4) + ".qcow2");
                if (v.exists) {
                    j.remove.push_back(v.top);
                }
            }
        }
    }
    Head& h = *heads_.at(machine);
    h.journal = j;
    store_head(machine);
    db_.flush();
    create_files(step, 0, [this, step, name] {
        Head& h = *heads_.at(step->machine);
        set_tops(step->machine, step->j);
        h.current = name;
        step->j.phase = "cleanup";
        h.journal = step->j;
        store_head(step->machine);
        db_.flush();
        // Committed: the old tops (what was written since) go.
        for (const auto& f : step->j.remove) {
            unlink_file(f);
        }
        h.journal.reset();
        store_head(step->machine);
        const Machine* m = nullptr;
        uint32_t owner = machines_.get({0, true}, step->machine, &m) ? m->spec.owner : 0;
        const Snapshot& s = snaps_[step->machine][name];
        events_.publish(SnapshotRestored{name, to_json(s)}, step->machine, owner);
        machines_.disks_changed(step->machine, "api:restore snapshot " + name);
        db_.flush();
        spdlog::info("{}: snapshot {} restored", step->machine, name);
        step->j.tops.clear();  // nothing to undo
        finish(step, {});
    });
}

void Snapshots::remove(const Caller& caller, const std::string& machine, const std::string& name,
                       Done done) {
    HANGAR_ASSERT_REACTOR();
    auto fail = [this, &done](Status st) {
        boost::asio::post(io_, [done = std::move(done), st] { done(st, nullptr); });
    };
    const Snapshot* s = nullptr;
    if (Status st = get(caller, machine, name, &s); !st) {
        return fail(st);
    }
    const Machine* m = nullptr;
    machines_.get(caller, machine, &m);
    bool live = m->live && (m->state == MachineState::running || m->state == MachineState::paused);
    if (!live && m->state != MachineState::stopped && m->state != MachineState::crashed) {
        return fail({Errc::invalid_state, "cannot delete a snapshot of " + machine +
                                              " while it is " + std::string(to_string(m->state))});
    }
    if (recovering_.count(machine)) {
        return fail({Errc::busy, machine + "'s snapshots are being recovered; try again"});
    }
    if (Status st = machines_.hold(machine, Op::snapshot); !st) {
        return fail(st);
    }
    auto step = std::make_shared<Step>();
    step->machine = machine;
    step->done = std::move(done);
    step->live = live;
    step->ref = m->instance();
    step->runtime = m->runtime;
    step->j.op = "delete";
    step->j.snap = name;
    step->j.phase = "files";
    Head& h = *heads_.at(machine);
    h.journal = step->j;
    store_head(machine);
    db_.flush();
    if (Status st = volumes(*m, step->vols); !st) {
        step->j.tops.clear();
        return finish(step, st);
    }
    // What each of the snapshot's layers is made on, and the files made on it (the other
    // snapshots' layers of its disks, and the tops): all read from their headers, which
    // qemu-img rebase changes last, so that an interrupted delete is seen as it is.
    std::set<std::string> disks;
    for (const auto& l : s->layers) {
        if (!l.file.empty()) {
            step->to_probe.push_back(l.file);
            step->j.remove.push_back(l.file);
            disks.insert(l.disk);
        }
    }
    if (!s->memory.empty()) {
        step->j.remove.push_back(s->memory);
    }
    size_t own = step->to_probe.size();
    for (const auto& [other, t] : snaps_[machine]) {
        for (const auto& tl : t.layers) {
            if (other != name && disks.count(tl.disk) && !tl.file.empty()) {
                step->to_probe.push_back(tl.file);
            }
        }
    }
    for (const auto& v : step->vols) {
        if (disks.count(v.disk) && v.exists) {
            step->to_probe.push_back(v.top);
        }
    }
    auto infos = std::make_shared<std::vector<Info>>();
    auto next = std::make_shared<std::function<void()>>();
    *next = [this, step, infos, next, name, own] {
        auto keep = *next;
        if (infos->size() < step->to_probe.size()) {
            std::string file = step->to_probe[infos->size()];
            // -U: a running QEMU holds the locks of the files it uses.
            std::vector<std::string> argv = {"qemu-img", "info", "--output=json", "-f", "qcow2",
                                             "--",       file};
            if (step->live) {
                argv.insert(argv.begin() + 2, "-U");
            }
            return run_qemu_img(std::move(argv), [this, step, next, infos, file](
                                                     const Status& st, const std::string& out) {
                Info info;
                if (!st || !parse_info(out, info)) {
                    *next = nullptr;
                    step->j.tops.clear();
                    return finish(step, st ? Status{Errc::internal,
                                                    "qemu-img info " + file + ": unreadable answer"}
                                           : st);
                }
                infos->push_back(std::move(info));
                auto again = *next;
                again();
            });
        }
        *next = nullptr;
        for (size_t c = own; c < infos->size(); ++c) {
            for (size_t l = 0; l < own; ++l) {
                if ((*infos)[c].backing == step->to_probe[l]) {
                    step->rebases.push_back({step->to_probe[c], (*infos)[l].backing,
                                             (*infos)[l].backing_format, step->to_probe[l]});
                }
            }
        }
        // While the VM runs, QEMU merges into the files it uses (block-stream); qemu-img
        // rebases the rest.
        auto merged = [this, step](std::function<void()> commit) {
            if (!step->live) {
                return rebase_children(step, 0, std::move(commit));
            }
            std::vector<LayerMerge> merges;
            for (const auto& r : step->rebases) {
                std::string dir = fs::path(r.child).parent_path().string();
                merges.push_back(
                    {r.child, r.layer, r.backing, r.backing.empty() ? "" : rel_to(r.backing, dir)});
            }
            auto alive = alive_;
            step->runtime->merge_layers(
                step->ref, merges,
                [this, alive, step, commit](const Status& st, std::vector<size_t> not_open) {
                    if (!*alive) {
                        return;
                    }
                    if (!st) {
                        step->j.tops.clear();
                        return finish(step, st);
                    }
                    std::set<size_t> left(not_open.begin(), not_open.end());
                    for (size_t i = 0; i < step->rebases.size(); ++i) {
                        if (!left.count(i)) {
                            step->merged.insert(i);
                        }
                    }
                    rebase_children(step, 0, commit);
                });
        };
        merged([this, step, name] {
            Head& h = *heads_.at(step->machine);
            auto& snaps = snaps_[step->machine];
            Snapshot gone = snaps[name];
            for (auto& [other, t] : snaps) {
                for (auto& tl : t.layers) {
                    for (const auto& r : step->rebases) {
                        if (tl.file == r.child) {
                            tl.backing = r.backing;
                            tl.backing_format = r.backing_format;
                        }
                    }
                }
                if (t.parent == name) {
                    t.parent = gone.parent;
                }
            }
            if (h.current == name) {
                h.current = gone.parent;
            }
            snaps.erase(name);
            db_.delete_document(kTable, key_of(step->machine, name));
            for (auto& [other, t] : snaps) {
                store_snapshot(t);
            }
            step->j.phase = "cleanup";
            h.journal = step->j;
            store_head(step->machine);
            for (const auto& l : gone.layers) {
                if (!l.disk.empty() && !l.file.empty()) {
                    disks_.drop_layer(l.disk, l.file);
                }
            }
            db_.flush();
            for (const auto& f : step->j.remove) {
                unlink_file(f);
            }
            h.journal.reset();
            store_head(step->machine);
            const Machine* m = nullptr;
            uint32_t owner = machines_.get({0, true}, step->machine, &m) ? m->spec.owner : 0;
            events_.publish(SnapshotDeleted{name}, step->machine, owner);
            db_.flush();
            spdlog::info("{}: snapshot {} deleted", step->machine, name);
            finish(step, {});
        });
    };
    auto first = *next;
    first();
}

// Each child reads what it read before, from the deleted layer's backing (qemu-img rebase in
// its safe mode copies what differs). A rebase cut short leaves the child whole: its header
// changes last. Done again after a restart, it is a no-op for a child already rebased.
void Snapshots::rebase_children(const std::shared_ptr<Step>& step, size_t i,
                                std::function<void()> next) {
    if (i == step->rebases.size()) {
        return next();
    }
    if (step->merged.count(i)) {
        return rebase_children(step, i + 1, std::move(next));
    }
    const auto& r = step->rebases[i];
    std::string dir = fs::path(r.child).parent_path().string();
    std::vector<std::string> argv = {"qemu-img", "rebase", "-q", "-f", "qcow2"};
    if (r.backing.empty()) {
        argv.insert(argv.end(), {"-b", ""});
    } else {
        argv.insert(argv.end(), {"-F", r.backing_format, "-b", rel_to(r.backing, dir)});
    }
    argv.push_back(r.child);
    run_qemu_img(std::move(argv), [this, step, i, next](const Status& st, const std::string&) {
        if (!st) {
            step->j.tops.clear();
            return finish(step, st);
        }
        rebase_children(step, i + 1, next);
    });
}

// ---- recovery --------------------------------------------------------------------------

void Snapshots::recover(std::function<void()> done) {
    // Records of machines that are gone (deleted while the store was not written).
    std::vector<std::string> gone;
    for (const auto& [m, h] : heads_) {
        if (!machines_.all().count(m)) {
            gone.push_back(m);
        }
    }
    for (const auto& m : gone) {
        recovering_.erase(m);
        machine_deleted(m);
    }
    std::vector<std::string> todo;
    for (const auto& [m, h] : heads_) {
        if (h->journal) {
            todo.push_back(m);
        }
    }
    auto left = std::make_shared<size_t>(todo.size() + 1);
    auto one = [left, done] {
        if (--*left == 0) {
            done();
        }
    };
    for (const auto& m : todo) {
        recover_one(m, one);
    }
    boost::asio::post(io_, one);
}

void Snapshots::recover_one(const std::string& machine, std::function<void()> done) {
    Head& h = *heads_.at(machine);
    Journal j = *h.journal;
    auto settle = [this, machine, done](const std::string& how) {
        spdlog::warn("snapshots: {}: {}", machine, how);
        recovering_.erase(machine);
        auto it = heads_.find(machine);
        if (it != heads_.end()) {
            it->second->journal.reset();
            store_head(machine);
        }
        db_.flush();
        done();
    };
    if (j.phase == "cleanup") {
        for (const auto& f : j.remove) {
            unlink_file(f);
        }
        return settle("the " + j.op + " of snapshot " + j.snap + " had been committed; finished");
    }
    auto undo = [this, machine, j, settle](const std::string& why) {
        for (const auto& [disk, file] : j.tops) {
            unlink_file(file);
        }
        auto undone = [j, settle, why] {
            settle("the " + j.op + " of snapshot " + j.snap + " was interrupted; undone (" + why +
                   ")");
        };
        if (j.op != "create" || j.record.memory.empty()) {
            return undone();
        }
        // The guest runs again, whatever became of the memory save.
        settle_memory(machine, j.record.memory, [j, undone](bool) {
            unlink_file(j.record.memory);
            undone();
        });
    };
    if (j.op == "restore") {
        return undo("nothing had changed");
    }
    if (j.op == "delete") {
        // Finished: the rebases done so far are kept, the rest done now.
        recovering_.erase(machine);
        h.journal.reset();
        auto alive = alive_;
        boost::asio::post(io_, [this, alive, machine, j, done] {
            if (!*alive) {
                return;
            }
            remove({0, true}, machine, j.snap,
                   [machine, j, done](const Status& st, const Snapshot*) {
                       if (st) {
                           spdlog::warn("snapshots: {}: the interrupted delete of {} finished",
                                        machine, j.snap);
                       } else {
                           spdlog::error("snapshots: {}: the interrupted delete of {} failed: {}",
                                         machine, j.snap, st.message());
                       }
                       done();
                   });
        });
        return;
    }
    // A create: kept when every new top is whole and QEMU writes on the new tops (or on no
    // file at all); undone when one is missing or torn, or QEMU still writes the old top.
    struct Probe {
        size_t i = 0;
        bool new_locked = false, old_locked = false;
    };
    auto p = std::make_shared<Probe>();
    auto next = std::make_shared<std::function<void()>>();
    *next = [this, machine, j, p, next, undo, settle] {
        size_t n = j.tops.size();
        if (p->i == 2 * n) {
            *next = nullptr;
            if (!p->new_locked && p->old_locked) {
                return undo("QEMU still writes the old top");
            }
            if (j.record.memory.empty()) {
                commit_create(machine, j);
                return settle("the interrupted snapshot " + j.snap + " was whole; kept");
            }
            return settle_memory(machine, j.record.memory, [this, machine, j, settle](bool whole) {
                Journal k = j;
                struct stat sb {};
                if (whole && ::stat(k.record.memory.c_str(), &sb) == 0 && sb.st_size > 0) {
                    k.record.memory_bytes = uint64_t(sb.st_size);
                } else if (!has_layers(k.record)) {
                    unlink_file(k.record.memory);
                    return settle("the interrupted snapshot " + k.snap +
                                  " had no whole memory file and no disks; undone");
                } else {
                    whole = false;
                    unlink_file(k.record.memory);
                    k.record.memory.clear();
                    k.record.hardware.clear();
                }
                commit_create(machine, k);
                settle("the interrupted snapshot " + k.snap + " was whole; kept" +
                       (whole ? " with the guest's memory" : ", without the guest's memory"));
            });
        }
        size_t i = p->i++;
        // First the new tops, then the old ones.
        std::string file = i < n ? j.tops[i].second : j.record.layers[i - n].file;
        if (file.empty()) {
            auto again = *next;
            return again();
        }
        probe(file, [p, next, i, n, undo](const Status& st, uint64_t, bool locked) {
            if (!st && i < n) {
                *next = nullptr;
                return undo(st.message());
            }
            (i < n ? p->new_locked : p->old_locked) |= locked;
            auto again = *next;
            again();
        });
    };
    auto first = *next;
    first();
}

void Snapshots::settle_memory(const std::string& machine, const std::string& file,
                              std::function<void(bool whole)> done) {
    const Machine* m = nullptr;
    if (!machines_.get({0, true}, machine, &m) || !m->live || !m->runtime) {
        return done(false);  // no QEMU to say the save completed
    }
    auto alive = alive_;
    m->runtime->memory_saved(m->instance(), [alive, machine, file, done](const Status& st,
                                                                         bool completed) {
        if (!*alive) {
            return;
        }
        if (!st) {
            spdlog::warn("snapshots: {}: the memory save of {}: {}", machine, file, st.message());
        }
        done(st && completed);
    });
}

void Snapshots::machine_deleted(const std::string& machine) {
    auto it = snaps_.find(machine);
    if (it != snaps_.end()) {
        for (const auto& [name, s] : it->second) {
            db_.delete_document(kTable, key_of(machine, name));
        }
        snaps_.erase(it);
    }
    // The root disk's layers went with the machine's directory; attached disks keep theirs
    // (their tops are made on them), and lose them when they are deleted.
    heads_.erase(machine);
    db_.delete_document(kHeads, machine);
}

}  // namespace hangar::core
