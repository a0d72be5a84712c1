#include "hangar/machine.hpp"

#include <array>
#include <utility>

namespace hangar {

namespace {
constexpr std::array<std::pair<MachineState, std::string_view>, 6> kStates{{
    {MachineState::stopped, "stopped"},
    {MachineState::starting, "starting"},
    {MachineState::running, "running"},
    {MachineState::paused, "paused"},
    {MachineState::stopping, "stopping"},
    {MachineState::crashed, "crashed"},
}};
}  // namespace

bool is_active(MachineState s) {
    return s == MachineState::starting || s == MachineState::running || s == MachineState::paused ||
           s == MachineState::stopping;
}

std::string_view to_string(MachineState s) {
    for (const auto& [state, name] : kStates) {
        if (state == s) {
            return name;
        }
    }
    return "stopped";
}

std::optional<MachineState> parse_machine_state(std::string_view s) {
    for (const auto& [state, name] : kStates) {
        if (name == s) {
            return state;
        }
    }
    return std::nullopt;
}

}  // namespace hangar
