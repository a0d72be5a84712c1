#include "spool/tree_files.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace hangar::spool {

namespace {

int openat2_beneath(int dir, const std::string& rel, uint64_t flags) {
    open_how how{};
    how.flags = flags | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
    return static_cast<int>(syscall(SYS_openat2, dir, rel.c_str(), &how, sizeof how));
}

const char* kind_of(mode_t mode) {
    switch (mode & S_IFMT) {
        case S_IFLNK:
            return "a symbolic link";
        case S_IFIFO:
            return "a FIFO";
        case S_IFCHR:
        case S_IFBLK:
            return "a device";
        case S_IFSOCK:
            return "a socket";
        case S_IFDIR:
            return "a directory";
        case S_IFREG:
            return "a regular file";
        default:
            return "not a regular file";
    }
}

// The error of a failed openat2 beneath the tree, without naming anything outside it.
Status open_error(int err, const std::string& rel) {
    switch (err) {
        case ENOENT:
            return {Errc::not_found, rel + ": does not exist"};
        case ELOOP:
            return {Errc::forbidden, rel + ": a symbolic link (on the way or at the end)"};
        case EXDEV:
            return {Errc::forbidden, rel + ": leaves the tree (a mount point or '..')"};
        case ENOTDIR:
            return {Errc::forbidden, rel + ": not a directory"};
        case ENXIO:
            return {Errc::forbidden, rel + ": a FIFO or socket"};
        default:
            return {Errc::internal, rel + ": " + strerror(err)};
    }
}

Status check_owner(const struct stat& st, const std::string& rel, const Owner& owner) {
    if (st.st_uid != owner.uid) {
        return {Errc::forbidden, rel + ": owned by uid " + std::to_string(st.st_uid) +
                                     ", not by the tree's uid " + std::to_string(owner.uid)};
    }
    return {};
}

Status open_dir_step(int dir, const std::string& rel, const Owner& owner, bool create, Fd& out) {
    Fd fd(openat2_beneath(dir, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW));
    bool made = false;
    if (!fd && errno == ENOENT && create) {
        made = mkdirat(dir, rel.c_str(), 0755) == 0;
        if (!made && errno != EEXIST) {
            return {Errc::internal, rel + ": cannot create: " + strerror(errno)};
        }
        fd = Fd(openat2_beneath(dir, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW));
    }
    struct stat st {};
    if (!fd && errno == ENOTDIR) {
        // What is it then (a symbolic link at the end gives ENOTDIR with O_DIRECTORY)?
        Fd entry(openat2_beneath(dir, rel, O_PATH | O_NOFOLLOW));
        if (entry && fstat(entry.get(), &st) == 0) {
            return {Errc::forbidden, rel + ": " + kind_of(st.st_mode) + ", not a directory"};
        }
        errno = ENOTDIR;
    }
    if (!fd) {
        return open_error(errno, rel);
    }
    if (fstat(fd.get(), &st) != 0) {
        return {Errc::internal, rel + ": " + strerror(errno)};
    }
    if (made && st.st_uid == geteuid() && st.st_uid != owner.uid) {
        // Ours, just made: the user's from now on.
        if (fchown(fd.get(), owner.uid, owner.gid) != 0 || fchmod(fd.get(), 0755) != 0) {
            return {Errc::internal, rel + ": cannot give it to its user: " + strerror(errno)};
        }
        st.st_uid = owner.uid;
    }
    if (Status s = check_owner(st, rel, owner); !s) {
        return s;
    }
    out = std::move(fd);
    return {};
}

}  // namespace

Status open_dir(int dir, const std::string& rel, const Owner& owner, Fd& out) {
    return open_dir_step(dir, rel, owner, false, out);
}

Status make_dirs(int dir, const std::string& rel, const Owner& owner, Fd& out) {
    Fd cur;
    size_t at = 0;
    while (at <= rel.size()) {
        size_t slash = rel.find('/', at);
        std::string part =
            rel.substr(at, slash == std::string::npos ? std::string::npos : slash - at);
        Fd next;
        if (Status st = open_dir_step(cur ? cur.get() : dir, part, owner, true, next); !st) {
            return {st.code(), rel.substr(0, slash) + st.message().substr(part.size())};
        }
        cur = std::move(next);
        if (slash == std::string::npos) {
            break;
        }
        at = slash + 1;
    }
    out = std::move(cur);
    return {};
}

Status check_file(int dir, const std::string& name, const Owner& owner, off_t max_size, Fd& out) {
    // O_PATH | O_NOFOLLOW: a symbolic link at the end is opened as itself and seen below.
    Fd fd(openat2_beneath(dir, name, O_PATH | O_NOFOLLOW));
    if (!fd) {
        return open_error(errno, name);
    }
    struct stat st {};
    if (fstat(fd.get(), &st) != 0) {
        return {Errc::internal, name + ": " + strerror(errno)};
    }
    if (!S_ISREG(st.st_mode)) {
        return {Errc::forbidden, name + ": " + kind_of(st.st_mode) + ", not a regular file"};
    }
    if (Status s = check_owner(st, name, owner); !s) {
        return s;
    }
    if (st.st_nlink != 1) {
        return {Errc::forbidden,
                name + ": has " + std::to_string(st.st_nlink) + " hard links (must have 1)"};
    }
    if (st.st_size > max_size) {
        return {Errc::too_large, name + ": " + std::to_string(st.st_size) + " bytes (at most " +
                                     std::to_string(max_size) + ")"};
    }
    out = std::move(fd);
    return {};
}

Status read_checked(const Fd& checked, size_t max_size, std::string& out) {
    // Reopened through its descriptor: the inode checked, whatever the name holds now.
    std::string proc = "/proc/self/fd/" + std::to_string(checked.get());
    Fd fd(open(proc.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
    if (!fd) {
        return {Errc::internal, std::string("cannot open: ") + strerror(errno)};
    }
    out.clear();
    char buf[16384];
    for (;;) {
        ssize_t n = read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return {Errc::internal, std::string("cannot read: ") + strerror(errno)};
        }
        if (n == 0) {
            return {};
        }
        out.append(buf, static_cast<size_t>(n));
        if (out.size() > max_size) {
            return {Errc::too_large, "more than " + std::to_string(max_size) + " bytes"};
        }
    }
}

namespace {

Status write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = write(fd, data.data(), data.size());
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return {Errc::internal, std::string("cannot write: ") + strerror(errno)};
        }
        data.remove_prefix(static_cast<size_t>(n));
    }
    return {};
}

// Creates dir/name as a new file of `owner`'s, removing what is there unless it is a
// directory (a planted symbolic link is removed, not followed).
Status create_new(int dir, const std::string& name, int flags, const Owner& owner, Fd& out) {
    for (int attempt = 0; attempt < 2; ++attempt) {
        Fd fd(openat(dir, name.c_str(), flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
        if (fd) {
            if (fchown(fd.get(), owner.uid, owner.gid) != 0) {
                return {Errc::internal, name + ": cannot give it to its user: " + strerror(errno)};
            }
            out = std::move(fd);
            return {};
        }
        if (errno != EEXIST || unlinkat(dir, name.c_str(), 0) != 0) {
            return {Errc::forbidden, name + ": cannot be created: " + strerror(errno)};
        }
    }
    return {Errc::forbidden, name + ": cannot be created (it keeps coming back)"};
}

}  // namespace

Status replace_file(int dir, const std::string& name, std::string_view data, const Owner& owner) {
    std::string tmp = "." + name + ".hangar-tmp";
    Fd fd;
    if (Status st = create_new(dir, tmp, O_WRONLY, owner, fd); !st) {
        return st;
    }
    if (Status st = write_all(fd.get(), data); !st) {
        unlinkat(dir, tmp.c_str(), 0);
        return {st.code(), name + ": " + st.message()};
    }
    // rename replaces whatever entry `name` is (a symbolic link included) without following it.
    if (renameat(dir, tmp.c_str(), dir, name.c_str()) != 0) {
        int err = errno;
        unlinkat(dir, tmp.c_str(), 0);
        return {Errc::forbidden, name + ": cannot be replaced: " + strerror(err)};
    }
    return {};
}

Status append_line(int dir, const std::string& name, std::string_view line, const Owner& owner,
                   off_t rotate_at) {
    Fd fd;
    Fd checked;
    Status st = check_file(dir, name, owner, rotate_at, checked);
    if (st) {
        std::string proc = "/proc/self/fd/" + std::to_string(checked.get());
        fd = Fd(open(proc.c_str(), O_WRONLY | O_APPEND | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
        if (!fd) {
            return {Errc::internal, name + ": " + strerror(errno)};
        }
    } else if (st.code() == Errc::too_large) {
        std::string old = name + ".1";
        renameat(dir, name.c_str(), dir, old.c_str());
    }
    if (!fd) {
        // Missing, rotated, or not the user's plain file: a new one (create_new removes a
        // planted entry).
        if (Status c = create_new(dir, name, O_WRONLY | O_APPEND, owner, fd); !c) {
            return c;
        }
    }
    return write_all(fd.get(), line);
}

}  // namespace hangar::spool
