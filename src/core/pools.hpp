#pragma once
// Storage pools: directories disks live in. `dir` is the one driver: a directory on any file
// system, named by an admin ({"name": "fast", "driver": "dir", "path": "/srv/hangar"}). Pool
// `default` is <state dir>/pools/default and always exists. Each reports its file system's
// capacity and free space, and whether it can clone files by reflink (FICLONE, probed when the
// pool is made: copies are then copy-on-write). Every user may list them; admins create and
// delete them. Deleting a pool forgets it: hangard never removes the directory or its files.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "hangar/error.hpp"
#include "store/db.hpp"

namespace hangar::core {

struct Caller;

struct Pool {
    std::string name;
    std::string driver = "dir";
    std::string path;  // absolute, normal form, no trailing slash
    bool reflink = false;
    std::string created_at;
};

// The file system a pool's directory is on, now (statvfs).
struct PoolSpace {
    uint64_t capacity = 0, free = 0;  // bytes; free: what an unprivileged writer may use
    Status status;                    // why the figures are missing
};

inline constexpr size_t kMaxPools = 256;

// A pool's JSON (a POST body, the store's copy): strict, unknown fields refused. `stored` also
// reads reflink and created_at.
Status decode_pool(std::string_view body, Pool& out, bool stored = false);
// Whether files in `dir` can be cloned by reflink: two unnamed files (O_TMPFILE, nothing is
// left behind) and FICLONE. An error when hangard cannot write there at all.
Status probe_reflink(const std::string& dir, bool& reflink);

class Pools {
  public:
    // `state_dir`: pools may not lie in it (but `default`, which is made there).
    Pools(store::Db& db, std::string state_dir);

    // Reads the store and makes the default pool's directory (0700).
    Status load();

    std::vector<const Pool*> list() const;
    Status get(const std::string& name, const Pool** out) const;
    // Admins only. The path must be an existing directory (not a symlink) outside the state
    // dir, not the same as, inside or around another pool's.
    Status create(const Caller& caller, Pool p, const Pool** out);
    Status remove(const Caller& caller, const std::string& name);

    static PoolSpace space(const Pool& p);
    // The same for any directory (the machines' directory holds VMs' root disks).
    static PoolSpace space_at(const std::string& path);
    std::string to_json(const Pool& p) const;
    // hangar_pools, hangar_pool_capacity_bytes{pool}, hangar_pool_free_bytes{pool}.
    void render_metrics(std::string& out) const;

  private:
    store::Db& db_;
    std::string state_dir_;
    std::map<std::string, Pool> pools_;
};

}  // namespace hangar::core
