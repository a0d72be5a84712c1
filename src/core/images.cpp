#include "core/images.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <simdjson.h>
#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "hangar/names.hpp"
#include "util/json.hpp"
#include "util/process.hpp"
#include "util/reactor.hpp"
#include "util/sha256.hpp"
#include "util/time.hpp"
#include "util/user_files.hpp"

namespace hangar::core {

namespace fs = std::filesystem;
using images::RemoteImage;

struct Images::Pull {
    PullRequest req;
    std::string op;
    std::string tmp;      // <dir>/.pull-NAME-RANDOM, renamed to <dir>/NAME when complete
    std::string archive;  // the downloaded (or imported) archive
    std::string base;     // the server's URL with one trailing '/'
    std::string expected_sha256;
    std::string format;  // "tar" or "squashfs"
    Image img;
    std::string file;  // a disk image's or ISO's file in `tmp`
    std::function<void(const Status&, const Image*)> done;
    std::chrono::steady_clock::time_point last_progress{};
    // Finished, failed, cancelled or timed out: late callbacks do nothing, and a download
    // still running (`ctl.cancelled` is this flag) ends at its next read.
    std::shared_ptr<bool> ended = std::make_shared<bool>(false);
    Transfer::Control ctl;  // what its downloads may reach
    // The archive, opened once (a user's file as that user); every step reads this descriptor.
    UniqueFd archive_fd;
    // The step's child process (sha256sum, tar, unsquashfs): a way to kill it, and whether it
    // still runs (a pull that ends meanwhile leaves its directory to the child's end).
    std::shared_ptr<std::function<void()>> kill_child;
    bool child_running = false;
    std::unique_ptr<boost::asio::steady_timer> deadline;
};

namespace {

constexpr size_t kMaxAlias = 256;
constexpr size_t kMaxCommandOutput = 64 * 1024;
constexpr auto kProgressInterval = std::chrono::milliseconds(250);

bool printable(std::string_view s) {
    for (char c : s) {
        auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f) {
            return false;
        }
    }
    return true;
}

// How long a step over `bytes` of archive may take before the pull is ended: generous for a
// slow disk, finite for a stuck one.
std::chrono::seconds step_deadline(uint64_t bytes) {
    return std::chrono::seconds(300 + bytes / (4u << 20));
}

// "https://host:port/" of a URL ("" when it is not one), for comparing servers.
std::string url_origin(const std::string& url) {
    size_t scheme = url.find("://");
    if (scheme == std::string::npos) {
        return "";
    }
    size_t end = url.find('/', scheme + 3);
    std::string o = url.substr(0, end);
    for (auto& c : o) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    bool tls = o.rfind("https://", 0) == 0;
    if (o.find(':', scheme + 3) == std::string::npos) {
        o += tls ? ":443" : ":80";
    }
    return o + "/";
}

void info_fields(json::Writer& w, const images::ImageInfo& i) {
    w.field("os", i.os)
        .field("release", i.release)
        .field("arch", i.arch)
        .field("variant", i.variant)
        .field("version", i.version);
}

bool image_from_json(const std::string& text, Image& img) {
    simdjson::dom::parser parser;
    simdjson::dom::object o;
    if (parser.parse(text).get(o) != simdjson::SUCCESS) {
        return false;
    }
    auto str = [&](simdjson::dom::object from, const char* k, std::string& to) {
        std::string_view v;
        if (from[k].get(v) == simdjson::SUCCESS) {
            to = v;
        }
    };
    str(o, "name", img.name);
    str(o, "os", img.os);
    str(o, "release", img.release);
    str(o, "arch", img.arch);
    str(o, "variant", img.variant);
    str(o, "version", img.version);
    str(o, "sha256", img.sha256);
    str(o, "created_at", img.created_at);
    str(o, "kind", img.kind);
    str(o, "format", img.format);
    uint64_t u = 0;
    if (o["virtual_size"].get(u) == simdjson::SUCCESS) {
        img.virtual_size = u;
    }
    if (o["size"].get(u) == simdjson::SUCCESS) {
        img.size = u;
    }
    if (o["owner"].get(u) == simdjson::SUCCESS) {
        img.owner = static_cast<uint32_t>(u);
    }
    simdjson::dom::object src;
    if (o["source"].get(src) == simdjson::SUCCESS) {
        str(src, "type", img.source_type);
        str(src, "server", img.server);
        str(src, "alias", img.alias);
        str(src, "path", img.path);
        str(src, "url", img.url);
    }
    if (img.kind != "rootfs") {
        img.format = img.kind == "iso" ? "raw" : img.format;
        if ((img.kind != "disk" && img.kind != "iso") ||
            (img.format != "qcow2" && img.format != "raw")) {
            return false;
        }
    }
    return !img.name.empty();
}

bool has_at(int fd, off_t at, std::string_view magic) {
    char buf[16] = {};
    return magic.size() <= sizeof buf &&
           pread(fd, buf, magic.size(), at) == static_cast<ssize_t>(magic.size()) &&
           std::string_view(buf, magic.size()) == magic;
}

// A URL a user gave for a download: http(s), a host, printable, no credentials or fragment.
Status check_download_url(const std::string& url) {
    std::string base;
    std::string without_query = url.substr(0, url.find('?'));
    if (Status st = check_server_url(without_query, base); !st) {
        return {st.code(), "source.url: " + st.message()};
    }
    if (url.size() > 2048 || !printable(url) || url.find_first_of("@#\\") != std::string::npos) {
        return {Errc::bad_request,
                "source.url must be printable, without credentials or a fragment"};
    }
    if (without_query.back() == '/') {
        return {Errc::bad_request, "source.url must name a file, not a directory"};
    }
    return {};
}

bool is_hex64(const std::string& s) {
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

}  // namespace

Status detect_image_content(int fd, const std::string& hint, ImageContent& out) {
    if (!hint.empty() && hint != "rootfs" && hint != "disk" && hint != "iso") {
        return {Errc::bad_request,
                "kind must be \"rootfs\", \"disk\" or \"iso\", not " + json::quote(hint)};
    }
    std::string found;
    if (has_at(fd, 0, "QFI\xfb")) {
        out = {"disk", "qcow2"};
        found = "a qcow2 disk image";
    } else if (has_at(fd, 32769, "CD001")) {
        out = {"iso", "raw"};
        found = "an ISO 9660 image";
    } else if (has_at(fd, 0, "hsqs")) {
        out = {"rootfs", "squashfs"};
        found = "a squashfs";
    } else if (has_at(fd, 257, "ustar") || has_at(fd, 0, "\x1f\x8b") ||
               has_at(fd, 0,
                      "\xfd"
                      "7zXZ") ||
               has_at(fd, 0, "\x28\xb5\x2f\xfd") || has_at(fd, 0, "BZh")) {
        out = {"rootfs", "tar"};
        found = "a tar archive";
    } else if (hint == "disk") {
        out = {"disk", "raw"};  // what the request says: a raw disk image
        return {};
    } else if (hint.empty() || hint == "rootfs") {
        out = {"rootfs", "tar"};  // tar knows more formats than these magic numbers: it decides
        return {};
    } else {
        return {Errc::invalid_spec, "the file is not an ISO 9660 image"};
    }
    // An ISO is a raw disk as well (hybrid images boot from either).
    if (!hint.empty() && hint != out.kind && !(hint == "disk" && out.kind == "iso")) {
        return {Errc::invalid_spec, "the file is " + found + ", not of kind " + json::quote(hint)};
    }
    if (hint == "disk" && out.kind == "iso") {
        out = {"disk", "raw"};
    }
    return {};
}

Status check_disk_info(std::string_view info_json, const std::string& format,
                       uint64_t& virtual_size) {
    simdjson::dom::parser parser;
    simdjson::dom::object o;
    if (parser.parse(info_json.data(), info_json.size()).get(o) != simdjson::SUCCESS) {
        return {Errc::internal, "qemu-img info did not answer JSON"};
    }
    std::string_view f;
    if (o["format"].get(f) != simdjson::SUCCESS || f != format) {
        return {Errc::invalid_spec,
                "qemu-img reads the image as " + json::quote(std::string(f)) + ", not " + format};
    }
    std::string_view backing;
    if (o["backing-filename"].get(backing) == simdjson::SUCCESS ||
        o["full-backing-filename"].get(backing) == simdjson::SUCCESS) {
        return {Errc::invalid_spec,
                "the image names a backing file (" + json::quote(std::string(backing)) +
                    "): an image must hold all its data; flatten it first (qemu-img convert)"};
    }
    std::string_view data_file;
    if (o.at_pointer("/format-specific/data/data-file").get(data_file) == simdjson::SUCCESS) {
        return {Errc::invalid_spec, "the image keeps its data in an external file (" +
                                        json::quote(std::string(data_file)) +
                                        "); convert it to a plain qcow2 first"};
    }
    uint64_t size = 0;
    if (o["virtual-size"].get(size) != simdjson::SUCCESS || size == 0) {
        return {Errc::invalid_spec, "qemu-img reports no virtual size"};
    }
    if (size > kMaxVirtualBytes) {
        return {Errc::invalid_spec, "the image's virtual size (" + std::to_string(size) +
                                        " bytes) is larger than 64 TiB"};
    }
    virtual_size = size;
    return {};
}

Status check_server_url(const std::string& url, std::string& base) {
    std::string_view rest;
    if (url.rfind("https://", 0) == 0) {
        rest = std::string_view(url).substr(8);
    } else if (url.rfind("http://", 0) == 0) {
        rest = std::string_view(url).substr(7);
    } else {
        return {Errc::bad_request, "the image server must be an https:// or http:// URL"};
    }
    if (url.size() > 2048 || !printable(url) || url.find_first_of("@?#\\") != std::string::npos) {
        return {Errc::bad_request,
                "the image server URL must not hold credentials, a query, a fragment, "
                "backslashes, spaces or control characters"};
    }
    size_t host_end = rest.find('/');
    std::string_view host = rest.substr(0, host_end);
    if (host.empty() || host.front() == ':') {
        return {Errc::bad_request, "the image server URL has no host"};
    }
    base = url;
    if (base.back() != '/') {
        base += '/';
    }
    return {};
}

Images::Images(boost::asio::io_context& io, store::Db& db, EventBus& events, Operations& ops,
               std::string dir, Transfer* transfer, std::map<std::string, std::string> remotes)
    : io_(io), db_(db), events_(events), ops_(ops), dir_(std::move(dir)), transfer_(transfer) {
    for (const auto& [name, url] : remotes) {
        std::string base;
        if (check_server_url(url, base)) {
            remotes_[name] = base;
        }
    }
}

Images::~Images() {
    *alive_ = false;
}

void Images::load() {
    HANGAR_ASSERT_REACTOR();
    std::error_code ec;
    fs::create_directories(dir_, ec);
    chmod(dir_.c_str(), 0700);  // root file systems hold set-uid programs of their own
    for (const auto& [name, text] : db_.load_documents("images")) {
        auto img = std::make_unique<Image>();
        if (!image_from_json(text, *img) || img->name != name) {
            spdlog::warn("images: dropping the unreadable record of {}", name);
            db_.delete_document("images", name);
            continue;
        }
        bool present = img->kind == "rootfs"
                           ? fs::is_directory(rootfs_dir(name), ec)
                           : fs::is_regular_file(dir_ + "/" + name + "/" + file_name(*img), ec);
        if (!present) {
            spdlog::warn("images: {} has no {} in {}; dropping its record", name,
                         img->kind == "rootfs" ? "root file system" : file_name(*img), dir_);
            db_.delete_document("images", name);
            continue;
        }
        images_[name] = std::move(img);
    }
    // What interrupted pulls and deletes left, and directories no record names (a pull
    // renamed into place just before a crash, its record not yet committed).
    for (const auto& entry : fs::directory_iterator(dir_, ec)) {
        std::string n = entry.path().filename();
        if (n.rfind(".pull-", 0) == 0 || n.rfind(".trash-", 0) == 0 ||
            (is_valid_name(n) && !images_.count(n))) {
            spdlog::info("images: removing leftover {}", entry.path().string());
            remove_tree_async(io_, entry.path());
        }
    }
}

std::vector<const Image*> Images::list() const {
    std::vector<const Image*> out;
    for (const auto& [name, img] : images_) {
        out.push_back(img.get());
    }
    return out;
}

Status Images::get(const std::string& name, const Image** out) const {
    if (Status st = check_name("image", name); !st) {
        return st;
    }
    auto it = images_.find(name);
    if (it == images_.end()) {
        return {Errc::not_found, "no image " + json::quote(name)};
    }
    *out = it->second.get();
    return {};
}

Status Images::rootfs(const std::string& name, std::string& path) const {
    const Image* img = nullptr;
    if (Status st = get(name, &img); !st) {
        return st;
    }
    if (img->kind != "rootfs") {
        return {Errc::invalid_spec, "image " + json::quote(name) + " is a " + img->kind +
                                        " image, not a container's root file system"};
    }
    path = rootfs_dir(name);
    return {};
}

std::string Images::file_name(const Image& img) {
    return img.kind == "iso" ? "image.iso" : "disk." + img.format;
}

Status Images::file_of(const std::string& name, const std::string& kind, const Image** out,
                       std::string& path) const {
    const Image* img = nullptr;
    if (Status st = get(name, &img); !st) {
        return st;
    }
    if (img->kind != kind) {
        return {Errc::invalid_spec, "image " + json::quote(name) + " is of kind " +
                                        json::quote(img->kind) + ", not " + json::quote(kind)};
    }
    *out = img;
    path = dir_ + "/" + name + "/" + file_name(*img);
    return {};
}

Status Images::remove(const Caller& caller, const std::string& name) {
    HANGAR_ASSERT_REACTOR();
    const Image* img = nullptr;
    if (Status st = get(name, &img); !st) {
        return st;
    }
    if (!caller.admin && img->owner != caller.uid) {
        return {Errc::forbidden,
                "image " + json::quote(name) + " belongs to uid " + std::to_string(img->owner)};
    }
    if (std::string who = users_ ? users_(name) : ""; !who.empty()) {
        return {Errc::conflict, "image " + json::quote(name) + " is in use by " + who};
    }
    // Out of the way at once, so the name is free; the tree goes in the background.
    std::string trash = dir_ + "/.trash-" + name + "-" + random_hex(4);
    if (Status st = remove_tree_async(io_, dir_ + "/" + name, trash); !st) {
        return {Errc::internal, "image " + json::quote(name) + ": " + st.message()};
    }
    db_.delete_document("images", name);
    events_.publish(ImageDeleted{name}, "", img->owner);
    images_.erase(name);
    return {};
}

void Images::remote(const Caller& caller, const std::string& server, const std::string& type,
                    std::function<void(const Status&, std::vector<RemoteImage>)> done) {
    HANGAR_ASSERT_REACTOR();
    std::string base;
    Transfer::Control ctl;
    if (Status st = resolve_server(caller, server, base, ctl); !st) {
        return done(st, {});
    }
    catalog(base, type, ctl, std::move(done));
}

void Images::catalog(const std::string& base, const std::string& type, const Transfer::Control& ctl,
                     std::function<void(const Status&, std::vector<RemoteImage>)> done) {
    if (type != "simplestreams" && type != "lxc") {
        return done({Errc::bad_request, "type must be simplestreams or lxc"}, {});
    }
    if (!transfer_) {
        return done({Errc::unavailable, "downloads are not available in this process"}, {});
    }
    auto alive = alive_;
    auto parse = [type, done](const Status& st, std::string body) {
        std::vector<RemoteImage> list;
        if (!st) {
            return done(st, {});
        }
        Status pst = type == "lxc" ? images::parse_lxc_index(body, list)
                                   : images::parse_simplestreams(body, list);
        done(pst, pst ? std::move(list) : std::vector<RemoteImage>{});
    };
    auto where = [base](const Status& st, const std::string& what) {
        return Status{st.code(), "cannot read " + what + " of " + base + ": " + st.message()};
    };
    if (type == "lxc") {
        return transfer_->get(base + std::string(images::kLxcIndex), kMaxCatalogBytes, ctl,
                              [parse, where](const Status& st, std::string body) {
                                  parse(st ? st : where(st, "the LXC index"), std::move(body));
                              });
    }
    transfer_->get(
        base + std::string(images::kSimplestreamsIndex), kMaxCatalogBytes, ctl,
        [this, alive, base, ctl, parse, where, done](const Status& st, std::string body) {
            if (!*alive) {
                return;
            }
            if (!st) {
                return done(where(st, "the simplestreams index"), {});
            }
            std::string products;
            if (Status pst = images::simplestreams_products_path(body, products); !pst) {
                return done(pst, {});
            }
            transfer_->get(base + products, kMaxCatalogBytes, ctl,
                           [parse, where, products](const Status& st, std::string body) {
                               parse(st ? st : where(st, products), std::move(body));
                           });
        });
}

Status Images::resolve_server(const Caller& caller, const std::string& server, std::string& base,
                              Transfer::Control& ctl) const {
    auto remote = remotes_.find(server);
    if (remote != remotes_.end()) {
        base = remote->second;
    } else if (Status st = check_server_url(server, base); !st) {
        return st;
    }
    if (caller.admin) {
        return {};  // root and admins may use any server, and follow any redirect
    }
    bool configured = false;
    for (const auto& [name, url] : remotes_) {
        configured = configured || url == base;
    }
    if (!configured) {
        std::string names;
        for (const auto& [name, url] : remotes_) {
            names += (names.empty() ? "" : ", ") + name + "=" + url;
        }
        return {Errc::forbidden, "uid " + std::to_string(caller.uid) +
                                     " may use only the configured image remotes (" +
                                     (names.empty() ? "none" : names) +
                                     "; --image-remote NAME=URL); " + json::quote(server) +
                                     " is not one of them"};
    }
    keep_on_remotes(ctl);
    return {};
}

void Images::keep_on_remotes(Transfer::Control& ctl) const {
    std::vector<std::string> origins;
    for (const auto& [name, url] : remotes_) {
        origins.push_back(url_origin(url));
    }
    // Redirects stay on the remotes' own servers.
    ctl.allow = [origins](const std::string& url) -> Status {
        std::string o = url_origin(url);
        if (std::find(origins.begin(), origins.end(), o) != origins.end()) {
            return {};
        }
        return {Errc::forbidden, "it leaves the configured image remotes"};
    };
}

Status Images::pull(const Caller& caller, const PullRequest& req, std::string& op_id,
                    std::function<void(const Status&, const Image*)> done) {
    HANGAR_ASSERT_REACTOR();
    if (quotas_ && !caller.admin && !quotas_->exempt(caller.uid)) {
        if (Status st = quotas_->check_pull(caller.uid); !st) {
            return st;
        }
    }
    if (Status st = check_name("image", req.name); !st) {
        return st;
    }
    if (images_.count(req.name) || pending_.count(req.name)) {
        return {Errc::conflict, "image " + json::quote(req.name) + " already exists"};
    }
    if (pending_.size() >= kMaxConcurrentPulls) {
        return {Errc::busy, std::to_string(kMaxConcurrentPulls) +
                                " images are being pulled already; try again when one is done"};
    }
    if (!caller.admin) {
        size_t mine = pulling(caller.uid), users = 0;
        for (const auto& [name, pull] : pending_) {
            users += !pull.admin;
        }
        if (mine >= kMaxPullsPerUser) {
            return {Errc::busy, "uid " + std::to_string(caller.uid) + " has " +
                                    std::to_string(mine) +
                                    " pulls or imports running (the limit per user); try again "
                                    "when one is done"};
        }
        if (users + kPullsKeptForAdmins >= kMaxConcurrentPulls) {
            return {Errc::busy,
                    "the pull slots open to users are taken; try again when one is done"};
        }
    }
    if (!req.kind.empty() && req.type != "file" && req.type != "url" && req.kind != "rootfs") {
        return {Errc::bad_request, "image servers offer root file systems: kind \"rootfs\""};
    }
    auto p = std::make_shared<Pull>();
    p->req = req;
    p->done = std::move(done);
    p->img.name = req.name;
    p->img.source_type = req.type;
    p->img.owner = caller.uid;
    p->ctl.cancelled = p->ended;
    p->kill_child = std::make_shared<std::function<void()>>([] {});
    if (req.type == "file") {
        if (req.path.empty() || req.path.front() != '/' || !printable(req.path)) {
            return {Errc::bad_request, "source.path must be an absolute path without spaces"};
        }
        // Opened once, as the caller: what the caller may not read is refused like a missing
        // file, and a FIFO, device or directory never reaches a tool.
        OpenedFile f;
        if (Status st = open_user_file("source.path", req.path, {caller.uid, caller.admin}, false,
                                       kMaxArchiveBytes, f);
            !st) {
            return st;
        }
        p->img.path = req.path;
        p->img.size = static_cast<uint64_t>(f.st.st_size);
        ImageContent c;
        if (Status st = detect_image_content(f.fd.get(), req.kind, c); !st) {
            return {st.code(), "source.path " + json::quote(req.path) + ": " + st.message()};
        }
        p->img.kind = c.kind;
        (c.kind == "rootfs" ? p->format : p->img.format) = c.format;
        p->archive_fd = std::move(f.fd);
    } else if (req.type == "url") {
        if (Status st = check_download_url(req.url); !st) {
            return st;
        }
        if (!is_hex64(req.sha256)) {
            return {Errc::bad_request,
                    "source.sha256 must be the file's SHA-256: 64 lowercase hex digits"};
        }
        if (!req.kind.empty() && req.kind != "disk" && req.kind != "iso") {
            return {Errc::bad_request,
                    "a URL source is a disk image or an ISO: kind \"disk\" or \"iso\""};
        }
        std::string origin = url_origin(req.url), names;
        bool allowed = caller.admin;
        for (const auto& [name, url] : remotes_) {
            allowed = allowed || url_origin(url) == origin;
            names += (names.empty() ? "" : ", ") + name + "=" + url;
        }
        if (!allowed) {
            return {Errc::forbidden, "uid " + std::to_string(caller.uid) +
                                         " may download only from the configured image "
                                         "remotes' servers (" +
                                         (names.empty() ? "none" : names) + ")"};
        }
        if (!caller.admin) {
            keep_on_remotes(p->ctl);
        }
        if (!transfer_) {
            return {Errc::unavailable, "downloads are not available in this process"};
        }
        p->img.url = req.url;
        p->expected_sha256 = req.sha256;
    } else if (req.type == "simplestreams" || req.type == "lxc") {
        if (Status st = resolve_server(caller, req.server, p->base, p->ctl); !st) {
            return st;
        }
        if (req.alias.empty() || req.alias.size() > kMaxAlias || !printable(req.alias)) {
            return {Errc::bad_request, "source.alias must be 1 to 256 printable characters"};
        }
        if (!transfer_) {
            return {Errc::unavailable, "downloads are not available in this process"};
        }
        p->img.server = remotes_.count(req.server) ? p->base : req.server;
        p->img.alias = req.alias;
    } else {
        return {Errc::bad_request, "source.type must be simplestreams, lxc, file or url"};
    }
    std::error_code ec;
    fs::create_directories(dir_, ec);
    p->tmp = dir_ + "/.pull-" + req.name + "-" + random_hex(4);
    if (::mkdir(p->tmp.c_str(), 0700) != 0) {
        return {Errc::internal, "cannot create " + p->tmp + ": " + strerror(errno)};
    }
    p->archive = p->tmp + "/archive";
    p->op = op_id = ops_.new_id();
    pending_[req.name] = {caller.uid, caller.admin};
    ops_.start_image(p->op, req.name, caller.uid,
                     req.type == "file" ? "image.import" : "image.pull");
    p->deadline = std::make_unique<boost::asio::steady_timer>(io_);
    auto alive = alive_;
    ops_.set_canceller(p->op, [this, alive, p](uint32_t by) {
        if (*alive) {
            finish(p, {Errc::conflict, "cancelled by uid " + std::to_string(by)});
        }
    });
    // Every step has a deadline; when it passes, the pull ends (its child killed).
    auto arm = [this, alive, p](const std::string& step, std::chrono::seconds limit) {
        p->deadline->expires_after(limit);
        p->deadline->async_wait([this, alive, p, step, limit](boost::system::error_code ec) {
            if (!ec && *alive) {
                finish(p, {Errc::timeout, step + " did not finish within " +
                                              std::to_string(limit.count()) + " s"});
            }
        });
    };
    // A step's child reads the archive's descriptor from its start, as stdin or as fd 3.
    auto run_step = [this, alive, p, arm](const std::string& step, std::vector<std::string> argv,
                                          int archive_as,
                                          std::function<void(const CaptureResult&)> next) {
        arm(step, step_deadline(p->img.size));
        lseek(p->archive_fd.get(), 0, SEEK_SET);
        CaptureOptions co;
        co.argv = std::move(argv);
        co.fds = {{p->archive_fd.get(), archive_as}};
        co.limit = kMaxCommandOutput;
        co.merge_stderr = true;
        co.new_session = true;  // killed as a process group, by finish() through the switch
        co.kill_switch = p->kill_child;
        p->child_running = true;
        std::string tool = co.argv[0];
        run_capture(io_, std::move(co),
                    [this, alive, p, tool, next](const Status& st, CaptureResult r) {
                        if (!*alive) {
                            return;
                        }
                        p->child_running = false;
                        if (*p->ended) {
                            // Ended while this step ran (a pull succeeds only after it), so
                            // as a failure: its directory is removed now that nothing writes.
                            remove_tree_async(io_, p->tmp);
                            return;
                        }
                        if (!st) {
                            return finish(p, {Errc::unavailable, tool + ": " + st.message()});
                        }
                        next(r);
                    });
    };

    // Each step hands on to the next; any failure ends in finish(), which cleans up.
    auto unpack = [this, p, run_step] {
        ops_.progress(p->op, "unpack", p->img.size, p->img.size);
        std::string rootfs = p->tmp + "/rootfs";
        // The tools open /dev/fd/3: the archive's inode, whatever its name points at now (tar
        // recognizes the compression of a file it opens itself, not of its stdin).
        std::vector<std::string> argv;
        if (p->format == "squashfs") {
            argv = {"unsquashfs", "-no-progress", "-quiet", "-d", rootfs, "/dev/fd/3"};
        } else {
            ::mkdir(rootfs.c_str(), 0755);
            argv = {"tar",
                    "-x",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "-f",
                    "/dev/fd/3",
                    "-C",
                    rootfs};
        }
        run_step("unpack", argv, 3, [this, p, rootfs, tool = argv[0]](const CaptureResult& r) {
            if (r.exit.code != 0 || r.exit.signal != 0) {
                return finish(
                    p, {Errc::invalid_spec,
                        "the archive could not be unpacked (" + tool + " " + r.exit.describe() +
                            "): " + tail_of(r.out) +
                            (p->req.kind.empty() ? " (a raw disk image needs \"kind\": \"disk\")"
                                                 : "")});
            }
            std::error_code ec;
            if (fs::is_empty(rootfs, ec)) {
                return finish(p, {Errc::invalid_spec, "the archive is empty"});
            }
            finish(p, {});
        });
    };
    // Disk images and ISOs: the file goes into the pull's directory (a copy of a user's file,
    // made by reflink where the file system can; a download is renamed), then qemu-img reads
    // that copy, which nobody else can change any more.
    auto inspect = [this, p, run_step] {
        ops_.progress(p->op, "inspect", p->img.size, p->img.size);
        auto done = [this, p] {
            ::chmod(p->file.c_str(), 0444);  // a base image is never written
            finish(p, {});
        };
        if (p->img.kind == "iso") {
            p->img.virtual_size = p->img.size;
            return done();
        }
        run_step(
            "inspect", {"qemu-img", "info", "--output=json", "-f", p->img.format, "--", p->file}, 0,
            [this, p, run_step, done](const CaptureResult& r) {
                if (r.exit.code != 0 || r.exit.signal != 0) {
                    return finish(p, {Errc::invalid_spec,
                                      "qemu-img cannot read the image: " + tail_of(r.out)});
                }
                if (Status st = check_disk_info(r.out, p->img.format, p->img.virtual_size); !st) {
                    return finish(p, st);
                }
                if (p->img.format != "qcow2") {
                    return done();
                }
                // 0: clean, 3: leaked clusters only (space, not data).
                run_step("check", {"qemu-img", "check", "-q", "-f", "qcow2", "--", p->file}, 0,
                         [this, p, done](const CaptureResult& r) {
                             if ((r.exit.code != 0 && r.exit.code != 3) || r.exit.signal) {
                                 return finish(p, {Errc::invalid_spec,
                                                   "the qcow2 image is damaged (qemu-img check " +
                                                       r.exit.describe() + "): " + tail_of(r.out)});
                             }
                             done();
                         });
            });
    };
    auto place = [this, p, run_step, inspect] {
        p->file = p->tmp + "/" + Images::file_name(p->img);
        if (p->req.type != "file") {
            if (::rename(p->archive.c_str(), p->file.c_str()) != 0) {
                return finish(p, {Errc::internal, "rename " + p->archive + ": " + strerror(errno)});
            }
            return inspect();
        }
        ops_.progress(p->op, "copy", p->img.size, p->img.size);
        run_step("copy", {"cp", "--reflink=auto", "--sparse=always", "/dev/fd/3", p->file}, 3,
                 [this, p, inspect](const CaptureResult& r) {
                     if (r.exit.code != 0 || r.exit.signal != 0) {
                         return finish(
                             p, {Errc::internal, "copying the image (cp " + r.exit.describe() +
                                                     "): " + tail_of(r.out)});
                     }
                     inspect();
                 });
    };
    auto verify = [this, p, run_step, unpack, place] {
        ops_.progress(p->op, "verify", p->img.size, p->img.size);
        run_step("verify", {"sha256sum"}, 0, [this, p, unpack, place](const CaptureResult& r) {
            if (r.exit.code != 0 || r.exit.signal != 0 || r.out.size() < 64) {
                return finish(p, {Errc::internal, "sha256sum failed: " + tail_of(r.out)});
            }
            std::string got = r.out.substr(0, 64);
            if (!p->expected_sha256.empty() && got != p->expected_sha256) {
                return finish(
                    p, {Errc::unavailable,
                        "checksum mismatch: the downloaded file has SHA-256 " + got + ", " +
                            (p->req.type == "url" ? "the request says " : "the catalog says ") +
                            p->expected_sha256 + "; nothing was registered"});
            }
            p->img.sha256 = got;
            p->img.kind == "rootfs" ? unpack() : place();
        });
    };
    // Downloads `url` into the archive, then verifies it.
    auto fetch = [this, alive, p, verify, arm](const std::string& url) {
        ops_.progress(p->op, "download", 0, p->img.size);
        // At least 1 MiB/s on average, and never less than ten minutes.
        arm("download", std::chrono::seconds(600 + p->img.size / (1u << 20)));
        transfer_->download(
            url, p->archive, p->ctl,
            [this, alive, p](uint64_t bytes, uint64_t total) {
                auto now = std::chrono::steady_clock::now();
                if (*alive && !*p->ended && now - p->last_progress >= kProgressInterval) {
                    p->last_progress = now;
                    ops_.progress(p->op, "download", bytes, total);
                }
            },
            [this, alive, p, verify](const Status& st) {
                if (!*alive || *p->ended) {
                    return;
                }
                if (!st) {
                    return finish(p, st);
                }
                // hangard's own file, in its own directory.
                int fd = ::open(p->archive.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                struct stat sb {};
                if (fd < 0 || fstat(fd, &sb) != 0) {
                    if (fd >= 0) {
                        ::close(fd);
                    }
                    return finish(p, {Errc::internal, "cannot open the downloaded archive: " +
                                                          std::string(strerror(errno))});
                }
                p->archive_fd.reset(fd);
                p->img.size = static_cast<uint64_t>(sb.st_size);
                if (p->req.type == "url") {
                    ImageContent c;
                    Status cst = detect_image_content(fd, p->req.kind, c);
                    if (!cst && p->req.kind.empty()) {
                        c = {"disk", "raw"};  // no header of its own: a raw disk image
                        cst = {};
                    }
                    if (!cst || c.kind == "rootfs") {
                        return finish(p, cst ? Status{Errc::invalid_spec,
                                                      "the download is a root file system "
                                                      "archive, not a disk image or ISO"}
                                             : cst);
                    }
                    p->img.kind = c.kind;
                    p->img.format = c.format;
                }
                verify();
            });
    };
    auto download = [this, alive, p, fetch](const RemoteImage& r) {
        static_cast<images::ImageInfo&>(p->img) = r;
        p->img.size = r.size;
        p->format = r.format;
        std::string url = p->base + r.path;
        if (!r.sha256.empty()) {
            p->expected_sha256 = r.sha256;
            return fetch(url);
        }
        // The LXC index gives no checksum; the image's directory may have SHA256SUMS.
        std::string dir = r.path.substr(0, r.path.rfind('/') + 1);
        std::string file = r.path.substr(dir.size());
        transfer_->get(
            p->base + dir + "SHA256SUMS", 1024 * 1024, p->ctl,
            [this, alive, p, fetch, file, url](const Status& st, std::string body) {
                if (!*alive || *p->ended) {
                    return;
                }
                if (!st && st.code() != Errc::not_found) {
                    return finish(p, st);
                }
                if (st) {
                    p->expected_sha256 = images::sha256sums_entry(body, file);
                    if (p->expected_sha256.empty()) {
                        return finish(
                            p, {Errc::unavailable, "the image's SHA256SUMS does not list " + file});
                    }
                } else {
                    spdlog::warn(
                        "images: {} comes without SHA256SUMS; its checksum "
                        "is recorded, not verified",
                        p->req.name);
                }
                fetch(url);
            });
    };
    boost::asio::post(io_, [this, alive, p, download, verify, fetch, arm] {
        if (!*alive || *p->ended) {
            return;
        }
        if (p->req.type == "file") {
            return verify();
        }
        if (p->req.type == "url") {
            return fetch(p->img.url);
        }
        ops_.progress(p->op, "catalog", 0, 0);
        arm("reading the catalog", std::chrono::seconds(300));
        catalog(p->base, p->req.type, p->ctl,
                [this, alive, p, download](const Status& st, std::vector<RemoteImage> list) {
                    if (!*alive || *p->ended) {
                        return;
                    }
                    if (!st) {
                        return finish(p, st);
                    }
                    std::string arch = images::host_arch();
                    const RemoteImage* r = images::find_image(list, p->req.alias, arch);
                    if (!r) {
                        return finish(
                            p, {Errc::not_found, "the server offers no image " +
                                                     json::quote(p->req.alias) + " for " + arch});
                    }
                    download(*r);
                });
    });
    return {};
}

void Images::finish(const std::shared_ptr<Pull>& p, const Status& st) {
    if (*p->ended) {
        return;
    }
    *p->ended = true;
    if (p->deadline) {
        p->deadline->cancel();
    }
    p->archive_fd.reset();
    Status result = st;
    const Image* made = nullptr;
    if (result) {
        std::string final_dir = dir_ + "/" + p->req.name;
        ::unlink(p->archive.c_str());
        if (::rename(p->tmp.c_str(), final_dir.c_str()) != 0) {
            result = {Errc::internal,
                      "cannot move the image into place: " + std::string(strerror(errno))};
        } else {
            auto img = std::make_unique<Image>(p->img);
            img->created_at = now_rfc3339();
            std::string js = to_json(*img);
            db_.put_document("images", img->name, js);
            events_.publish(ImageCreated{img->name, js}, "", img->owner);
            made = img.get();
            images_[img->name] = std::move(img);
            spdlog::info("images: {} is ready ({} bytes, sha256 {})", p->req.name, p->img.size,
                         p->img.sha256);
        }
    }
    if (!result) {
        spdlog::warn("images: pulling {} failed: {}", p->req.name, result.message());
        if (p->child_running) {
            // Killed, not yet gone: its directory goes once it has ended.
            (*p->kill_child)();
        } else {
            remove_tree_async(io_, p->tmp);
        }
    }
    pending_.erase(p->req.name);
    ++(result ? succeeded_ : failed_);
    ops_.finish_image(p->op, result);
    if (p->done) {
        p->done(result, made);
    }
}

std::string Images::to_json(const Image& img) const {
    json::Writer w;
    w.begin_object()
        .field("name", img.name)
        .field("type", img.kind == "rootfs" ? "container" : "vm")
        .field("kind", img.kind);
    if (img.kind != "rootfs") {
        w.field("format", img.format).field("virtual_size", img.virtual_size);
    }
    w.key("source").begin_object().field("type", img.source_type);
    if (img.source_type == "file") {
        w.field("path", img.path);
    } else if (img.source_type == "url") {
        w.field("url", img.url);
    } else {
        w.field("server", img.server).field("alias", img.alias);
    }
    w.end_object();
    info_fields(w, img);
    w.field("sha256", img.sha256)
        .field("size", img.size)
        .field("owner", img.owner)
        .field("created_at", img.created_at)
        .end_object();
    return w.take();
}

std::string Images::remote_json(const std::string& server, const std::string& type,
                                const std::vector<RemoteImage>& list) {
    json::Writer w;
    w.begin_object()
        .field("server", server)
        .field("type", type)
        .field("host_arch", images::host_arch());
    w.key("images").begin_array();
    for (const auto& r : list) {
        w.begin_object().key("aliases").begin_array();
        for (const auto& a : r.aliases) {
            w.value(a);
        }
        w.end_array();
        info_fields(w, r);
        w.field("format", r.format).field("size", r.size).field("sha256", r.sha256).end_object();
    }
    w.end_array().end_object();
    return w.take();
}

}  // namespace hangar::core
