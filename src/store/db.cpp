#include "store/db.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include <sqlite3.h>

#include <spdlog/spdlog.h>

#include "core/spec_codec.hpp"
#include "util/json.hpp"
#include "util/reactor.hpp"

namespace hangar::store {

namespace {
// Each entry moves the schema from version i to i + 1. Never edit a released entry: append.
const char* const kMigrations[] = {
    R"sql(
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE machines(
    name TEXT PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    owner INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0);
CREATE TABLE events(
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    type TEXT NOT NULL,
    machine TEXT NOT NULL,
    data TEXT NOT NULL);
INSERT INTO meta(key, value) VALUES('seq', '0');
)sql",
    // 2: events remember the owner of their machine, so that replay can be filtered by uid.
    R"sql(
ALTER TABLE events ADD COLUMN owner INTEGER NOT NULL DEFAULT 0;
)sql",
    // 3: API tokens, stored only as the SHA-256 of the token.
    R"sql(
CREATE TABLE tokens(
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    uid INTEGER NOT NULL,
    admin INTEGER NOT NULL,
    created_at TEXT NOT NULL);
)sql",
    // 4: trusted TLS client certificates share the table (hash = SHA-256 of the DER form).
    R"sql(
ALTER TABLE tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'token';
)sql",
    // 5: local images (their JSON as the API shows it).
    R"sql(
CREATE TABLE images(name TEXT PRIMARY KEY, data TEXT NOT NULL);
)sql",
    // 6: operations, so that GET /v1/operations/{id} answers across a restart. Finished ones
    // are kept as many as in memory (core::kKeptOperations), in the order they ended (done).
    R"sql(
CREATE TABLE operations(
    id TEXT PRIMARY KEY,
    owner INTEGER NOT NULL,
    machine TEXT NOT NULL DEFAULT '',
    image TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    done_at TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '',
    error_code TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    phase TEXT NOT NULL DEFAULT '',
    bytes INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0);
)sql",
    // 7: size templates and storage pools (their JSON as the API shows it).
    R"sql(
CREATE TABLE templates(name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE pools(name TEXT PRIMARY KEY, data TEXT NOT NULL);
)sql",
    // 8: disks in pools (their JSON as stored by core::Disks).
    R"sql(
CREATE TABLE disks(name TEXT PRIMARY KEY, data TEXT NOT NULL);
)sql",
    // 9: snapshots ("machine/snapshot") and each machine's snapshot head (core::Snapshots).
    R"sql(
CREATE TABLE snapshots(name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE snapshot_heads(name TEXT PRIMARY KEY, data TEXT NOT NULL);
)sql",
};

struct Stmt {
    sqlite3_stmt* st;
    ~Stmt() { sqlite3_finalize(st); }
};

std::string column_text(sqlite3_stmt* st, int i) {
    auto p = sqlite3_column_text(st, i);
    return p ? std::string(reinterpret_cast<const char*>(p)) : std::string();
}

void bind_text(sqlite3_stmt* st, int i, const std::string& s) {
    sqlite3_bind_text(st, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
}
}  // namespace

Db::~Db() {
    if (db_) {
        flush();
        for (auto* st : {st_update_state_, st_insert_event_, st_set_seq_}) {
            sqlite3_finalize(st);
        }
        sqlite3_close(db_);
    }
}

Status Db::open(const std::string& path, Scheduler schedule) {
    schedule_ = std::move(schedule);
    // The store holds every machine and credential: 0600. SQLite gives the -wal and -shm files
    // the main file's mode, so it is created (or corrected) before SQLite opens it.
    if (path != ":memory:" && !path.empty()) {
        int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) {
            return {Errc::internal, "cannot open store " + path + ": " + strerror(errno)};
        }
        fchmod(fd, 0600);
        ::close(fd);
        for (const char* suffix : {"-wal", "-shm", "-journal"}) {
            chmod((path + suffix).c_str(), 0600);
        }
    }
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
        SQLITE_OK) {
        std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
        return {Errc::internal, "cannot open store " + path + ": " + msg};
    }
    sqlite3_busy_timeout(db_, 2000);
    char* err = nullptr;
    // WAL + synchronous=NORMAL: a commit survives a crash of this process (kill -9) at once;
    // after a power loss the last commits before the crash may be lost, never corrupted.
    if (sqlite3_exec(db_,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                     "PRAGMA foreign_keys=ON;",
                     nullptr, nullptr, &err) != SQLITE_OK) {
        std::string msg = err ? err : "unknown";
        sqlite3_free(err);
        return {Errc::internal, "cannot configure store " + path + ": " + msg};
    }
    if (Status st = migrate(); !st) {
        return st;
    }
    {
        Stmt s{prepare("SELECT value FROM meta WHERE key='seq'")};
        if (sqlite3_step(s.st) == SQLITE_ROW) {
            last_seq_ = std::stoull(column_text(s.st, 0));
        }
    }
    st_update_state_ = prepare("UPDATE machines SET state=?, state_reason=?, pid=? WHERE name=?");
    st_insert_event_ =
        prepare("INSERT INTO events(seq, time, type, machine, data, owner) VALUES(?,?,?,?,?,?)");
    st_set_seq_ = prepare("UPDATE meta SET value=? WHERE key='seq'");
    return {};
}

Status Db::migrate() {
    Stmt s{prepare("PRAGMA user_version")};
    sqlite3_step(s.st);
    version_ = sqlite3_column_int(s.st, 0);
    const int target = static_cast<int>(std::size(kMigrations));
    if (version_ > target) {
        return {Errc::internal, "store schema version " + std::to_string(version_) +
                                    " is newer than this hangard (" + std::to_string(target) +
                                    "); refusing to touch it"};
    }
    for (int v = version_; v < target; ++v) {
        std::string sql = std::string("BEGIN IMMEDIATE;") + kMigrations[v] +
                          "PRAGMA user_version=" + std::to_string(v + 1) + ";COMMIT;";
        char* err = nullptr;
        if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
            std::string msg = err ? err : "unknown";
            sqlite3_free(err);
            sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
            return {Errc::internal,
                    "store migration to version " + std::to_string(v + 1) + " failed: " + msg};
        }
        spdlog::info("store: migrated schema to version {}", v + 1);
        version_ = v + 1;
    }
    return {};
}

sqlite3_stmt* Db::prepare(const char* sql) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, sql, -1, &st, nullptr) != SQLITE_OK) {
        spdlog::critical("store: cannot prepare '{}': {}", sql, sqlite3_errmsg(db_));
        std::abort();  // a statement of our own that does not compile is a programming error
    }
    return st;
}

void Db::exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
        spdlog::error("store: {} failed: {}", sql, err ? err : "unknown");
        sqlite3_free(err);
    }
}

void Db::step_done(sqlite3_stmt* st, const char* what) {
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        spdlog::error("store: {} failed: {}", what, sqlite3_errmsg(db_));
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

void Db::begin() {
    HANGAR_ASSERT_REACTOR();
    if (in_txn_) {
        return;
    }
    exec("BEGIN");
    in_txn_ = true;
    if (schedule_) {
        schedule_([this] { flush(); });
    }
}

bool Db::flush() {
    HANGAR_ASSERT_REACTOR();
    if (!in_txn_) {
        return true;
    }
    in_txn_ = false;
    char* err = nullptr;
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, &err) != SQLITE_OK) {
        spdlog::error("store: commit failed: {}", err ? err : "unknown");
        sqlite3_free(err);
        sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
        return false;
    }
    return true;
}

std::vector<MachineRow> Db::load_machines() {
    std::vector<MachineRow> rows;
    Stmt s{
        prepare("SELECT name, uuid, type, owner, created_at, spec, state, state_reason, pid "
                "FROM machines ORDER BY name")};
    while (sqlite3_step(s.st) == SQLITE_ROW) {
        MachineRow r;
        r.spec.name = column_text(s.st, 0);
        r.spec.uuid = column_text(s.st, 1);
        r.spec.type = column_text(s.st, 2);
        r.spec.owner = static_cast<uint32_t>(sqlite3_column_int64(s.st, 3));
        r.spec.created_at = column_text(s.st, 4);
        if (Status st = core::decode_stored_spec(column_text(s.st, 5), r.spec); !st) {
            spdlog::error(
                "store: machine {} has an unreadable spec ({}); using defaults for "
                "the rest",
                r.spec.name, st.message());
        }
        r.state = parse_machine_state(column_text(s.st, 6)).value_or(MachineState::stopped);
        r.state_reason = column_text(s.st, 7);
        r.pid = sqlite3_column_int64(s.st, 8);
        rows.push_back(std::move(r));
    }
    return rows;
}

void Db::insert_machine(const MachineRow& r) {
    begin();
    Stmt s{
        prepare("INSERT INTO machines(name, uuid, type, owner, created_at, spec, state, "
                "state_reason, pid) VALUES(?,?,?,?,?,?,?,?,?)")};
    bind_text(s.st, 1, r.spec.name);
    bind_text(s.st, 2, r.spec.uuid);
    bind_text(s.st, 3, r.spec.type);
    sqlite3_bind_int64(s.st, 4, r.spec.owner);
    bind_text(s.st, 5, r.spec.created_at);
    bind_text(s.st, 6, core::encode_stored_spec(r.spec));
    bind_text(s.st, 7, std::string(to_string(r.state)));
    bind_text(s.st, 8, r.state_reason);
    sqlite3_bind_int64(s.st, 9, r.pid);
    step_done(s.st, "insert machine");
}

void Db::update_state(const std::string& name, MachineState state, const std::string& reason,
                      int64_t pid) {
    begin();
    bind_text(st_update_state_, 1, std::string(to_string(state)));
    bind_text(st_update_state_, 2, reason);
    sqlite3_bind_int64(st_update_state_, 3, pid);
    bind_text(st_update_state_, 4, name);
    step_done(st_update_state_, "update machine state");
}

void Db::update_spec(const MachineSpec& spec) {
    begin();
    Stmt s{prepare("UPDATE machines SET spec=? WHERE name=?")};
    bind_text(s.st, 1, core::encode_stored_spec(spec));
    bind_text(s.st, 2, spec.name);
    step_done(s.st, "update machine spec");
}

void Db::delete_machine(const std::string& name) {
    begin();
    Stmt s{prepare("DELETE FROM machines WHERE name=?")};
    bind_text(s.st, 1, name);
    step_done(s.st, "delete machine");
}

void Db::append_event(const EventRow& ev, size_t keep) {
    begin();
    sqlite3_bind_int64(st_insert_event_, 1, static_cast<int64_t>(ev.seq));
    bind_text(st_insert_event_, 2, ev.time);
    bind_text(st_insert_event_, 3, ev.type);
    bind_text(st_insert_event_, 4, ev.machine);
    bind_text(st_insert_event_, 5, ev.data);
    sqlite3_bind_int64(st_insert_event_, 6, ev.owner);
    step_done(st_insert_event_, "insert event");
    last_seq_ = ev.seq;
    bind_text(st_set_seq_, 1, std::to_string(ev.seq));
    step_done(st_set_seq_, "store event seq");
    if (++trim_countdown_ >= 256) {
        trim_countdown_ = 0;
        Stmt s{prepare("DELETE FROM events WHERE seq <= ?")};
        sqlite3_bind_int64(s.st, 1, static_cast<int64_t>(ev.seq) - static_cast<int64_t>(keep));
        step_done(s.st, "trim events");
    }
}

std::vector<CredentialRow> Db::load_credentials() {
    std::vector<CredentialRow> out;
    Stmt s{prepare("SELECT name, kind, hash, uid, admin, created_at FROM tokens ORDER BY name")};
    while (sqlite3_step(s.st) == SQLITE_ROW) {
        out.push_back({column_text(s.st, 0), column_text(s.st, 1), column_text(s.st, 2),
                       static_cast<uint32_t>(sqlite3_column_int64(s.st, 3)),
                       sqlite3_column_int(s.st, 4) != 0, column_text(s.st, 5)});
    }
    return out;
}

void Db::insert_credential(const CredentialRow& c) {
    begin();
    Stmt s{prepare(
        "INSERT INTO tokens(name, kind, hash, uid, admin, created_at) VALUES(?,?,?,?,?,?)")};
    bind_text(s.st, 1, c.name);
    bind_text(s.st, 2, c.kind);
    bind_text(s.st, 3, c.hash);
    sqlite3_bind_int64(s.st, 4, c.uid);
    sqlite3_bind_int(s.st, 5, c.admin ? 1 : 0);
    bind_text(s.st, 6, c.created_at);
    step_done(s.st, "insert credential");
}

void Db::delete_credential(const std::string& name) {
    begin();
    Stmt s{prepare("DELETE FROM tokens WHERE name=?")};
    bind_text(s.st, 1, name);
    step_done(s.st, "delete credential");
}

std::vector<EventRow> Db::load_events_after(uint64_t seq, size_t limit) {
    HANGAR_ASSERT_REACTOR();
    std::vector<EventRow> out;
    Stmt s{
        prepare("SELECT seq, time, type, machine, data FROM events WHERE seq > ? "
                "ORDER BY seq LIMIT ?")};
    sqlite3_bind_int64(s.st, 1, static_cast<int64_t>(seq));
    sqlite3_bind_int64(s.st, 2, static_cast<int64_t>(limit));
    while (sqlite3_step(s.st) == SQLITE_ROW) {
        out.push_back({static_cast<uint64_t>(sqlite3_column_int64(s.st, 0)), column_text(s.st, 1),
                       column_text(s.st, 2), column_text(s.st, 3), column_text(s.st, 4),
                       static_cast<uint32_t>(sqlite3_column_int64(s.st, 5))});
    }
    return out;
}

std::vector<std::pair<std::string, std::string>> Db::load_documents(const char* table) {
    std::vector<std::pair<std::string, std::string>> out;
    Stmt s{prepare((std::string("SELECT name, data FROM ") + table + " ORDER BY name").c_str())};
    while (sqlite3_step(s.st) == SQLITE_ROW) {
        out.emplace_back(column_text(s.st, 0), column_text(s.st, 1));
    }
    return out;
}

void Db::put_document(const char* table, const std::string& name, const std::string& data) {
    begin();
    Stmt s{prepare(
        (std::string("INSERT OR REPLACE INTO ") + table + "(name, data) VALUES(?,?)").c_str())};
    bind_text(s.st, 1, name);
    bind_text(s.st, 2, data);
    step_done(s.st, (std::string("insert into ") + table).c_str());
}

void Db::delete_document(const char* table, const std::string& name) {
    begin();
    Stmt s{prepare((std::string("DELETE FROM ") + table + " WHERE name=?").c_str())};
    bind_text(s.st, 1, name);
    step_done(s.st, (std::string("delete from ") + table).c_str());
}

std::vector<OperationRow> Db::load_operations() {
    std::vector<OperationRow> out;
    Stmt s{prepare(
        "SELECT id, owner, machine, image, action, status, created_at, done_at, done, state, "
        "error_code, error_message, detail, phase, bytes, total FROM operations "
        "ORDER BY done, rowid")};
    while (sqlite3_step(s.st) == SQLITE_ROW) {
        OperationRow r;
        r.id = column_text(s.st, 0);
        r.owner = static_cast<uint32_t>(sqlite3_column_int64(s.st, 1));
        r.machine = column_text(s.st, 2);
        r.image = column_text(s.st, 3);
        r.action = column_text(s.st, 4);
        r.status = column_text(s.st, 5);
        r.created_at = column_text(s.st, 6);
        r.done_at = column_text(s.st, 7);
        r.done = static_cast<uint64_t>(sqlite3_column_int64(s.st, 8));
        r.state = column_text(s.st, 9);
        r.error_code = column_text(s.st, 10);
        r.error_message = column_text(s.st, 11);
        r.detail = column_text(s.st, 12);
        r.phase = column_text(s.st, 13);
        r.bytes = static_cast<uint64_t>(sqlite3_column_int64(s.st, 14));
        r.total = static_cast<uint64_t>(sqlite3_column_int64(s.st, 15));
        out.push_back(std::move(r));
    }
    return out;
}

void Db::put_operation(const OperationRow& r) {
    begin();
    Stmt s{prepare(
        "INSERT OR REPLACE INTO operations(id, owner, machine, image, action, status, "
        "created_at, done_at, done, state, error_code, error_message, detail, phase, bytes, "
        "total) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")};
    bind_text(s.st, 1, r.id);
    sqlite3_bind_int64(s.st, 2, r.owner);
    bind_text(s.st, 3, r.machine);
    bind_text(s.st, 4, r.image);
    bind_text(s.st, 5, r.action);
    bind_text(s.st, 6, r.status);
    bind_text(s.st, 7, r.created_at);
    bind_text(s.st, 8, r.done_at);
    sqlite3_bind_int64(s.st, 9, static_cast<int64_t>(r.done));
    bind_text(s.st, 10, r.state);
    bind_text(s.st, 11, r.error_code);
    bind_text(s.st, 12, r.error_message);
    bind_text(s.st, 13, r.detail);
    bind_text(s.st, 14, r.phase);
    sqlite3_bind_int64(s.st, 15, static_cast<int64_t>(r.bytes));
    sqlite3_bind_int64(s.st, 16, static_cast<int64_t>(r.total));
    step_done(s.st, "store operation");
}

void Db::delete_operation(const std::string& id) {
    begin();
    Stmt s{prepare("DELETE FROM operations WHERE id=?")};
    bind_text(s.st, 1, id);
    step_done(s.st, "delete operation");
}

std::string Db::get_meta(const std::string& key) {
    HANGAR_ASSERT_REACTOR();
    Stmt s{prepare("SELECT value FROM meta WHERE key=?")};
    bind_text(s.st, 1, key);
    return sqlite3_step(s.st) == SQLITE_ROW ? column_text(s.st, 0) : std::string();
}

void Db::set_meta(const std::string& key, const std::string& value) {
    begin();
    Stmt s{prepare("INSERT OR REPLACE INTO meta(key, value) VALUES(?,?)")};
    bind_text(s.st, 1, key);
    bind_text(s.st, 2, value);
    step_done(s.st, "set meta");
}

}  // namespace hangar::store
