#pragma once
#include <string_view>

#include "hangar/error.hpp"

namespace hangar {

// Machine, disk, image, template and snapshot names: ^[a-z0-9][a-z0-9-]{0,62}$.
bool is_valid_name(std::string_view name);
// ok, or invalid_name with a message that quotes the (truncated) name.
Status check_name(std::string_view what, std::string_view name);

}  // namespace hangar
