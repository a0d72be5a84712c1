#pragma once
// Reading the end of a file on the reactor without blocking it: the file is opened with
// O_NONBLOCK | O_NOFOLLOW (a FIFO or a device cannot stall the open, a symlink is not
// followed), must be a regular file (fstat), and at most `max` bytes are read with pread.
#include <cstdint>
#include <string>

#include "hangar/error.hpp"

namespace hangar {

// The last `max` bytes of `path` into `out` ("" when the file does not exist). Errors: the
// file is not a regular file, a symlink, or cannot be read.
Status read_file_tail(const std::string& path, uint64_t max, std::string& out);

}  // namespace hangar
