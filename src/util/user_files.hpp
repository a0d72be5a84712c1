#pragma once
// Files a user names, opened with that user's rights. hangard runs as root; a path a request
// names is opened with the file-system identity (fsuid, fsgid, supplementary groups) of the
// user it acts for, on this thread only and for the duration of the open, so the kernel
// decides access exactly as for that user. The path is opened once: the caller gets the
// descriptor and uses only it (QEMU through -add-fd or /dev/fd/N, tools on stdin); nothing
// opens the name again.
#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "hangar/error.hpp"

namespace hangar {

// An owned file descriptor.
class UniqueFd {
  public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) : fd_(fd) {}
    UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept;
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() { reset(); }
    int get() const { return fd_; }
    explicit operator bool() const { return fd_ >= 0; }
    int release() {
        int fd = fd_;
        fd_ = -1;
        return fd;
    }
    void reset(int fd = -1);

  private:
    int fd_ = -1;
};

// A user as the system's user and group databases describe it now.
struct UserIdentity {
    uid_t uid = 0;
    gid_t gid = 0;              // primary group; 65534 (nogroup) for a uid without an entry
    std::vector<gid_t> groups;  // supplementary groups, the primary one included
    bool known = false;         // the uid has a passwd entry
};
UserIdentity lookup_user(uid_t uid);

// Whose rights a path is opened with: `as_daemon` (root and admins, who may name any path) or
// the user `uid`.
struct FileAccess {
    uid_t uid = 0;
    bool as_daemon = false;
};

struct OpenedFile {
    UniqueFd fd;
    struct stat st {};
};

// Opens `path` (absolute) for reading, or reading and writing, as `who`. Symbolic links are
// followed with `who`'s rights. Refused: a relative path; anything that is not a regular file
// (FIFOs, devices, sockets, directories: looked at through an O_PATH descriptor, never opened);
// a file larger than `max_size`. A file that does not exist and one `who` may not open give the
// same error (`what` names the field, e.g. "boot.disk"), so the answer reveals nothing about
// paths `who` cannot see.
Status open_user_file(const std::string& what, const std::string& path, const FileAccess& who,
                      bool writable, uint64_t max_size, OpenedFile& out);

}  // namespace hangar
