// Shared by the server tests: a server on an ephemeral loopback port on its own thread,
// requests with httplib's client, and a request run alone with modula::generate.
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>

#include <thread>

#include "modula/backbone/registry.h"
#include "modula/composition/apply_spec.h"
#include "modula/composition/registry.h"
#include "modula/serve/server.h"
#include "support/temp_dir.h"

namespace modula::testing {

using json = nlohmann::json;

inline const std::vector<std::string> kAdapters = {"lora=" + fixture("hf/adapters/llama-lora"),
                                                   "ia3=" + fixture("hf/adapters/llama-ia3"),
                                                   "prefix=" + fixture("hf/adapters/llama-prefix")};

inline serve::ServeOptions options(const std::string& api_key = {}) {
  serve::ServeOptions o;
  o.model_dir = fixture("hf/models/llama");
  o.tokenizer = fixture("hf/tokenizers/bytelevel-bpe.json");
  o.adapters = kAdapters;
  o.port = 0;
  o.api_key = api_key;
  return o;
}

// A server running on its own thread for the test's duration.
struct Running {
  explicit Running(serve::ServeOptions o) : server(std::move(o)) {
    port = server.bind();
    thread = std::thread([this] { server.run(); });
  }
  ~Running() {
    server.stop();
    thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    return c;
  }
  serve::Server server;
  int port = 0;
  std::thread thread;
};

inline std::vector<int64_t> alone(const std::string& module, const std::vector<int64_t>& prompt, int64_t n) {
  auto model = load_backbone(fixture("hf/models/llama"));
  Adapter a;
  if (!module.empty()) a = load_module(*model, fixture("hf/adapters/llama-" + module));
  PrepareInput prepare = [&](BackboneInput& in) {
    KVCache unused;
    if (a.input) a.input->prepare(*model, in, unused);
  };
  GenerateOptions o;
  o.max_new_tokens = n;
  return generate(*model, prompt, o, {}, prepare);
}

inline json body(const std::string& model, const std::vector<int64_t>& prompt, int64_t n) {
  return {{"model", model},   {"prompt", prompt},   {"max_tokens", n},
          {"temperature", 0}, {"ignore_eos", true}, {"return_token_ids", true}};
}

inline json post(httplib::Client& c, const std::string& path, const std::string& text, int expect_status,
                 const httplib::Headers& headers = {}) {
  auto res = c.Post(path.c_str(), headers, text, "application/json");
  EXPECT_TRUE(res) << path << ": " << httplib::to_string(res.error());
  if (!res) return json();
  EXPECT_EQ(res->status, expect_status) << res->body;
  return json::parse(res->body, nullptr, /*allow_exceptions=*/false);
}

// A composition spec over fixture adapters (name → "hf/adapters/llama-<name>"), applied alone.
inline std::vector<int64_t> alone_spec(const std::string& spec, const std::map<std::string, std::string>& folders,
                                       const std::vector<int64_t>& prompt, int64_t n) {
  auto model = load_backbone(fixture("hf/models/llama"));
  auto comp = apply_spec(*model, parse_spec(spec), folders);
  PrepareInput prepare = [&](BackboneInput& in) { comp.prepare(*model, in); };
  GenerateOptions o;
  o.max_new_tokens = n;
  return generate(*model, prompt, o, {}, prepare);
}

}  // namespace modula::testing
