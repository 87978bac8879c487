// libFuzzer entry: MODULA_FUZZ_TARGET names the target (scripts/fuzz.sh sets it).
#include <cstdio>
#include <cstdlib>

#include "targets.h"

static const modula::fuzz::FuzzTarget* g_target = nullptr;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* name = std::getenv("MODULA_FUZZ_TARGET");
  g_target = name ? modula::fuzz::find_target(name) : nullptr;
  if (!g_target) {
    std::fprintf(stderr, "fuzz: set MODULA_FUZZ_TARGET to one of:");
    for (const auto& t : modula::fuzz::fuzz_targets()) std::fprintf(stderr, " %s", t.name.c_str());
    std::fprintf(stderr, "\n");
    std::exit(2);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  g_target->run(std::string(reinterpret_cast<const char*>(data), size));
  return 0;
}
