#pragma once
#include <string>

namespace hangar::daemon {

// Under systemd (JOURNAL_STREAM set) logs go to stderr with sd-daemon priority prefixes; with
// --foreground to stderr; otherwise to <state dir>/hangard.log (rotated at 10 MiB, 3 kept).
void setup_logging(const std::string& state_dir, const std::string& level, bool foreground);
// SIGHUP: reopen the log file (after an external rotation).
void reopen_logs();

}  // namespace hangar::daemon
