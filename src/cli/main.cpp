// hangarctl: the command line of hangar, over the unix socket (HTTPS comes with --url).
// Exit status: 0 success, 1 an API error (its message printed), 2 a usage error.
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <simdjson.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "cli/connection.hpp"
#include "cli/terminal_session.hpp"
#include "core/spec_codec.hpp"
#include "util/json.hpp"

namespace http = boost::beast::http;
namespace websocket = boost::beast::websocket;
using local = boost::asio::local::stream_protocol;
using tcp = boost::asio::ip::tcp;
namespace ssl = boost::asio::ssl;
using hangar::cli::Connector;
using hangar::cli::Target;

namespace {

const char* kUsage =
    "usage: hangarctl [--socket PATH | --url https://HOST:PORT (--token T | --cert F --key F)\n"
    "                 [--insecure]] [--json] COMMAND [ARGS]\n"
    "commands:\n"
    "  info                         server information\n"
    "  list [--state S] [--type T]  machines\n"
    "       [--limit N [--after NAME]]  one page: N machines named after NAME\n"
    "  create NAME [--template T] [--cpus N] [--memory MIB] [--kernel F] [--initrd F]\n"
    "              [--cmdline S] [--disk F] [--description S] [--autostart]\n"
    "              [--image DISK-IMAGE [--disk-size GIB]]\n"
    "                               a VM on a copy-on-write root disk made from the image\n"
    "              [--type container --image IMAGE [-- COMMAND ARGS...]]\n"
    "                               a container boots its image's init, or runs COMMAND\n"
    "  exec NAME [--env K=V]... [--cwd DIR] [--timeout S] -- COMMAND ARGS...\n"
    "                               run in a container (its root file system when stopped);\n"
    "                               exits with the command's exit status\n"
    "  exec -it NAME [--env K=V]... [--cwd DIR] -- COMMAND ARGS...\n"
    "                               the same on a terminal (pty, window size) in a running\n"
    "                               container; Ctrl-] leaves\n"
    "  show NAME                    one machine\n"
    "  start|kill|pause|resume NAME\n"
    "  stop NAME [--timeout S]      graceful: ACPI power button, forced after S seconds\n"
    "  restart NAME [--timeout S] [--reset]\n"
    "  delete NAME [--force]\n"
    "  console NAME [--readonly] [--from OFFSET]\n"
    "                               the live serial console (scrollback first, from byte\n"
    "                               OFFSET if given); Ctrl-] leaves; without a terminal on\n"
    "                               stdin, its end leaves once the output is quiet for 1 s\n"
    "  console-log NAME [--tail BYTES]\n"
    "  events [--since SEQ] [--types a,b] [--machine NAME]   live tail\n"
    "  token create NAME | token list | token revoke NAME   (over the unix socket)\n"
    "  cert add NAME (CERT.pem | --fingerprint SHA256) | cert list | cert remove NAME\n"
    "                               trusted TLS client certificates (over the unix socket)\n"
    "  image list | image show NAME | image delete NAME\n"
    "  image pull SERVER ALIAS [--type simplestreams|lxc] [--name NAME]\n"
    "                               pull a container root file system; waits for it\n"
    "  image import NAME FILE [--kind rootfs|disk|iso]\n"
    "                               a rootfs tarball or squashfs, a qcow2 or raw disk image,\n"
    "                               an ISO (told by its content; a raw disk needs --kind disk)\n"
    "  image download NAME URL --sha256 HEX [--kind disk|iso]\n"
    "                               a VM disk image or ISO from a URL, checked by its SHA-256\n"
    "  image remote SERVER [--type simplestreams|lxc]   what a server offers\n"
    "  template list | template show NAME | template delete NAME\n"
    "  template create NAME [--cpus N] [--memory MIB] [--disk GIB] [--description S]\n"
    "                               size templates (create and delete: admins)\n"
    "  pool list | pool show NAME | pool create NAME PATH | pool delete NAME\n"
    "                               storage pools (create and delete: admins)\n"
    "  disk list | disk show NAME | disk delete NAME | disk grow NAME GIB\n"
    "  disk create NAME [--size GIB] [--pool P] [--image IMAGE | --from DISK | --file FILE]\n"
    "                               disks: empty, an overlay on a disk image, a copy\n"
    "  attach MACHINE DISK | detach MACHINE DISK\n"
    "                               hot-plugged while the VM runs\n"
    "  snapshot list VM | snapshot create VM NAME [--memory] | snapshot show VM NAME\n"
    "  snapshot restore VM NAME [--disks-only] | snapshot delete VM NAME\n"
    "                               snapshots of all of a VM's disks, and with --memory of the\n"
    "                               running guest (restored, it resumes where it was)\n"
    "  clone VM NEW [--snapshot SNAP]\n"
    "                               a new VM on copies of VM's disks (VM stopped), or of a\n"
    "                               snapshot's (a snapshot with memory: NEW resumes its guest)\n"
    "  operation show ID | operation cancel ID\n"
    "                               an operation; cancel a running image pull or import\n"
    "environment: HANGAR_SOCKET, HANGAR_URL, HANGAR_TOKEN, HANGAR_CERT, HANGAR_KEY\n";

struct UsageError {
    std::string msg;
};

// The server answered the WebSocket request with an HTTP error.
struct UpgradeDeclined {};

std::string default_socket() {
    if (const char* s = getenv("HANGAR_SOCKET"); s && *s) {
        return s;
    }
    if (geteuid() == 0) {
        return "/var/lib/hangar/hangar.sock";
    }
    if (const char* x = getenv("XDG_STATE_HOME"); x && *x) {
        return std::string(x) + "/hangar/hangar.sock";
    }
    const char* h = getenv("HOME");
    return std::string(h ? h : "") + "/.local/state/hangar/hangar.sock";
}

std::string url_encode(const std::string& s) {
    static const char* hex = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == ',') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

simdjson::dom::parser& parser() {
    static simdjson::dom::parser p;
    return p;
}

class Client {
  public:
    explicit Client(Target t) : connector_(io_, std::move(t)) {}

    Connector& connector() { return connector_; }

    // Returns the status; throws std::runtime_error when the daemon cannot be reached.
    int call(http::verb method, const std::string& target, const std::string& body,
             std::string& out) {
        http::request<http::string_body> req{method, target, 11};
        req.set(http::field::host, t_.socket.empty() ? t_.host : "hangar");
        req.set(http::field::user_agent, "hangarctl");
        if (!t_.token.empty()) {
            req.set(http::field::authorization, "Bearer " + t_.token);
        }
        if (!body.empty()) {
            req.set(http::field::content_type, "application/json");
            req.body() = body;
        }
        req.prepare_payload();
        http::response_parser<http::string_body> parser;
        parser.body_limit(64 * 1024 * 1024);
        auto exchange = [&](auto& stream) {
            http::write(stream, req);
            boost::beast::flat_buffer buf;
            http::read(stream, buf, parser);
        };
        if (!t_.socket.empty()) {
            auto sock = connector_.connect_unix();
            exchange(sock);
        } else if (t_.tls) {
            auto stream = connector_.connect_tls();
            exchange(stream);
        } else {
            auto sock = connector_.connect_tcp();
            exchange(sock);
        }
        out = parser.get().body();
        return parser.get().result_int();
    }

    // Streams event frames to `on_frame` until the server closes the stream.
    void events(const std::string& target,
                const std::function<void(const std::string&)>& on_frame) {
        if (!t_.socket.empty()) {
            websocket::stream<local::socket> ws(connector_.connect_unix());
            tail(ws, target, on_frame);
        } else if (t_.tls) {
            websocket::stream<boost::beast::ssl_stream<tcp::socket>> ws(connector_.connect_tls());
            tail(ws, target, on_frame);
        } else {
            websocket::stream<tcp::socket> ws(connector_.connect_tcp());
            tail(ws, target, on_frame);
        }
    }

  private:
    template <typename Ws>
    void tail(Ws& ws, const std::string& target,
              const std::function<void(const std::string&)>& on_frame) {
        std::string token = t_.token;
        ws.set_option(websocket::stream_base::decorator([token](websocket::request_type& req) {
            if (!token.empty()) {
                req.set(http::field::authorization, "Bearer " + token);
            }
        }));
        websocket::response_type res;
        boost::system::error_code hec;
        ws.handshake(res, t_.socket.empty() ? t_.host : "hangar", target, hec);
        if (hec) {
            if (hec == websocket::error::upgrade_declined) {
                throw UpgradeDeclined{};
            }
            throw boost::system::system_error(hec);
        }
        boost::beast::flat_buffer buf;
        for (;;) {
            boost::system::error_code ec;
            ws.read(buf, ec);
            if (ec == websocket::error::closed) {
                auto reason = ws.reason();
                if (!reason.reason.empty()) {
                    throw std::runtime_error("event stream closed: " +
                                             std::string(reason.reason.c_str()));
                }
                return;
            }
            if (ec) {
                throw boost::system::system_error(ec);
            }
            on_frame(boost::beast::buffers_to_string(buf.data()));
            buf.consume(buf.size());
        }
    }

    boost::asio::io_context io_;
    Connector connector_;
    const Target& t_ = connector_.target();
};

std::string str(simdjson::dom::element e, const char* key) {
    std::string_view v;
    if (e[key].get(v) == simdjson::SUCCESS) {
        return std::string(v);
    }
    int64_t i = 0;
    if (e[key].get(i) == simdjson::SUCCESS) {
        return std::to_string(i);
    }
    bool b = false;
    if (e[key].get(b) == simdjson::SUCCESS) {
        return b ? "true" : "false";
    }
    return "";
}

void print_table(const std::vector<std::string>& head,
                 const std::vector<std::vector<std::string>>& rows) {
    std::vector<size_t> w(head.size());
    for (size_t i = 0; i < head.size(); ++i) {
        w[i] = head[i].size();
        for (const auto& r : rows) {
            w[i] = std::max(w[i], r[i].size());
        }
    }
    auto line = [&](const std::vector<std::string>& r) {
        for (size_t i = 0; i < r.size(); ++i) {
            std::cout << std::left << std::setw(static_cast<int>(i + 1 < r.size() ? w[i] + 2 : 0))
                      << r[i];
        }
        std::cout << "\n";
    };
    line(head);
    for (const auto& r : rows) {
        line(r);
    }
}

void print_machine(simdjson::dom::element m) {
    for (const char* k : {"name", "uuid", "type", "state", "state_reason", "unresponsive", "owner",
                          "created_at", "cpus", "memory_mib", "autostart", "description", "pid"}) {
        std::cout << std::left << std::setw(14) << (std::string(k) + ":") << str(m, k) << "\n";
    }
    for (const char* k : {"image", "template"}) {
        if (std::string v = str(m, k); !v.empty()) {
            std::cout << std::left << std::setw(14) << (std::string(k) + ":") << v << "\n";
        }
    }
    simdjson::dom::element boot;
    if (m["boot"].get(boot) == simdjson::SUCCESS) {
        for (const char* k : {"kernel", "initrd", "cmdline", "disk"}) {
            std::string v = str(boot, k);
            if (!v.empty()) {
                std::cout << std::left << std::setw(14) << ("boot." + std::string(k) + ":") << v
                          << "\n";
            }
        }
        simdjson::dom::array command;
        if (boot["command"].get(command) == simdjson::SUCCESS) {
            std::string line;
            for (auto arg : command) {
                std::string_view v;
                if (arg.get(v) == simdjson::SUCCESS) {
                    line += (line.empty() ? "" : " ") + hangar::json::quote(v);
                }
            }
            std::cout << std::left << std::setw(14) << "boot.command:" << line << "\n";
        }
    }
}

// Parses "--flag value" options after the positional arguments.
struct Args {
    std::vector<std::string> pos;
    std::map<std::string, std::string> opt;               // the last value of each option
    std::map<std::string, std::vector<std::string>> all;  // every value of each option
    std::set<std::string> flags;
    std::vector<std::string> command;  // what follows "--"
};

Args parse_args(const std::vector<std::string>& in, const std::set<std::string>& with_value,
                const std::set<std::string>& without_value) {
    Args a;
    for (size_t i = 0; i < in.size(); ++i) {
        const auto& s = in[i];
        if (s == "--") {
            a.command.assign(in.begin() + static_cast<std::ptrdiff_t>(i) + 1, in.end());
            break;
        }
        if (s.rfind("--", 0) == 0) {
            if (with_value.count(s)) {
                if (i + 1 >= in.size()) {
                    throw UsageError{s + " needs a value"};
                }
                a.opt[s] = in[++i];
                a.all[s].push_back(in[i]);
            } else if (without_value.count(s)) {
                a.flags.insert(s);
            } else {
                throw UsageError{"unknown option " + s};
            }
        } else {
            a.pos.push_back(s);
        }
    }
    return a;
}

uint64_t to_number(const std::string& opt, const std::string& v) {
    char* end = nullptr;
    uint64_t n = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || v[0] == '-') {
        throw UsageError{opt + " needs a non-negative number"};
    }
    return n;
}

int run(int argc, char** argv) {
    Target target;
    std::string socket, url = getenv("HANGAR_URL") ? getenv("HANGAR_URL") : "";
    target.token = getenv("HANGAR_TOKEN") ? getenv("HANGAR_TOKEN") : "";
    target.cert = getenv("HANGAR_CERT") ? getenv("HANGAR_CERT") : "";
    target.key = getenv("HANGAR_KEY") ? getenv("HANGAR_KEY") : "";
    bool as_json = false;
    std::vector<std::string> rest;
    auto value = [&](int& i, const char* what) {
        if (i + 1 >= argc) {
            throw UsageError{std::string(what) + " needs a value"};
        }
        return std::string(argv[++i]);
    };
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--") {  // a command's own arguments follow, options included
            rest.insert(rest.end(), argv + i, argv + argc);
            break;
        }
        if (a == "--socket") {
            socket = value(i, "--socket");
        } else if (a == "--url") {
            url = value(i, "--url");
        } else if (a == "--token") {
            target.token = value(i, "--token");
        } else if (a == "--cert") {
            target.cert = value(i, "--cert");
        } else if (a == "--key") {
            target.key = value(i, "--key");
        } else if (a == "--insecure") {
            target.insecure = true;
        } else if (a == "--json") {
            as_json = true;
        } else if (a == "--help" || a == "-h") {
            std::cout << kUsage;
            return 0;
        } else {
            rest.push_back(a);
        }
    }
    if (rest.empty()) {
        throw UsageError{"no command given"};
    }
    if (!socket.empty() && !url.empty()) {
        throw UsageError{"--socket and --url exclude each other"};
    }
    if (!url.empty() && socket.empty()) {
        bool tls = url.rfind("https://", 0) == 0;
        if (!tls && url.rfind("http://", 0) != 0) {
            throw UsageError{"--url must start with https:// (or http:// for --insecure-http)"};
        }
        std::string hostport = url.substr(tls ? 8 : 7);
        hostport = hostport.substr(0, hostport.find('/'));
        size_t colon = hostport.rfind(':');
        target.tls = tls;
        target.host = colon == std::string::npos ? hostport : hostport.substr(0, colon);
        target.port =
            colon == std::string::npos ? (tls ? "443" : "80") : hostport.substr(colon + 1);
        if (target.host.size() > 2 && target.host.front() == '[') {
            target.host = target.host.substr(1, target.host.size() - 2);
        }
        if (target.cert.empty() != target.key.empty()) {
            throw UsageError{"--cert and --key go together"};
        }
        if (!target.cert.empty() && !tls) {
            throw UsageError{"--cert needs an https:// --url"};
        }
        if (target.token.empty() && target.cert.empty()) {
            throw UsageError{"--url needs --token (or HANGAR_TOKEN) or --cert and --key"};
        }
    } else {
        target.socket = socket.empty() ? default_socket() : socket;
    }
    std::string cmd = rest[0];
    std::vector<std::string> args(rest.begin() + 1, rest.end());
    Client client(target);
    std::string out;

    // Answers an API call: prints the error and returns 1, or hands the parsed body on.
    auto request = [&](http::verb v, const std::string& target, const std::string& body,
                       simdjson::dom::element* doc) -> int {
        int status = client.call(v, target, body, out);
        simdjson::dom::element e;
        bool parsed = parser().parse(out).get(e) == simdjson::SUCCESS;
        if (status >= 300) {
            std::string_view m;
            std::string msg = parsed && e.at_pointer("/error/message").get(m) == simdjson::SUCCESS
                                  ? std::string(m)
                                  : out;
            std::cerr << "hangarctl: " << (msg.empty() ? "HTTP " + std::to_string(status) : msg)
                      << "\n";
            return 1;
        }
        if (doc && parsed) {
            *doc = e;
        }
        return 0;
    };
    auto need_name = [&](const Args& a) {
        if (a.pos.size() != 1) {
            throw UsageError{cmd + " needs exactly one machine NAME"};
        }
        return url_encode(a.pos[0]);
    };

    simdjson::dom::element doc;
    // Prints the machine the last request answered with.
    auto show_machine = [&] {
        if (as_json) {
            std::cout << out << "\n";
        } else {
            print_machine(doc);
        }
        return 0;
    };
    // `show NAME` prints one object of `collection` ("/v1/pools"); `delete NAME` deletes it.
    auto show_or_delete = [&](const std::string& collection, const std::string& sub,
                              const std::string& name) {
        auto verb = sub == "show" ? http::verb::get : http::verb::delete_;
        if (int rc = request(verb, collection + "/" + url_encode(name), "", &doc)) {
            return rc;
        }
        if (sub == "show") {
            std::cout << out << "\n";
        }
        return 0;
    };
    if (cmd == "info") {
        parse_args(args, {}, {});
        if (int rc = request(http::verb::get, "/v1", "", &doc)) {
            return rc;
        }
        simdjson::dom::element auth;
        if (doc["auth"].get(auth) != simdjson::SUCCESS) {
            auth = doc;
        }
        if (as_json) {
            std::cout << out << "\n";
        } else {
            std::cout << "version:      " << str(doc, "version")
                      << "\narch:         " << str(doc, "host_arch")
                      << "\naccelerator:  " << str(doc, "accelerator")
                      << "\nrevision:     " << str(doc, "revision") << "\nyou:          uid "
                      << str(auth, "uid") << (str(auth, "admin") == "true" ? " (admin)" : "")
                      << "\n";
        }
        return 0;
    }
    if (cmd == "list") {
        auto a = parse_args(args, {"--state", "--type", "--limit", "--after"}, {});
        if (!a.pos.empty()) {
            throw UsageError{"list takes no arguments"};
        }
        std::string q;
        for (auto& [k, v] : a.opt) {
            q += (q.empty() ? "?" : "&") + k.substr(2) + "=" + url_encode(v);
        }
        if (int rc = request(http::verb::get, "/v1/machines" + q, "", &doc)) {
            return rc;
        }
        if (as_json) {
            std::cout << out << "\n";
            return 0;
        }
        std::vector<std::vector<std::string>> rows;
        simdjson::dom::array machines;
        if (doc["machines"].get(machines) != simdjson::SUCCESS) {
            std::cerr << "hangarctl: unexpected answer from hangard\n";
            return 1;
        }
        for (auto m : machines) {
            rows.push_back({str(m, "name"), str(m, "type"), str(m, "state"), str(m, "cpus"),
                            str(m, "memory_mib"), str(m, "pid") == "0" ? "-" : str(m, "pid"),
                            str(m, "state_reason")});
        }
        print_table({"NAME", "TYPE", "STATE", "CPUS", "MEMORY", "PID", "REASON"}, rows);
        if (std::string_view next; doc["next"].get(next) == simdjson::SUCCESS) {
            std::cerr << "more: hangarctl list --after " << next << "\n";
        }
        return 0;
    }
    if (cmd == "create") {
        auto a = parse_args(args,
                            {"--cpus", "--memory", "--kernel", "--initrd", "--cmdline", "--disk",
                             "--description", "--type", "--image", "--template", "--disk-size"},
                            {"--autostart"});
        if (a.pos.size() != 1) {
            throw UsageError{"create needs exactly one NAME"};
        }
        // The body through the spec codec: the same keys hangard reads.
        hangar::MachineSpec spec;
        std::set<std::string> given{"name"};
        spec.name = a.pos[0];
        auto take = [&](const char* opt, const char* field, std::string& to) {
            if (a.opt.count(opt)) {
                to = a.opt[opt];
                given.insert(field);
            }
        };
        auto take_u32 = [&](const char* opt, const char* field, uint32_t& to) {
            if (a.opt.count(opt)) {
                uint64_t n = to_number(opt, a.opt[opt]);
                if (n > UINT32_MAX) {
                    throw UsageError{std::string(opt) + " is too large"};
                }
                to = static_cast<uint32_t>(n);
                given.insert(field);
            }
        };
        take("--type", "type", spec.type);
        take_u32("--cpus", "cpus", spec.cpus);
        take_u32("--memory", "memory_mib", spec.memory_mib);
        take_u32("--disk-size", "disk_gib", spec.disk_gib);
        take("--description", "description", spec.description);
        take("--image", "image", spec.image);
        take("--template", "template", spec.template_name);
        if (a.flags.count("--autostart")) {
            spec.autostart = true;
            given.insert("autostart");
        }
        take("--kernel", "boot", spec.boot.kernel);
        take("--initrd", "boot", spec.boot.initrd);
        take("--cmdline", "boot", spec.boot.cmdline);
        take("--disk", "boot", spec.boot.disk);
        if (!a.command.empty()) {
            spec.boot.command = a.command;
            given.insert("boot");
        }
        std::string body = hangar::core::encode_spec(spec, given);
        if (int rc = request(http::verb::post, "/v1/machines", body, &doc)) {
            return rc;
        }
        return show_machine();
    }
    if (cmd == "console") {
        auto a = parse_args(args, {"--from"}, {"--readonly"});
        auto name = need_name(a);
        std::string q;
        if (a.opt.count("--from"))
            q += "&from=" + std::to_string(to_number("--from", a.opt["--from"]));
        if (a.flags.count("--readonly"))
            q += "&readonly=true";
        if (!q.empty()) {
            q[0] = '?';
        }
        hangar::cli::TerminalOptions o;
        o.path = "/v1/machines/" + name + "/console" + q;
        o.machine = a.pos[0];
        o.readonly = a.flags.count("--readonly") != 0;
        return hangar::cli::run_terminal(client.connector(), o);
    }
    if (cmd == "exec") {
        // -it: the command on a pty, the terminal attached to it.
        bool interactive = false;
        for (auto it = args.begin(); it != args.end() && *it != "--";) {
            if (*it == "-it" || *it == "-ti" || *it == "--interactive") {
                interactive = true;
                it = args.erase(it);
            } else {
                ++it;
            }
        }
        auto a = parse_args(args, {"--env", "--cwd", "--timeout"}, {});
        auto name = need_name(a);
        if (a.command.empty()) {
            throw UsageError{"exec needs a command after --"};
        }
        hangar::json::Writer w;
        w.begin_object();
        if (interactive) {
            auto size = hangar::cli::terminal_size().value_or(hangar::cli::TerminalSize{80, 24});
            w.field("interactive", true).key("tty").begin_object();
            w.field("cols", static_cast<uint64_t>(size.cols))
                .field("rows", static_cast<uint64_t>(size.rows))
                .end_object();
        }
        w.key("command").begin_array();
        for (const auto& arg : a.command) {
            w.value(arg);
        }
        w.end_array();
        if (a.all.count("--env")) {
            w.key("env").begin_object();
            for (const auto& kv : a.all["--env"]) {
                size_t eq = kv.find('=');
                if (eq == std::string::npos || eq == 0) {
                    throw UsageError{"--env needs NAME=VALUE"};
                }
                w.field(kv.substr(0, eq), kv.substr(eq + 1));
            }
            w.end_object();
        }
        if (a.opt.count("--cwd"))
            w.field("cwd", a.opt["--cwd"]);
        if (a.opt.count("--timeout"))
            w.field("timeout_s", to_number("--timeout", a.opt["--timeout"]));
        w.end_object();
        if (int rc = request(http::verb::post, "/v1/machines/" + name + "/exec", w.str(), &doc)) {
            return rc;
        }
        if (interactive) {
            hangar::cli::TerminalOptions o;
            o.path = str(doc, "url");
            o.machine = a.pos[0];
            o.exec = true;
            if (o.path.empty()) {
                std::cerr << "hangarctl: unexpected answer from hangard: " << out << "\n";
                return 1;
            }
            return hangar::cli::run_terminal(client.connector(), o);
        }
        if (as_json) {
            std::cout << out << "\n";
            return 0;
        }
        std::cout << str(doc, "stdout") << std::flush;
        std::cerr << str(doc, "stderr") << std::flush;
        int64_t code = 0;
        if (doc["exit_code"].get(code) != simdjson::SUCCESS) {
            code = 1;
        }
        return static_cast<int>(code);
    }
    if (cmd == "show") {
        auto name = need_name(parse_args(args, {}, {}));
        if (int rc = request(http::verb::get, "/v1/machines/" + name, "", &doc)) {
            return rc;
        }
        return show_machine();
    }
    if (cmd == "start" || cmd == "stop" || cmd == "kill" || cmd == "restart" || cmd == "pause" ||
        cmd == "resume") {
        bool stops = cmd == "stop" || cmd == "restart";
        auto a = parse_args(
            args, stops ? std::set<std::string>{"--timeout"} : std::set<std::string>{},
            cmd == "restart" ? std::set<std::string>{"--reset"} : std::set<std::string>{});
        auto name = need_name(a);
        hangar::json::Writer w;
        w.begin_object();
        if (a.opt.count("--timeout"))
            w.field("timeout_s", to_number("--timeout", a.opt["--timeout"]));
        if (a.flags.count("--reset"))
            w.field("reset", true);
        w.end_object();
        std::string body = w.str() == "{}" ? "" : w.str();
        if (int rc =
                request(http::verb::post, "/v1/machines/" + name + "/actions/" + cmd, body, &doc)) {
            return rc;
        }
        if (as_json) {
            std::cout << out << "\n";
        } else {
            std::cout << str(doc, "name") << ": " << str(doc, "state") << " ("
                      << str(doc, "state_reason") << ")\n";
        }
        return 0;
    }
    if (cmd == "delete") {
        auto a = parse_args(args, {}, {"--force"});
        auto name = need_name(a);
        if (int rc =
                request(http::verb::delete_,
                        "/v1/machines/" + name + (a.flags.count("--force") ? "?force=true" : ""),
                        "", nullptr)) {
            return rc;
        }
        if (as_json) {
            std::cout << "{}\n";
        }
        return 0;
    }
    if (cmd == "console-log") {
        auto a = parse_args(args, {"--tail"}, {});
        auto name = need_name(a);
        std::string q = a.opt.count("--tail")
                            ? "?tail=" + std::to_string(to_number("--tail", a.opt["--tail"]))
                            : "";
        int status =
            client.call(http::verb::get, "/v1/machines/" + name + "/console/log" + q, "", out);
        if (status >= 300) {
            return request(http::verb::get, "/v1/machines/" + name + "/console/log" + q, "",
                           nullptr);
        }
        std::cout << out;
        return 0;
    }
    if (cmd == "events") {
        auto a = parse_args(args, {"--since", "--types", "--machine"}, {});
        if (!a.pos.empty()) {
            throw UsageError{"events takes no arguments"};
        }
        std::string q;
        if (a.opt.count("--since"))
            q += "&since=" + std::to_string(to_number("--since", a.opt["--since"]));
        if (a.opt.count("--types"))
            q += "&types=" + url_encode(a.opt["--types"]);
        if (a.opt.count("--machine"))
            q += "&machine=" + url_encode(a.opt["--machine"]);
        if (!q.empty()) {
            q[0] = '?';
        }
        auto on_frame = [&](const std::string& frame) {
            if (as_json) {
                std::cout << frame << std::endl;
                return;
            }
            simdjson::dom::element e;
            if (parser().parse(frame).get(e) != simdjson::SUCCESS) {
                return;
            }
            std::string type = str(e, "type");
            std::cout << str(e, "seq") << "  " << str(e, "time") << "  " << type << "  "
                      << str(e, "machine");
            simdjson::dom::element data;
            if (e["data"].get(data) != simdjson::SUCCESS) {
                data = e;
            }
            if (type == "machine.state") {
                std::cout << "  " << str(data, "from") << " -> " << str(data, "to") << " ("
                          << str(data, "reason") << ")";
            } else if (type == "machine.updated" || type == "events.gap") {
                std::cout << "  " << simdjson::minify(data);
            }
            std::cout << std::endl;
        };
        try {
            client.events("/v1/events" + q, on_frame);
        } catch (const UpgradeDeclined&) {
            // The same request without the upgrade answers with the API's error message.
            return request(http::verb::get, "/v1/events" + q, "", nullptr);
        }
        return 0;
    }
    // token and cert: credentials for HTTPS callers, managed over the unix socket.
    auto list_credentials = [&](const char* path, const char* key, bool fingerprint) {
        if (int rc = request(http::verb::get, path, "", &doc)) {
            return rc;
        }
        if (as_json) {
            std::cout << out << "\n";
            return 0;
        }
        simdjson::dom::array list;
        std::vector<std::vector<std::string>> rows;
        if (doc[key].get(list) == simdjson::SUCCESS) {
            for (auto t : list) {
                rows.push_back({str(t, "name"), str(t, "uid"),
                                str(t, "admin") == "true" ? "yes" : "no", str(t, "created_at")});
                if (fingerprint) {
                    rows.back().push_back(str(t, "fingerprint"));
                }
            }
        }
        std::vector<std::string> header{"NAME", "UID", "ADMIN", "CREATED"};
        if (fingerprint) {
            header.push_back("SHA-256");
        }
        print_table(header, rows);
        return 0;
    };
    if (cmd == "token") {
        auto a = parse_args(args, {}, {});
        std::string sub = a.pos.empty() ? "" : a.pos[0];
        if (sub == "create" && a.pos.size() == 2) {
            hangar::json::Writer w;
            w.begin_object().field("name", a.pos[1]).end_object();
            if (int rc = request(http::verb::post, "/v1/tokens", w.str(), &doc)) {
                return rc;
            }
            if (as_json) {
                hangar::json::Writer o;
                o.begin_object().field("name", str(doc, "name")).field("token", str(doc, "token"));
                std::cout << o.end_object().str() << "\n";
            } else {
                std::cout << str(doc, "token") << "\n";
            }
            return 0;
        }
        if (sub == "list" && a.pos.size() == 1) {
            return list_credentials("/v1/tokens", "tokens", false);
        }
        if (sub == "revoke" && a.pos.size() == 2) {
            return request(http::verb::delete_, "/v1/tokens/" + url_encode(a.pos[1]), "", nullptr);
        }
        throw UsageError{"token create NAME | token list | token revoke NAME"};
    }
    if (cmd == "cert") {
        auto a = parse_args(args, {"--fingerprint"}, {});
        std::string sub = a.pos.empty() ? "" : a.pos[0];
        bool by_fp = a.opt.count("--fingerprint") != 0;
        if (sub == "add" && a.pos.size() == (by_fp ? 2u : 3u)) {
            hangar::json::Writer w;
            w.begin_object().field("name", a.pos[1]);
            if (by_fp) {
                w.field("fingerprint", a.opt["--fingerprint"]);
            } else {
                std::ifstream in(a.pos[2]);
                if (!in) {
                    throw std::runtime_error("cannot read " + a.pos[2]);
                }
                std::stringstream pem;
                pem << in.rdbuf();
                w.field("certificate", pem.str());
            }
            w.end_object();
            if (int rc = request(http::verb::post, "/v1/certificates", w.str(), &doc)) {
                return rc;
            }
            std::cout << (as_json ? out : str(doc, "fingerprint")) << "\n";
            return 0;
        }
        if (sub == "list" && a.pos.size() == 1) {
            return list_credentials("/v1/certificates", "certificates", true);
        }
        if (sub == "remove" && a.pos.size() == 2) {
            return request(http::verb::delete_, "/v1/certificates/" + url_encode(a.pos[1]), "",
                           nullptr);
        }
        throw UsageError{
            "cert add NAME (CERT.pem | --fingerprint SHA256) | cert list | "
            "cert remove NAME"};
    }
    if (cmd == "image") {
        auto a = parse_args(args, {"--type", "--name", "--kind", "--sha256"}, {});
        std::string sub = a.pos.empty() ? "" : a.pos[0];
        std::string type = a.opt.count("--type") ? a.opt["--type"] : "simplestreams";
        std::string kind = a.opt.count("--kind") ? a.opt["--kind"] : "";
        auto print_images = [&](simdjson::dom::array list) {
            std::vector<std::vector<std::string>> rows;
            for (auto img : list) {
                simdjson::dom::element src;
                if (img["source"].get(src) != simdjson::SUCCESS) {
                    src = img;
                }
                std::string from = str(src, "type") == "file" ? str(src, "path")
                                   : str(src, "type") == "url"
                                       ? str(src, "url")
                                       : str(src, "server") + " " + str(src, "alias");
                std::string k = str(img, "kind");
                std::string what =
                    k == "rootfs" ? str(img, "os") + " " + str(img, "release") : str(img, "format");
                uint64_t size =
                    std::stoull("0" + str(img, k == "rootfs" ? "size" : "virtual_size"));
                rows.push_back({str(img, "name"), k, what, str(img, "arch"), str(img, "version"),
                                std::to_string(size >> 20) + " MiB", from});
            }
            print_table({"NAME", "KIND", "OS/FORMAT", "ARCH", "VERSION", "SIZE", "SOURCE"}, rows);
        };
        auto pull = [&](const std::string& name, const std::string& source) {
            hangar::json::Writer w;
            w.begin_object().field("name", name);
            if (!kind.empty()) {
                w.field("kind", kind);
            }
            w.key("source").raw(source).end_object();
            if (int rc = request(http::verb::post, "/v1/images?wait=true", w.str(), &doc)) {
                return rc;
            }
            std::cout << (as_json ? out
                                  : str(doc, "name") + ": ready, sha256 " + str(doc, "sha256"))
                      << "\n";
            return 0;
        };
        if (sub == "list" && a.pos.size() == 1) {
            if (int rc = request(http::verb::get, "/v1/images", "", &doc)) {
                return rc;
            }
            if (as_json) {
                std::cout << out << "\n";
            } else {
                simdjson::dom::array list;
                if (doc["images"].get(list) != simdjson::SUCCESS) {
                    std::cerr << "hangarctl: unexpected answer from hangard\n";
                    return 1;
                }
                print_images(list);
            }
            return 0;
        }
        if ((sub == "show" || sub == "delete") && a.pos.size() == 2) {
            return show_or_delete("/v1/images", sub, a.pos[1]);
        }
        if (sub == "pull" && a.pos.size() == 3) {
            // The alias names the image unless --name does: "debian/12" -> "debian-12".
            std::string name = a.opt.count("--name") ? a.opt["--name"] : "";
            for (char c : a.opt.count("--name") ? std::string() : a.pos[2]) {
                bool keep = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
                char l = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
                name += keep ? c : (l >= 'a' && l <= 'z') ? l : '-';
            }
            hangar::json::Writer src;
            src.begin_object()
                .field("type", type)
                .field("server", a.pos[1])
                .field("alias", a.pos[2])
                .end_object();
            return pull(name, src.str());
        }
        if (sub == "import" && a.pos.size() == 3) {
            std::error_code ec;
            auto path = std::filesystem::absolute(a.pos[2], ec);
            hangar::json::Writer src;
            src.begin_object().field("type", "file").field("path", path.string()).end_object();
            return pull(a.pos[1], src.str());
        }
        if (sub == "download" && a.pos.size() == 3 && a.opt.count("--sha256")) {
            hangar::json::Writer src;
            src.begin_object()
                .field("type", "url")
                .field("url", a.pos[2])
                .field("sha256", a.opt["--sha256"])
                .end_object();
            return pull(a.pos[1], src.str());
        }
        if (sub == "remote" && a.pos.size() == 2) {
            std::string q =
                "/v1/images/remote?server=" + url_encode(a.pos[1]) + "&type=" + url_encode(type);
            if (int rc = request(http::verb::get, q, "", &doc)) {
                return rc;
            }
            if (as_json) {
                std::cout << out << "\n";
                return 0;
            }
            std::vector<std::vector<std::string>> rows;
            simdjson::dom::array list;
            if (doc["images"].get(list) != simdjson::SUCCESS) {
                std::cerr << "hangarctl: unexpected answer from hangard\n";
                return 1;
            }
            for (auto img : list) {
                std::string aliases;
                simdjson::dom::array names;
                if (img["aliases"].get(names) == simdjson::SUCCESS) {
                    for (auto al : names) {
                        std::string_view a;
                        if (al.get(a) == simdjson::SUCCESS) {
                            aliases += (aliases.empty() ? "" : ",") + std::string(a);
                        }
                    }
                }
                rows.push_back(
                    {aliases, str(img, "arch"), str(img, "version"), str(img, "format")});
            }
            print_table({"ALIASES", "ARCH", "VERSION", "FORMAT"}, rows);
            return 0;
        }
        throw UsageError{
            "image list | image show NAME | image delete NAME | image pull SERVER ALIAS "
            "[--type T] [--name NAME] | image import NAME FILE [--kind K] | image download NAME "
            "URL --sha256 HEX [--kind K] | image remote SERVER [--type T]"};
    }
    if (cmd == "template") {
        auto a = parse_args(args, {"--cpus", "--memory", "--disk", "--description"}, {});
        std::string sub = a.pos.empty() ? "" : a.pos[0];
        if (sub == "list" && a.pos.size() == 1) {
            if (int rc = request(http::verb::get, "/v1/templates", "", &doc)) {
                return rc;
            }
            simdjson::dom::array list;
            if (as_json || doc["templates"].get(list) != simdjson::SUCCESS) {
                std::cout << out << "\n";
                return 0;
            }
            std::vector<std::vector<std::string>> rows;
            for (auto t : list) {
                auto or_dash = [](std::string v) { return v.empty() ? std::string("-") : v; };
                rows.push_back({str(t, "name"), or_dash(str(t, "cpus")),
                                or_dash(str(t, "memory_mib")), or_dash(str(t, "disk_gib")),
                                str(t, "description")});
            }
            print_table({"NAME", "CPUS", "MEMORY_MIB", "DISK_GIB", "DESCRIPTION"}, rows);
            return 0;
        }
        if ((sub == "show" || sub == "delete") && a.pos.size() == 2) {
            return show_or_delete("/v1/templates", sub, a.pos[1]);
        }
        if (sub == "create" && a.pos.size() == 2) {
            hangar::json::Writer w;
            w.begin_object().field("name", a.pos[1]);
            for (auto [opt, field] : {std::pair{"--cpus", "cpus"},
                                      {"--memory", "memory_mib"},
                                      {"--disk", "disk_gib"}}) {
                if (a.opt.count(opt)) {
                    w.field(field, to_number(opt, a.opt[opt]));
                }
            }
            if (a.opt.count("--description")) {
                w.field("description", a.opt["--description"]);
            }
            w.end_object();
            if (int rc = request(http::verb::post, "/v1/templates", w.str(), &doc)) {
                return rc;
            }
            std::cout << out << "\n";
            return 0;
        }
        throw UsageError{
            "template list | template show NAME | template delete NAME | template create NAME "
            "[--cpus N] [--memory MIB] [--disk GIB] [--description S]"};
    }
    if (cmd == "pool") {
        auto a = parse_args(args, {}, {});
        std::string sub = a.pos.empty() ? "" : a.pos[0];
        if (sub == "list" && a.pos.size() == 1) {
            if (int rc = request(http::verb::get, "/v1/pools", "", &doc)) {
                return rc;
            }
            simdjson::dom::array list;
            if (as_json || doc["pools"].get(list) != simdjson::SUCCESS) {
                std::cout << out << "\n";
                return 0;
            }
            auto gib = [](const std::string& bytes) {
                if (bytes.empty()) {
                    return std::string("-");
                }
                std::ostringstream o;
                o << std::fixed << std::setprecision(1) << std::stod(bytes) / (1 << 30) << " GiB";
                return o.str();
            };
            std::vector<std::vector<std::string>> rows;
            for (auto p : list) {
                rows.push_back({str(p, "name"), str(p, "driver"), str(p, "path"),
                                str(p, "reflink") == "true" ? "yes" : "no",
                                gib(str(p, "capacity_bytes")), gib(str(p, "free_bytes"))});
            }
            print_table({"NAME", "DRIVER", "PATH", "REFLINK", "SIZE", "FREE"}, rows);
            return 0;
        }
        if ((sub == "show" || sub == "delete") && a.pos.size() == 2) {
            return show_or_delete("/v1/pools", sub, a.pos[1]);
        }
        if (sub == "create" && a.pos.size() == 3) {
            std::error_code ec;
            auto path = std::filesystem::absolute(a.pos[2], ec).lexically_normal().string();
            hangar::json::Writer w;
            w.begin_object().field("name", a.pos[1]).field("driver", "dir").field("path", path);
            w.end_object();
            if (int rc = request(http::verb::post, "/v1/pools", w.str(), &doc)) {
                return rc;
            }
            std::cout << out << "\n";
            return 0;
        }
        throw UsageError{"pool list | pool show NAME | pool create NAME PATH | pool delete NAME"};
    }
    if (cmd == "disk") {
        auto a = parse_args(args, {"--size", "--pool", "--image", "--from", "--file"}, {});
        std::string sub = a.pos.empty() ? "" : a.pos[0];
        if (sub == "list" && a.pos.size() == 1) {
            if (int rc = request(http::verb::get, "/v1/disks", "", &doc)) {
                return rc;
            }
            simdjson::dom::array list;
            if (as_json || doc["disks"].get(list) != simdjson::SUCCESS) {
                std::cout << out << "\n";
                return 0;
            }
            std::vector<std::vector<std::string>> rows;
            for (auto d : list) {
                std::string used, from;
                simdjson::dom::array users;
                if (d["used_by"].get(users) == simdjson::SUCCESS) {
                    for (auto u : users) {
                        std::string_view n;
                        if (u.get(n) == simdjson::SUCCESS) {
                            used += (used.empty() ? "" : ",") + std::string(n);
                        }
                    }
                }
                simdjson::dom::object src;
                if (d["source"].get(src) == simdjson::SUCCESS) {
                    for (auto [k, v] : src) {
                        std::string_view n;
                        if (v.get(n) == simdjson::SUCCESS) {
                            from = std::string(k) + " " + std::string(n);
                        }
                    }
                }
                rows.push_back({str(d, "name"), str(d, "pool"), str(d, "format"),
                                str(d, "size_gib") + " GiB", used.empty() ? "-" : used,
                                from.empty() ? "empty" : from});
            }
            print_table({"NAME", "POOL", "FORMAT", "SIZE", "USED BY", "SOURCE"}, rows);
            return 0;
        }
        if ((sub == "show" || sub == "delete") && a.pos.size() == 2) {
            return show_or_delete("/v1/disks", sub, a.pos[1]);
        }
        if (sub == "create" && a.pos.size() == 2) {
            hangar::json::Writer w;
            w.begin_object().field("name", a.pos[1]);
            if (a.opt.count("--pool")) {
                w.field("pool", a.opt["--pool"]);
            }
            if (a.opt.count("--size")) {
                w.field("size_gib", to_number("--size", a.opt["--size"]));
            }
            for (auto [opt, key] :
                 {std::pair{"--image", "image"}, {"--from", "disk"}, {"--file", "file"}}) {
                if (a.opt.count(opt)) {
                    std::string v = a.opt[opt];
                    if (std::string(key) == "file") {
                        std::error_code ec;
                        v = std::filesystem::absolute(v, ec).string();
                    }
                    w.key("source").begin_object().field(key, v).end_object();
                }
            }
            w.end_object();
            if (int rc = request(http::verb::post, "/v1/disks", w.str(), &doc)) {
                return rc;
            }
            std::cout << (as_json ? out
                                  : str(doc, "name") + ": " + str(doc, "size_gib") + " GiB " +
                                        str(doc, "format") + " in " + str(doc, "path"))
                      << "\n";
            return 0;
        }
        if (sub == "grow" && a.pos.size() == 3) {
            hangar::json::Writer w;
            w.begin_object().field("size_gib", to_number("GIB", a.pos[2])).end_object();
            if (int rc = request(http::verb::patch, "/v1/disks/" + url_encode(a.pos[1]), w.str(),
                                 &doc)) {
                return rc;
            }
            std::cout << (as_json ? out : str(doc, "name") + ": " + str(doc, "size_gib") + " GiB")
                      << "\n";
            return 0;
        }
        throw UsageError{
            "disk list | disk show NAME | disk delete NAME | disk create NAME [--size GIB] "
            "[--pool P] [--image IMAGE | --from DISK | --file FILE] | disk grow NAME GIB"};
    }
    if (cmd == "attach" || cmd == "detach") {
        auto a = parse_args(args, {}, {});
        if (a.pos.size() != 2) {
            throw UsageError{cmd + " MACHINE DISK"};
        }
        std::string path = "/v1/machines/" + url_encode(a.pos[0]) + "/disks";
        int rc = 0;
        if (cmd == "attach") {
            hangar::json::Writer w;
            w.begin_object().field("disk", a.pos[1]).end_object();
            rc = request(http::verb::post, path, w.str(), &doc);
        } else {
            rc = request(http::verb::delete_, path + "/" + url_encode(a.pos[1]), "", &doc);
        }
        if (rc) {
            return rc;
        }
        return show_machine();
    }
    if (cmd == "snapshot") {
        auto a = parse_args(args, {}, {"--memory", "--disks-only"});
        std::string sub = a.pos.empty() ? "" : a.pos[0];
        std::string base =
            a.pos.size() >= 2 ? "/v1/machines/" + url_encode(a.pos[1]) + "/snapshots" : "";
        if (sub == "list" && a.pos.size() == 2) {
            if (int rc = request(http::verb::get, base, "", &doc)) {
                return rc;
            }
            simdjson::dom::array list;
            if (as_json || doc["snapshots"].get(list) != simdjson::SUCCESS) {
                std::cout << out << "\n";
                return 0;
            }
            std::vector<std::vector<std::string>> rows;
            for (auto x : list) {
                bool current = x["current"].get_bool().value_unsafe() == true;
                bool running = x["running"].get_bool().value_unsafe() == true;
                simdjson::dom::array disks;
                size_t n = x["disks"].get(disks) == simdjson::SUCCESS ? disks.size() : 0;
                std::string parent = str(x, "parent");
                bool memory = x["memory"].get_bool().value_unsafe() == true;
                rows.push_back({std::string(current ? "* " : "  ") + str(x, "name"),
                                str(x, "created_at"), parent.empty() ? "-" : parent,
                                std::to_string(n), memory ? "yes" : "no",
                                running ? "running" : "stopped"});
            }
            print_table({"NAME", "CREATED", "PARENT", "DISKS", "MEMORY", "TAKEN"}, rows);
            return 0;
        }
        if ((sub == "show" || sub == "delete") && a.pos.size() == 3) {
            return show_or_delete(base, sub, a.pos[2]);
        }
        if (sub == "create" && a.pos.size() == 3) {
            hangar::json::Writer w;
            w.begin_object().field("name", a.pos[2]);
            if (a.flags.count("--memory")) {
                w.field("memory", true);
            }
            w.end_object();
            // Waits for a snapshot with memory (an operation otherwise).
            if (int rc = request(http::verb::post, base + "?wait=true", w.str(), &doc)) {
                return rc;
            }
            std::cout << (as_json ? out : a.pos[1] + ": snapshot " + str(doc, "name") + " taken")
                      << "\n";
            return 0;
        }
        if (sub == "restore" && a.pos.size() == 3) {
            bool disks_only = a.flags.count("--disks-only") != 0;
            if (int rc = request(http::verb::post, base + "/" + url_encode(a.pos[2]) + "/restore",
                                 disks_only ? "{\"memory\":false}" : "", &doc)) {
                return rc;
            }
            std::cout << (as_json ? out
                                  : a.pos[1] + ": back at snapshot " + a.pos[2] + " (" +
                                        str(doc, "state") + ")")
                      << "\n";
            return 0;
        }
        throw UsageError{
            "snapshot list VM | snapshot create VM NAME [--memory] | snapshot show VM NAME | "
            "snapshot restore VM NAME [--disks-only] | snapshot delete VM NAME"};
    }
    if (cmd == "clone") {
        auto a = parse_args(args, {"--snapshot"}, {});
        if (a.pos.size() != 2) {
            throw UsageError{"clone VM NEW [--snapshot SNAP]"};
        }
        hangar::json::Writer w;
        w.begin_object().field("name", a.pos[1]);
        if (auto it = a.opt.find("--snapshot"); it != a.opt.end()) {
            w.field("snapshot", it->second);
        }
        w.end_object();
        if (int rc = request(http::verb::post,
                             "/v1/machines/" + url_encode(a.pos[0]) + "/clone?wait=true", w.str(),
                             &doc)) {
            return rc;
        }
        std::cout << (as_json
                          ? out
                          : a.pos[1] + ": cloned from " + a.pos[0] + " (" + str(doc, "state") + ")")
                  << "\n";
        return 0;
    }
    if (cmd == "operation") {
        auto a = parse_args(args, {}, {});
        std::string sub = a.pos.empty() ? "" : a.pos[0];
        if ((sub == "show" || sub == "cancel") && a.pos.size() == 2) {
            auto verb = sub == "show" ? http::verb::get : http::verb::delete_;
            if (int rc = request(verb, "/v1/operations/" + url_encode(a.pos[1]), "", &doc)) {
                return rc;
            }
            std::cout << (as_json ? out : str(doc, "id") + ": " + str(doc, "status")) << "\n";
            return 0;
        }
        throw UsageError{"operation show ID | operation cancel ID"};
    }
    throw UsageError{"unknown command " + cmd};
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const UsageError& e) {
        std::cerr << "hangarctl: " << e.msg << "\n" << kUsage;
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "hangarctl: " << e.what() << "\n";
        return 1;
    }
}
