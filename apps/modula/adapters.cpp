#include "adapters.h"

namespace modula::cli {

std::vector<Adapter> load_adapters(Backbone& model, const std::vector<std::string>& specs) {
  std::vector<Adapter> out;
  for (const auto& spec : specs) {
    std::string dir = spec;
    double scale = 1.0;
    auto colon = spec.rfind(':');
    if (colon != std::string::npos) {
      dir = spec.substr(0, colon);
      try {
        scale = std::stod(spec.substr(colon + 1));
      } catch (const std::exception&) {
        throw std::invalid_argument("[cli] --adapter " + spec + ": scale after ':' must be a number");
      }
    }
    out.push_back(load_adapter(model, dir, "a" + std::to_string(out.size())));
    if (scale != 1.0) out.back().set_scale(scale);
  }
  return out;
}

}  // namespace modula::cli
