#pragma once
// CreateMachine's spec (a{sv}) read through the spec codec's field table: the keys of the JSON
// spec, "boot" a nested a{sv} with kernel, initrd, cmdline, disk (s) and command (as); cpus and
// memory_mib are u, autostart b, the rest s. The flat boot keys of the first D-Bus interface
// (kernel, initrd, cmdline, disk, command at the top) are still read as boot's, but not
// together with "boot".
#include <map>
#include <string>

#include <sdbus-c++/Types.h>

#include "hangar/error.hpp"
#include "hangar/machine.hpp"

namespace hangar::dbus {

using SpecDict = std::map<std::string, sdbus::Variant>;

// Reads `dict` over `spec` (whose name is CreateMachine's first argument: a "name" key must
// repeat it). Unknown keys and values of the wrong D-Bus type are bad_request.
Status spec_from_dict(const SpecDict& dict, MachineSpec& spec);

}  // namespace hangar::dbus
