#pragma once
// The terminal attached to a WebSocket of hangard: `hangarctl console` (a machine's serial
// console) and `hangarctl exec -it` (a command on a pty). Kept out of main.cpp: the
// asynchronous Beast client is costly to compile.
#include <optional>
#include <string>

#include "cli/connection.hpp"

namespace hangar::cli {

struct TerminalOptions {
    std::string path;     // the request target of the upgrade, query included
    std::string machine;  // for the notes on stderr
    // An interactive exec: the command's exit status ({"type":"exit"}) is the result, and
    // the end of stdin only stops the input (the command ends by itself).
    bool exec = false;
    // Keystrokes are not sent (the viewer joined read-only); Ctrl-] still leaves.
    bool readonly = false;
};

struct TerminalSize {
    unsigned cols = 0, rows = 0;
};

// The window size of the terminal on stdin (else stdout), if either is one.
std::optional<TerminalSize> terminal_size();

// Connects, puts a terminal on stdin in raw mode (restored on every way out), copies binary
// frames to stdout and stdin to binary frames, sends the window size at the start and on
// SIGWINCH, and prints control notes on stderr when stdout is a terminal. Ctrl-] (0x1d) on
// a terminal leaves. Without a terminal on stdin, its end leaves once the output has been
// quiet for a second (console) or stops the input (exec). Returns hangarctl's exit status:
// 0 when left or closed normally, the command's status for exec, 1 when the server refused
// or closed with a reason (printed), 128+N after signal N.
int run_terminal(Connector& connector, const TerminalOptions& options);

}  // namespace hangar::cli
