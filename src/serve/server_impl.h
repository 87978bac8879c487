// The server's state, shared by server.cpp (loading, routes, admin endpoints, lifetime)
// and server_completion.cpp (the two completion endpoints). Not a public header.
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "modula/serve/chat_template.h"
#include "modula/serve/metrics.h"
#include "modula/serve/module_pool.h"
#include "modula/serve/openai.h"
#include "modula/serve/server.h"
#include "modula/text/tokenizer.h"

namespace modula::serve {

// tokenizer_config.json's chat_template and special tokens (empty template: none).
struct ChatConfig {
  std::string chat_template, bos, eos;
};
ChatConfig read_chat_config(const std::string& dir);

// Text on the wire: bytes that are not UTF-8 (a model may emit them) become U+FFFD.
std::string wire(const nlohmann::json& j);
void send_error(httplib::Response& res, const ApiError& e);
int64_t now_seconds();

using Clock = std::chrono::steady_clock;

struct Server::Impl {
  ServeOptions o;
  std::shared_ptr<Backbone> model;
  std::unique_ptr<text::Tokenizer> tok;
  std::unique_ptr<ModulePool> pool;
  std::string base_name;
  ChatConfig chat;
  std::unique_ptr<Scheduler> scheduler;
  Metrics metrics;
  httplib::Server http;
  std::atomic<int64_t> counter{0};
  std::atomic<bool> draining{false};
  std::mutex stop_mu;
  bool stopped = false, running = false;  // under stop_mu
  std::atomic<bool> run_done{false};

  void load();
  void routes();
  void admin_routes();
  bool authorized(const httplib::Request& req) const;
  std::string module_of(const std::string& model) const;
  std::vector<int64_t> prompt_of(const CompletionRequest& r) const;
  GenRequest request_of(const CompletionRequest& r) const;
  void completion(const httplib::Request& req, httplib::Response& res, bool chat);
  void respond(const CompletionRequest& r, const std::vector<std::shared_ptr<Generation>>& gens, Clock::time_point t0,
               httplib::Response& res);
  void stream(const CompletionRequest& r, const std::vector<std::shared_ptr<Generation>>& gens, Clock::time_point t0,
              httplib::Response& res);
};

}  // namespace modula::serve
