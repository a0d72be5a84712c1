#include "drivers/qemu/firmware.hpp"

#include <fnmatch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <simdjson.h>

namespace hangar::qemu {

namespace fs = std::filesystem;

namespace {
bool has(simdjson::dom::element list, std::string_view what) {
    simdjson::dom::array a;
    if (list.get(a) != simdjson::SUCCESS) {
        return false;
    }
    for (auto v : a) {
        std::string_view s;
        if (v.get(s) == simdjson::SUCCESS && s == what) {
            return true;
        }
    }
    return false;
}

// A machine glob of a descriptor that takes hangar's "-machine q35" (the newest pc-q35-X.Y).
bool takes_q35(std::string_view glob) {
    std::string g(glob);
    return fnmatch(g.c_str(), "q35", 0) == 0 || fnmatch(g.c_str(), "pc-q35-99.99", 0) == 0;
}
}  // namespace

bool uefi_descriptor_fits(std::string_view json, Firmware& out, std::string& why) {
    simdjson::dom::parser parser;
    simdjson::dom::object d;
    if (parser.parse(json.data(), json.size()).get(d) != simdjson::SUCCESS) {
        why = "not JSON";
        return false;
    }
    if (!has(d["interface-types"], "uefi")) {
        why = "not UEFI";
        return false;
    }
    std::string_view device;
    if (d.at_pointer("/mapping/device").get(device) != simdjson::SUCCESS || device != "flash") {
        why = "not on flash";
        return false;
    }
    for (const char* needs : {"requires-smm", "secure-boot", "enrolled-keys"}) {
        if (has(d["features"], needs)) {
            why = std::string("needs ") + needs;
            return false;
        }
    }
    bool target = false;
    simdjson::dom::array targets;
    if (d["targets"].get(targets) == simdjson::SUCCESS) {
        for (auto t : targets) {
            std::string_view arch;
            simdjson::dom::array machines;
            if (t["architecture"].get(arch) != simdjson::SUCCESS || arch != "x86_64" ||
                t["machines"].get(machines) != simdjson::SUCCESS) {
                continue;
            }
            for (auto m : machines) {
                std::string_view glob;
                target = target || (m.get(glob) == simdjson::SUCCESS && takes_q35(glob));
            }
        }
    }
    if (!target) {
        why = "not for x86_64 q35";
        return false;
    }
    std::string_view code, code_format = "raw", vars, vars_format = "raw";
    if (d.at_pointer("/mapping/executable/filename").get(code) != simdjson::SUCCESS ||
        d.at_pointer("/mapping/nvram-template/filename").get(vars) != simdjson::SUCCESS) {
        why = "no executable or no variables template";
        return false;
    }
    if (d.at_pointer("/mapping/executable/format").get(code_format) != simdjson::SUCCESS) {
        code_format = "raw";
    }
    if (d.at_pointer("/mapping/nvram-template/format").get(vars_format) != simdjson::SUCCESS) {
        vars_format = "raw";
    }
    if ((code_format != "raw" && code_format != "qcow2") ||
        (vars_format != "raw" && vars_format != "qcow2")) {
        why = "an unknown image format";
        return false;
    }
    std::error_code ec;
    if (!fs::is_regular_file(code, ec) || !fs::is_regular_file(vars, ec)) {
        why = "its files are missing";
        return false;
    }
    out.code = code;
    out.code_format = code_format;
    out.vars_template = vars;
    out.vars_format = vars_format;
    return true;
}

Status find_uefi_firmware(const std::vector<std::string>& dirs, Firmware& out) {
    // By file name; the first directory holding a name wins.
    std::map<std::string, fs::path> by_name;
    for (const auto& dir : dirs) {
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(dir, ec)) {
            std::string name = e.path().filename();
            if (e.path().extension() == ".json" && !by_name.count(name)) {
                by_name[name] = e.path();
            }
        }
    }
    std::string seen;
    for (const auto& [name, path] : by_name) {
        std::ifstream in(path);
        std::stringstream text;
        text << in.rdbuf();
        if (text.str().empty()) {
            continue;  // disabled
        }
        std::string why;
        if (uefi_descriptor_fits(text.str(), out, why)) {
            out.descriptor = path.string();
            return {};
        }
        seen += (seen.empty() ? "" : "; ") + path.string() + ": " + why;
    }
    std::string where;
    for (const auto& d : dirs) {
        where += (where.empty() ? "" : ", ") + d;
    }
    return {Errc::unavailable, "no UEFI firmware for x86_64 q35 VMs in " + where +
                                   (seen.empty() ? " (install Debian's ovmf)" : " (" + seen + ")")};
}

}  // namespace hangar::qemu
