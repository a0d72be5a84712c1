#pragma once
// File operations inside one user's spool tree, none of which can reach outside it: every
// path is resolved beneath a directory descriptor of the tree with openat2
// (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV), a file is
// first opened O_PATH and checked with fstat (a regular file of the tree's uid with one link,
// small enough) before it is opened for I/O through /proc/self/fd, and files hangard writes
// are created O_EXCL | O_NOFOLLOW and given to the user (fchown), so a planted symbolic link,
// hard link, FIFO or device is refused or replaced, never followed or opened.
#include <sys/stat.h>
#include <sys/types.h>

#include <string>
#include <string_view>

#include "hangar/error.hpp"
#include "util/user_files.hpp"

namespace hangar::spool {

using Fd = UniqueFd;

// Who a tree belongs to: its files must be theirs; what hangard writes becomes theirs.
struct Owner {
    uid_t uid = 0;
    gid_t gid = 0;
};

// Opens the directory `rel` beneath `dir` (no symbolic link anywhere on the way), which must
// belong to `owner`.
Status open_dir(int dir, const std::string& rel, const Owner& owner, Fd& out);
// Opens `rel` beneath `dir` as the directory of `owner`, creating each missing component
// (mode 0755, given to `owner`).
Status make_dirs(int dir, const std::string& rel, const Owner& owner, Fd& out);
// Checks the entry `name` of `dir` without opening it for I/O: a regular file of `owner`'s
// with one link and at most `max_size` bytes. `out` is an O_PATH descriptor of it.
Status check_file(int dir, const std::string& name, const Owner& owner, off_t max_size, Fd& out);
// Reads a file `check_file` accepted (at most `max_size` bytes; more is too_large).
Status read_checked(const Fd& checked, size_t max_size, std::string& out);
// Replaces dir/name with `data` by a temporary file and a rename; the file is `owner`'s.
Status replace_file(int dir, const std::string& name, std::string_view data, const Owner& owner);
// Appends `line` to dir/name, creating it as `owner`'s; an entry there that is not a regular
// file of `owner`'s with one link is removed first. Past `rotate_at` bytes the file is moved
// to name.1 (replacing it) and started anew.
Status append_line(int dir, const std::string& name, std::string_view line, const Owner& owner,
                   off_t rotate_at);

}  // namespace hangar::spool
