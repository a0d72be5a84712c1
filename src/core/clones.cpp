#include "core/clones.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <vector>

#include <simdjson.h>
#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "core/pools.hpp"
#include "hangar/machine_files.hpp"
#include "hangar/names.hpp"
#include "util/file_tail.hpp"
#include "util/json_body.hpp"
#include "util/process.hpp"
#include "util/reactor.hpp"
#include "util/sha256.hpp"

namespace hangar::core {

namespace fs = std::filesystem;

namespace {
constexpr const char* kStagingPrefix = ".clone-";
// In a clone's directory until the clone is whole: the names of the disks made for it.
constexpr const char* kPendingMarker = "clone-pending";

// The canonical form of `p` (symlinks and `..` resolved) for comparing two names of a file.
std::string canonical_name(const std::string& p) {
    std::error_code ec;
    fs::path c = fs::weakly_canonical(p, ec);
    return ec ? p : c.string();
}

// `text` as the file `path` (written beside it, then renamed into place).
Status write_file(const fs::path& path, const std::string& text) {
    std::string tmp = path.string() + ".new";
    FILE* f = std::fopen(tmp.c_str(), "we");
    bool ok = f && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    ok = (f && std::fclose(f) == 0) && ok;
    if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
        ::unlink(tmp.c_str());
        return {Errc::internal, "cannot write " + path.string() + ": " + std::strerror(errno)};
    }
    return {};
}
}  // namespace

Status decode_clone_request(std::string_view body, CloneRequest& out) {
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
        } else if (key == "snapshot") {
            st = json::get_string(v, key, out.snapshot);
        } else {
            st = json::unknown_field("", key);
        }
        if (!st) {
            return st;
        }
    }
    if (out.name.empty()) {
        return {Errc::bad_request, "field 'name' is required (the clone's name)"};
    }
    if (Status st = check_name("machine", out.name); !st) {
        return st;
    }
    return out.snapshot.empty() ? Status{} : check_name("snapshot", out.snapshot);
}

// One disk of the clone: the source's file (its top, or a snapshot's layer), the copy made
// of it, and the base image the copy is put on ("" for none).
struct CloneCopy {
    std::string disk;  // the source's disk; "" for the root disk
    std::string from;  // "" for a root disk not made yet: the clone makes its own at its start
    std::string new_disk, tmp;
    std::string base, base_format, base_rel;
    uint64_t size_bytes = 0;
    bool reserved = false;  // Disks holds new_disk for this copy
};

struct Clones::Job {
    Caller caller;
    std::string source, name;
    MachineSpec spec;
    std::vector<CloneCopy> copies;
    std::string memory;  // a snapshot's saved guest: the clone's warm start
    fs::path staging;
    bool held = false, ended = false;
    bool registered = false;        // the machine exists
    std::vector<std::string> made;  // disks registered for the clone
    std::function<void(const std::string&, uint64_t)> progress;
    uint64_t copied = 0;  // bytes of data in the copies made so far
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
    Done done;
};

Clones::Clones(boost::asio::io_context& io, Machines& machines, Disks& disks, Snapshots& snapshots,
               Images& images, fs::path machines_dir)
    : io_(io),
      machines_(machines),
      disks_(disks),
      snapshots_(snapshots),
      images_(images),
      machines_dir_(std::move(machines_dir)) {}

Clones::~Clones() {
    *alive_ = false;
}

void Clones::load() {
    std::error_code ec;
    // A clone registered but not yet whole (its disks not all attached) goes again.
    for (const auto& [name, m] : machines_.all()) {
        fs::path marker = machines_.machine_dir(name) / kPendingMarker;
        if (::access(marker.c_str(), F_OK) != 0) {
            continue;
        }
        std::string disks;
        read_file_tail(marker.string(), 1 << 16, disks);
        Caller owner{m->spec.owner, false};
        std::string clone = name;
        spdlog::warn("clones: {} was not whole when hangard ended: it is removed", clone);
        auto alive = alive_;
        machines_.remove({0, true}, clone, true,
                         [this, alive, owner, clone, disks](const Status& st) {
                             if (!*alive) {
                                 return;
                             }
                             if (!st) {
                                 spdlog::warn("clones: removing {}: {}", clone, st.message());
                             }
                             std::istringstream names(disks);
                             for (std::string d; std::getline(names, d);) {
                                 if (!d.empty()) {
                                     disks_.remove(owner, d);
                                 }
                             }
                         });
    }
    for (const auto& e : fs::directory_iterator(machines_dir_, ec)) {
        if (e.path().filename().string().rfind(kStagingPrefix, 0) == 0) {
            std::error_code rec;
            fs::remove_all(e.path(), rec);
            spdlog::info("clones: removed {}, left by a clone that did not end", e.path().string());
        }
    }
}

void Clones::clone(const Caller& caller, const std::string& source, CloneRequest req, Done done) {
    HANGAR_ASSERT_REACTOR();
    auto fail = [this, &done](Status st) {
        boost::asio::post(io_, [done = std::move(done), st] { done(st, nullptr); });
    };
    const Machine* m = nullptr;
    if (Status st = machines_.get(caller, source, &m); !st) {
        return fail(st);
    }
    if (m->type != MachineType::vm) {
        return fail({Errc::invalid_spec, "clones are made of VMs; " + source + " is a container"});
    }
    const Machine* taken = nullptr;
    if (machines_.get({0, true}, req.name, &taken)) {
        return fail({Errc::conflict, "a machine named " + req.name + " already exists"});
    }
    auto job = std::make_shared<Job>();
    job->caller = caller;
    job->source = source;
    job->name = req.name;
    job->spec = m->spec;
    job->spec.name = req.name;
    job->spec.uuid.clear();
    job->spec.created_at.clear();
    job->spec.template_name.clear();
    job->spec.given.clear();

    // Which files: a snapshot's layers, or the disks as they are now.
    std::vector<std::pair<std::string, std::string>> files;  // disk ("" root), file
    if (!req.snapshot.empty()) {
        const Snapshot* s = nullptr;
        if (Status st = snapshots_.get(caller, source, req.snapshot, &s); !st) {
            return fail(st);
        }
        for (const auto& l : s->layers) {
            files.emplace_back(l.disk, l.file);
        }
        job->memory = s->memory;
        if (!job->memory.empty()) {
            // The clone gets the source's hardware as it is now; the saved guest needs what it
            // had.
            if (Status st = snapshots_.guest_fits(*m, *s); !st) {
                return fail({st.code(), st.message() + (st.code() == Errc::invalid_state
                                                            ? ": change the machine back to "
                                                              "clone it warm"
                                                            : "")});
            }
        }
    } else {
        if (m->live || (m->state != MachineState::stopped && m->state != MachineState::crashed)) {
            return fail({Errc::invalid_state,
                         "cloning " + source + " as it is needs it stopped: it is " +
                             std::string(to_string(m->state)) +
                             "; stop it, or clone one of its snapshots ({\"snapshot\": NAME})"});
        }
        if (!m->spec.image.empty()) {
            std::string top = snapshots_.root_disk(source);
            if (top.empty()) {
                std::string root = MachineFiles(machines_.machine_dir(source)).root_disk().string();
                top = ::access(root.c_str(), F_OK) == 0 ? root : "";
            }
            files.emplace_back("", top);
        }
        for (const auto& a : disks_.attached(source)) {
            files.emplace_back(a.name, a.path);
        }
    }
    for (const auto& [disk, file] : files) {
        CloneCopy c;
        c.disk = disk;
        c.from = file;
        if (disk.empty()) {
            const Image* img = nullptr;
            if (Status st = images_.file_of(m->spec.image, "disk", &img, c.base); !st) {
                return fail({st.code(), "the root disk's image: " + st.message()});
            }
            c.base_format = img->format;
            c.base_rel =
                fs::path(c.base).lexically_relative(machines_.machine_dir(req.name)).string();
        } else {
            const Disk* d = nullptr;
            if (Status st = disks_.get(caller, disk, &d); !st) {
                return fail({st.code(), "disk " + disk + " of " + source + ": " + st.message()});
            }
            if (Status st = disks_.usable(disk); !st) {
                return fail(st);
            }
            c.new_disk = req.name + "-" + disk;
            if (Status st = check_name("disk", c.new_disk); !st) {
                return fail({st.code(), "the clone's copy of disk " + disk + ": " + st.message()});
            }
            const Disk* exists = nullptr;
            if (disks_.get({0, true}, c.new_disk, &exists)) {
                return fail({Errc::conflict, "disk " + c.new_disk + " (the clone's copy of " +
                                                 disk + ") already exists"});
            }
            c.base = d->base;
            c.base_format = d->base_format;
            if (!c.base.empty()) {
                c.base_rel = fs::path(c.base).lexically_relative(fs::path(d->path).parent_path());
            }
        }
        job->copies.push_back(std::move(c));
    }
    if (Status st = machines_.hold(source, Op::clone); !st) {
        return fail(st);
    }
    job->held = true;
    job->staging = machines_dir_ / (kStagingPrefix + req.name + "-" + random_hex(4));
    std::error_code ec;
    fs::create_directories(job->staging, ec);
    if (!ec) {
        fs::permissions(job->staging, fs::perms::owner_all, ec);
    }
    job->done = std::move(done);
    job->progress = std::move(req.progress);
    if (ec) {
        return finish(
            job, {Errc::internal, "cannot create " + job->staging.string() + ": " + ec.message()},
            nullptr);
    }
    spdlog::info("{}: cloning {} as {}{}", source,
                 req.snapshot.empty() ? "its disks" : "snapshot " + req.snapshot, req.name,
                 job->memory.empty() ? "" : " (a warm start)");
    if (req.accepted) {
        req.accepted();
    }
    copy_next(job, 0);
}

void Clones::copy_next(const std::shared_ptr<Job>& job, size_t i) {
    if (i == job->copies.size()) {
        // The saved guest (a warm start) and the UEFI variables come along.
        std::vector<std::pair<std::string, fs::path>> extra;
        if (!job->memory.empty()) {
            extra.emplace_back(job->memory, job->staging / "warm-start.mem");
        }
        std::string vars = MachineFiles(machines_.machine_dir(job->source)).uefi_vars().string();
        if (::access(vars.c_str(), F_OK) == 0) {
            extra.emplace_back(vars, job->staging / "uefi-vars.fd");
        }
        if (job->progress && !job->memory.empty()) {
            job->progress("copying the saved guest", job->copied);
        }
        std::vector<std::vector<std::string>> steps;
        for (const auto& [from, to] : extra) {
            steps.push_back({"cp", "--reflink=auto", "--sparse=always", "--", from, to.string()});
        }
        return run_steps(job, std::move(steps), 0, [this, job] { register_clone(job); });
    }
    CloneCopy& c = job->copies[i];
    if (c.from.empty()) {
        return copy_next(job, i + 1);  // a root disk not made yet: the clone makes its own
    }
    // What the chain holds above the base: the space the copy may need, and the file below.
    run_step(
        job, {"qemu-img", "info", "-U", "--output=json", "--backing-chain", "--", c.from},
        [this, job, i](const CaptureResult& r) {
            CloneCopy& c = job->copies[i];
            simdjson::dom::parser parser;
            simdjson::dom::array chain;
            if (parser.parse(r.out).get(chain) != simdjson::SUCCESS || chain.size() == 0) {
                return finish(job, {Errc::internal, "qemu-img info of " + c.from + ": not JSON"},
                              nullptr);
            }
            std::string below, below_format, base = c.base.empty() ? "" : canonical_name(c.base);
            uint64_t data = 0;
            bool first = true;
            for (simdjson::dom::element e : chain) {
                std::string_view name;
                if (e["filename"].get(name) == simdjson::SUCCESS && !base.empty() &&
                    canonical_name(std::string(name)) == base) {
                    break;
                }
                uint64_t actual = 0;
                if (e["actual-size"].get(actual) == simdjson::SUCCESS) {
                    data += actual;
                }
                if (first) {
                    uint64_t size = 0;
                    std::string_view v;
                    if (e["virtual-size"].get(size) == simdjson::SUCCESS) {
                        c.size_bytes = size;
                    }
                    if (e["full-backing-filename"].get(v) == simdjson::SUCCESS) {
                        below = v;
                    }
                    if (e["backing-filename-format"].get(v) == simdjson::SUCCESS) {
                        below_format = v;
                    }
                    first = false;
                }
            }
            if (c.disk.empty()) {
                c.tmp = (job->staging / "root.qcow2").string();
                PoolSpace space = Pools::space_at(machines_dir_.string());
                if (space.status && data > space.free) {
                    return finish(job,
                                  {Errc::invalid_spec,
                                   "the copy of the root disk (" + std::to_string(data >> 20) +
                                       " MiB of data) does not fit in the free space of " +
                                       machines_dir_.string() + " (" +
                                       std::to_string(space.free >> 20) + " MiB free)"},
                                  nullptr);
                }
            } else {
                if (Status st = disks_.begin_copy(job->caller, c.new_disk, c.disk, data, c.tmp);
                    !st) {
                    return finish(job, st, nullptr);
                }
                c.reserved = true;
            }
            // The copy, then straight on the base: the copy's own backing name first (the
            // source's, absolute), then a rebase that writes into it what the layers between
            // hold, differing from the base.
            std::vector<std::vector<std::string>> steps;
            steps.push_back({"cp", "--reflink=auto", "--sparse=always", "--", c.from, c.tmp});
            if (!below.empty() && canonical_name(below) == base) {
                steps.push_back({"qemu-img", "rebase", "-u", "-f", "qcow2", "-F", c.base_format,
                                 "-b", c.base_rel, c.tmp});
            } else if (!below.empty()) {
                steps.push_back({"qemu-img", "rebase", "-u", "-f", "qcow2", "-F",
                                 below_format.empty() ? "qcow2" : below_format, "-b", below,
                                 c.tmp});
                if (c.base.empty()) {
                    steps.push_back({"qemu-img", "rebase", "-U", "-f", "qcow2", "-b", "", c.tmp});
                } else {
                    steps.push_back({"qemu-img", "rebase", "-U", "-f", "qcow2", "-F", c.base_format,
                                     "-b", c.base_rel, c.tmp});
                }
            }
            if (job->progress) {
                job->progress("copying " + (c.disk.empty() ? "the root disk" : "disk " + c.disk) +
                                  " (" + std::to_string(i + 1) + " of " +
                                  std::to_string(job->copies.size()) + ")",
                              job->copied);
            }
            run_steps(job, std::move(steps), 0, [this, job, i, data] {
                job->copied += data;
                copy_next(job, i + 1);
            });
        });
}

void Clones::run_step(const std::shared_ptr<Job>& job, std::vector<std::string> argv,
                      std::function<void(const CaptureResult&)> next) {
    CaptureOptions co;
    co.argv = std::move(argv);
    co.merge_stderr = true;
    co.new_session = true;
    co.timeout = std::chrono::seconds(3600);
    std::string what = co.argv[0] + " " + co.argv[1] + " of " + co.argv[co.argv.size() - 1];
    auto alive = alive_;
    run_capture(
        io_, std::move(co),
        [this, alive, job, what, next = std::move(next)](const Status& st, CaptureResult r) {
            if (!*alive || job->ended) {
                return;
            }
            if (!st || r.timed_out || r.exit.code != 0 || r.exit.signal != 0) {
                std::string why = !st           ? st.message()
                                  : r.timed_out ? "timed out"
                                                : r.exit.describe() + ": " + tail_of(r.out);
                return finish(job, {Errc::internal, what + ": " + why}, nullptr);
            }
            next(r);
        });
}

void Clones::run_steps(const std::shared_ptr<Job>& job, std::vector<std::vector<std::string>> steps,
                       size_t k, std::function<void()> then) {
    if (k == steps.size()) {
        return then();
    }
    std::vector<std::string> argv = steps[k];
    run_step(job, std::move(argv),
             [this, job, steps = std::move(steps), k,
              then = std::move(then)](const CaptureResult&) mutable {
                 run_steps(job, std::move(steps), k + 1, std::move(then));
             });
}

void Clones::register_clone(const std::shared_ptr<Job>& job) {
    if (job->held) {
        machines_.release(job->source, Op::clone);
        job->held = false;
    }
    std::string names;
    for (const auto& c : job->copies) {
        names += c.new_disk.empty() ? "" : c.new_disk + "\n";
    }
    if (Status st = write_file(job->staging / kPendingMarker, names); !st) {
        return finish(job, st, nullptr);
    }
    const Machine* m = nullptr;
    if (Status st = machines_.create(job->caller, job->spec, &m); !st) {
        return finish(job, st, nullptr);
    }
    job->registered = true;
    // Its files into its directory, then its disks.
    fs::path dir = machines_.machine_dir(job->name);
    MachineFiles files(dir);
    std::vector<std::pair<fs::path, fs::path>> moves = {
        {job->staging / kPendingMarker, dir / kPendingMarker},
        {job->staging / "root.qcow2", files.root_disk()},
        {job->staging / "warm-start.mem", files.warm_start()},
        {job->staging / "uefi-vars.fd", files.uefi_vars()}};
    Status moved;
    for (const auto& [from, to] : moves) {
        if (::access(from.c_str(), F_OK) == 0 && ::rename(from.c_str(), to.c_str()) != 0) {
            moved = {Errc::internal, "rename " + from.string() + ": " + std::strerror(errno)};
        }
    }
    for (auto& c : job->copies) {
        if (!moved || !c.reserved) {
            continue;
        }
        const Disk* d = nullptr;
        c.reserved = false;
        if (Status st = disks_.end_copy(job->caller, c.new_disk, c.disk, c.tmp, c.size_bytes, &d);
            !st) {
            moved = st;
            continue;
        }
        job->made.push_back(c.new_disk);
    }
    if (!moved) {
        return finish(job, moved, nullptr);
    }
    attach_next(job, 0);
}

void Clones::attach_next(const std::shared_ptr<Job>& job, size_t i) {
    if (i == job->made.size()) {
        // A warm start needs the clone's hardware as it is now: the saved guest's, with the
        // clone's disks in the places of the source's.
        MachineFiles files(machines_.machine_dir(job->name));
        if (!job->memory.empty()) {
            if (Status st = write_file(files.warm_start_hardware(), snapshots_.hardware(job->name));
                !st) {
                return finish(job, st, nullptr);
            }
        }
        std::error_code ec;
        fs::remove(files.dir / kPendingMarker, ec);
        const Machine* m = nullptr;
        Status st = machines_.get(job->caller, job->name, &m);
        return finish(job, st, m);
    }
    auto alive = alive_;
    disks_.attach(job->caller, job->name, job->made[i],
                  [this, alive, job, i](const Status& st, const Disk*) {
                      if (!*alive) {
                          return;
                      }
                      if (!st) {
                          return finish(job,
                                        {st.code(), "attaching " + job->made[i] + " to " +
                                                        job->name + ": " + st.message()},
                                        nullptr);
                      }
                      attach_next(job, i + 1);
                  });
}

void Clones::finish(const std::shared_ptr<Job>& job, const Status& st, const Machine* m) {
    if (job->ended) {
        return;
    }
    job->ended = true;
    if (job->held) {
        machines_.release(job->source, Op::clone);
        job->held = false;
    }
    for (auto& c : job->copies) {
        if (c.reserved) {
            disks_.abort_copy(c.new_disk, c.tmp);
            c.reserved = false;
        }
    }
    std::error_code ec;
    if (!job->staging.empty()) {
        fs::remove_all(job->staging, ec);
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - job->t0)
                  .count();
    if (st) {
        spdlog::info("{}: cloned as {} in {} ms", job->source, job->name, ms);
        return job->done(st, m);
    }
    spdlog::warn("{}: the clone {} failed: {}", job->source, job->name, st.message());
    if (!job->registered) {
        return job->done(st, nullptr);
    }
    // The machine was registered: it goes, and the disks made for it.
    auto alive = alive_;
    machines_.remove(job->caller, job->name, true, [this, alive, job, st](const Status&) {
        if (!*alive) {
            return;
        }
        for (const auto& d : job->made) {
            disks_.remove(job->caller, d);
        }
        job->done(st, nullptr);
    });
}

}  // namespace hangar::core
