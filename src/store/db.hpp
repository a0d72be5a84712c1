#pragma once
// The SQLite store (WAL) in the state dir: machines, the event sequence and the most recent
// events. Writes made during one reactor turn share one transaction, committed at the end of
// that turn or earlier by flush(); an action is acknowledged only after flush().
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "hangar/error.hpp"
#include "hangar/machine.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace hangar::store {

struct MachineRow {
    MachineSpec spec;
    MachineState state = MachineState::stopped;
    std::string state_reason;
    int64_t pid = 0;
};

struct EventRow {
    uint64_t seq = 0;
    std::string time, type, machine, data;
    uint32_t owner = 0;  // uid owning the machine the event is about
};

// An API token or a trusted TLS client certificate; names are unique across both kinds.
struct CredentialRow {
    std::string name;
    std::string kind;  // "token" or "certificate"
    std::string hash;  // hex SHA-256 of the token, or of the certificate's DER form
    uint32_t uid = 0;
    bool admin = false;  // stored: the right at registration; Credentials reports the current one
    std::string created_at;
};

// A long-running operation (core::Operation as stored). `done` orders the finished ones by
// when they ended (0 while running).
struct OperationRow {
    std::string id;
    uint32_t owner = 0;
    std::string machine, image, action, status, created_at, done_at;
    uint64_t done = 0;
    std::string state, error_code, error_message, detail;
    std::string phase;  // an image operation's progress
    uint64_t bytes = 0, total = 0;
};

class Db {
  public:
    // `schedule` runs a callback at the end of the current reactor turn (asio::post).
    using Scheduler = std::function<void(std::function<void()>)>;

    Db() = default;
    ~Db();
    Db(const Db&) = delete;
    Db& operator=(const Db&) = delete;

    Status open(const std::string& path, Scheduler schedule);
    int schema_version() const { return version_; }

    std::vector<MachineRow> load_machines();
    void insert_machine(const MachineRow& row);
    void update_state(const std::string& name, MachineState state, const std::string& reason,
                      int64_t pid);
    void delete_machine(const std::string& name);
    void update_spec(const MachineSpec& spec);

    uint64_t last_seq() const { return last_seq_; }
    // Records an event; its seq must be last_seq() + 1. Keeps only the newest `keep` events.
    void append_event(const EventRow& ev, size_t keep);
    std::vector<EventRow> load_events_after(uint64_t seq, size_t limit);

    std::vector<CredentialRow> load_credentials();
    void insert_credential(const CredentialRow& c);
    void delete_credential(const std::string& name);

    // Small named values (meta table); "" when unset.
    std::string get_meta(const std::string& key);
    void set_meta(const std::string& key, const std::string& value);

    // Named JSON documents: the tables "images", "templates", "pools", "disks", "snapshots" and
    // "snapshot_heads", (name, the object's JSON).
    std::vector<std::pair<std::string, std::string>> load_documents(const char* table);
    void put_document(const char* table, const std::string& name, const std::string& data);
    void delete_document(const char* table, const std::string& name);

    // Operations: the running ones (done = 0) first, then the finished ones kept, in the order
    // they ended.
    std::vector<OperationRow> load_operations();
    void put_operation(const OperationRow& row);  // inserts or replaces
    void delete_operation(const std::string& id);

    // Commits what this turn wrote. Returns false (and logs) if the commit failed.
    bool flush();

  private:
    void begin();
    void exec(const char* sql);
    sqlite3_stmt* prepare(const char* sql);
    void step_done(sqlite3_stmt* st, const char* what);
    Status migrate();

    sqlite3* db_ = nullptr;
    Scheduler schedule_;
    bool in_txn_ = false;
    int version_ = 0;
    uint64_t last_seq_ = 0;
    uint64_t trim_countdown_ = 0;
    sqlite3_stmt* st_update_state_ = nullptr;
    sqlite3_stmt* st_insert_event_ = nullptr;
    sqlite3_stmt* st_set_seq_ = nullptr;
};

}  // namespace hangar::store
