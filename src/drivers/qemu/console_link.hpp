#pragma once
// hangard's connection to a VM's serial console socket (QEMU's chardev serves one client).
// It carries console input to the guest; the output QEMU also writes to the console log
// file, which is where viewers read it (core/console.hpp), so what arrives here is read and
// dropped, only so that QEMU never waits for this reader. Connected after the start and the
// adoption of QEMU, connected again if the connection drops, closed with the handle.
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include <boost/asio/io_context.hpp>

namespace hangar::qemu {

class ConsoleLink {
  public:
    ConsoleLink() = default;
    ConsoleLink(boost::asio::io_context& io, std::filesystem::path socket, std::string machine);
    ~ConsoleLink();
    ConsoleLink(ConsoleLink&&) noexcept = default;
    ConsoleLink& operator=(ConsoleLink&& other) noexcept;

    // Queued for the guest (bounded: input beyond 256 KiB waiting is dropped, and logged).
    void write(std::string_view bytes);
    bool connected() const;

  private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace hangar::qemu
