#include "util/file_tail.hpp"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

namespace hangar {

Status read_file_tail(const std::string& path, uint64_t max, std::string& out) {
    out.clear();
    int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            return {};
        }
        return {Errc::internal, "cannot open " + path + ": " + strerror(errno)};
    }
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        int e = errno;
        ::close(fd);
        return {Errc::internal, "cannot stat " + path + ": " + strerror(e)};
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        return {Errc::internal, path + " is not a regular file"};
    }
    auto size = static_cast<uint64_t>(st.st_size);
    uint64_t start = size > max ? size - max : 0;
    out.resize(size - start);
    size_t got = 0;
    while (got < out.size()) {
        ssize_t n = pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(start + got));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;  // shorter than fstat said (truncated meanwhile), or an error: what was read
        }
        got += static_cast<size_t>(n);
    }
    out.resize(got);
    ::close(fd);
    return {};
}

}  // namespace hangar
