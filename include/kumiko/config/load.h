#pragma once
// Loading a configuration without a command line.
#include <string>

#include "kumiko/config/config.h"

namespace kumiko::config {

// Parses and validates an INI file; UserError (one line naming the file) on failure.
Config load_file(const std::string& path);
// Parses and validates INI text, e.g. the /config stored in a weights file;
// `origin` names that file in error messages.
Config from_text(const std::string& text, const std::string& origin);

}  // namespace kumiko::config
