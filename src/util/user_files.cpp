#include "util/user_files.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "util/json.hpp"

namespace hangar {

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
        reset(o.release());
    }
    return *this;
}

void UniqueFd::reset(int fd) {
    if (fd_ >= 0) {
        ::close(fd_);
    }
    fd_ = fd;
}

UserIdentity lookup_user(uid_t uid) {
    UserIdentity u;
    u.uid = uid;
    u.gid = 65534;
    std::vector<char> buf(16384);
    struct passwd pw {};
    struct passwd* found = nullptr;
    if (getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) != 0 || !found) {
        u.groups = {u.gid};
        return u;
    }
    u.known = true;
    u.gid = pw.pw_gid;
    int n = 32;
    for (int attempt = 0; attempt < 4; ++attempt) {
        u.groups.assign(static_cast<size_t>(n), 0);
        int got = n;
        if (getgrouplist(pw.pw_name, pw.pw_gid, u.groups.data(), &got) >= 0) {
            u.groups.resize(static_cast<size_t>(got));
            return u;
        }
        n = std::max(got, n * 4);
    }
    u.groups = {u.gid};
    return u;
}

namespace {

// This thread's file-system identity switched to a user's until destroyed. Only the thread's
// own credentials change (raw system calls, not glibc's process-wide wrappers), and only those
// the kernel checks file access with: fsuid, fsgid and the supplementary groups. Moving fsuid
// away from 0 clears the file capabilities (CAP_DAC_OVERRIDE...), moving it back restores them.
class FsIdentity {
  public:
    explicit FsIdentity(const UserIdentity& u) {
        int n = getgroups(0, nullptr);
        if (n < 0) {
            return;
        }
        saved_groups_.resize(static_cast<size_t>(n));
        if (getgroups(n, saved_groups_.data()) != n) {
            return;
        }
        if (syscall(SYS_setgroups, u.groups.size(), u.groups.data()) != 0) {
            return;
        }
        groups_set_ = true;
        syscall(SYS_setfsgid, u.gid);
        syscall(SYS_setfsuid, u.uid);
        // setfsuid/setfsgid answer the previous value; asking again with -1 tells the current.
        ok_ = static_cast<uid_t>(syscall(SYS_setfsuid, -1)) == u.uid &&
              static_cast<gid_t>(syscall(SYS_setfsgid, -1)) == u.gid;
    }
    ~FsIdentity() {
        syscall(SYS_setfsuid, geteuid());
        syscall(SYS_setfsgid, getegid());
        if (groups_set_) {
            syscall(SYS_setgroups, saved_groups_.size(), saved_groups_.data());
        }
    }
    FsIdentity(const FsIdentity&) = delete;
    FsIdentity& operator=(const FsIdentity&) = delete;
    bool ok() const { return ok_; }

  private:
    std::vector<gid_t> saved_groups_;
    bool groups_set_ = false;
    bool ok_ = false;
};

// O_PATH first (no open of the file itself: a FIFO cannot block, a device sees nothing), then
// the inode that descriptor holds reopened through /proc/self/fd with the access wanted; the
// kernel checks that access against the current (switched) identity.
int open_regular(const std::string& path, bool writable, struct stat& st, int& err,
                 bool& not_regular) {
    int pfd = ::open(path.c_str(), O_PATH | O_CLOEXEC);
    if (pfd < 0) {
        err = errno;
        return -1;
    }
    if (fstat(pfd, &st) != 0) {
        err = errno;
        ::close(pfd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        not_regular = true;
        ::close(pfd);
        return -1;
    }
    std::string self = "/proc/self/fd/" + std::to_string(pfd);
    int fd = ::open(self.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY);
    err = errno;
    ::close(pfd);
    if (fd >= 0 && fstat(fd, &st) != 0) {
        err = errno;
        ::close(fd);
        return -1;
    }
    return fd;
}

std::string describe_mode(mode_t m) {
    if (S_ISDIR(m))
        return "a directory";
    if (S_ISFIFO(m))
        return "a FIFO";
    if (S_ISSOCK(m))
        return "a socket";
    if (S_ISCHR(m))
        return "a character device";
    if (S_ISBLK(m))
        return "a block device";
    return "not a regular file";
}

}  // namespace

Status open_user_file(const std::string& what, const std::string& path, const FileAccess& who,
                      bool writable, uint64_t max_size, OpenedFile& out) {
    if (path.empty() || path[0] != '/') {
        return {Errc::invalid_spec, what + " must be an absolute path"};
    }
    if (path.find('\0') != std::string::npos || path.size() > 4096) {
        return {Errc::invalid_spec, what + " is not a usable path"};
    }
    bool as_self = who.as_daemon || who.uid == geteuid();
    if (!as_self && geteuid() != 0) {
        return {Errc::forbidden, what + ": hangard runs as uid " + std::to_string(geteuid()) +
                                     " and cannot open files as uid " + std::to_string(who.uid)};
    }
    int err = 0;
    bool not_regular = false;
    int fd = -1;
    if (as_self) {
        fd = open_regular(path, writable, out.st, err, not_regular);
    } else {
        UserIdentity u = lookup_user(who.uid);
        FsIdentity as_user(u);
        if (!as_user.ok()) {
            return {Errc::internal, what + ": cannot take the file-system identity of uid " +
                                        std::to_string(who.uid)};
        }
        fd = open_regular(path, writable, out.st, err, not_regular);
    }
    if (not_regular) {
        return {Errc::invalid_spec, what + " " + json::quote(path) + " is " +
                                        describe_mode(out.st.st_mode) + ", not a regular file"};
    }
    if (fd < 0) {
        switch (err) {
            case ENOENT:
            case EACCES:
            case EPERM:
            case ENOTDIR:
            case ELOOP:
            case ENAMETOOLONG:
                // One answer for "missing" and "not yours": no oracle for others' paths.
                return {Errc::invalid_spec,
                        what + " " + json::quote(path) + ": no such file, or uid " +
                            std::to_string(who.as_daemon ? geteuid() : who.uid) + " may not " +
                            (writable ? "read and write" : "read") + " it"};
            default:
                return {Errc::invalid_spec,
                        what + " " + json::quote(path) + ": " + std::strerror(err)};
        }
    }
    out.fd.reset(fd);
    if (static_cast<uint64_t>(out.st.st_size) > max_size) {
        out.fd.reset();
        return {Errc::invalid_spec, what + " " + json::quote(path) + " is larger than " +
                                        std::to_string(max_size >> 20) + " MiB"};
    }
    return {};
}

}  // namespace hangar
