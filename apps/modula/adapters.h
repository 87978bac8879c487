// Shared by the subcommands that take --adapter DIR[:SCALE]: load them onto a model.
#pragma once

#include "modula/modules/adapter.h"

#include <string>
#include <vector>

namespace modula::cli {

// "dir" or "dir:0.5"; each adapter is named after its position (a0, a1, ...).
std::vector<Adapter> load_adapters(Backbone& model, const std::vector<std::string>& specs);

}  // namespace modula::cli
