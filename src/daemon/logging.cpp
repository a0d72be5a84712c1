#include "daemon/logging.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace hangar::daemon {

namespace {
// "<N>" of sd-daemon(3) for the message's level.
class SdPriority : public spdlog::custom_flag_formatter {
  public:
    void format(const spdlog::details::log_msg& msg, const std::tm&,
                spdlog::memory_buf_t& dest) override {
        static constexpr const char* kPrio[] = {"<7>", "<7>", "<6>", "<4>", "<3>", "<2>", "<6>"};
        const char* p = kPrio[static_cast<int>(msg.level)];
        dest.append(p, p + 3);
    }
    std::unique_ptr<custom_flag_formatter> clone() const override {
        return std::make_unique<SdPriority>();
    }
};

std::string g_state_dir, g_level;
bool g_foreground = false;

void install() {
    std::shared_ptr<spdlog::logger> logger;
    if (getenv("JOURNAL_STREAM")) {
        auto sink = std::make_shared<spdlog::sinks::stderr_sink_st>();
        logger = std::make_shared<spdlog::logger>("hangard", sink);
        // sd-daemon(3) priority prefixes: the journal stores the level of every line.
        auto f = std::make_unique<spdlog::pattern_formatter>();
        f->add_flag<SdPriority>('*').set_pattern("%*%v");
        logger->set_formatter(std::move(f));
    } else if (g_foreground) {
        logger = std::make_shared<spdlog::logger>(
            "hangard", std::make_shared<spdlog::sinks::stderr_sink_st>());
        logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
    } else {
        // The log names machines, users and paths: 0600, like everything in the state dir,
        // whether new, rotated or left by an older hangard.
        spdlog::file_event_handlers handlers;
        handlers.before_open = [](const spdlog::filename_t& name) {
            int fd = open(name.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
            if (fd >= 0) {
                close(fd);
            }
        };
        handlers.after_open = [](const spdlog::filename_t&, std::FILE* f) {
            fchmod(fileno(f), 0600);
        };
        for (int i = 1; i <= 3; ++i) {
            chmod((g_state_dir + "/hangard." + std::to_string(i) + ".log").c_str(), 0600);
        }
        logger = std::make_shared<spdlog::logger>(
            "hangard", std::make_shared<spdlog::sinks::rotating_file_sink_st>(
                           g_state_dir + "/hangard.log", 10 * 1024 * 1024, 3, false, handlers));
        logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l [%P] %v");
        logger->flush_on(spdlog::level::info);
    }
    logger->set_level(spdlog::level::from_str(g_level));
    spdlog::set_default_logger(logger);
}
}  // namespace

void setup_logging(const std::string& state_dir, const std::string& level, bool foreground) {
    g_state_dir = state_dir;
    g_level = level == "warning" ? "warn" : level;
    g_foreground = foreground;
    install();
}

void reopen_logs() {
    install();
    spdlog::info("log reopened");
}

}  // namespace hangar::daemon
