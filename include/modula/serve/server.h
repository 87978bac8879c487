// `modula serve`: an OpenAI-compatible HTTP server over one backbone and any number of
// module folders, every request routed to its module set (a folder's name, or a
// composition spec over those names) inside one continuously batched decode loop
// (scheduler.h, module_pool.h). Endpoints: GET /v1/models, POST /v1/completions,
// POST /v1/chat/completions (stream: true as server-sent events ending in "data: [DONE]"),
// POST /v1/load_lora_adapter, /v1/unload_lora_adapter, GET /health, GET /metrics
// (Prometheus). Errors use OpenAI's body {"error": {"message", "type", "param", "code"}}.
//
//   modula::serve::ServeOptions o;
//   o.model_dir = "models/llama";  o.adapters = {"de=adapters/de", "fr=adapters/fr"};  o.port = 0;
//   modula::serve::Server server(o);
//   int port = server.bind();      // 0 = an ephemeral port
//   std::thread t([&] { server.run(); });  ...  server.stop();  t.join();
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "modula/serve/scheduler.h"

namespace modula::serve {

struct ServeOptions {
  std::string model_dir;                  // backbone folder (config.json + weights)
  std::string tokenizer;                  // tokenizer file or folder; empty = model_dir
  std::string name;                       // the base model's id; empty = model_dir's last component
  std::vector<std::string> adapters;      // "NAME=DIR" module folders of any mixable type
  std::vector<std::string> adapter_dirs;  // folders whose subfolders are served by name on first use
  int64_t max_resident = 32;              // module sets in the model at once (LRU beyond)
  std::string adapter_dtype;              // LoRA weights stored so ("" = the model's dtype; "bfloat16", "int8")
  std::string host = "127.0.0.1";         // loopback unless asked otherwise
  int port = 8000;                        // 0 = ephemeral (bind() returns it)
  std::string api_key;                    // non-empty: requests need "Authorization: Bearer KEY"
  std::string device = "cpu";
  int64_t max_batch = 8;               // rows decoded together
  int64_t max_queue = 256;             // waiting requests before 429 (Retry-After)
  int64_t max_batch_tokens = 0;        // cache slots the running rows may reserve (0: max_batch × context)
  double drain_seconds = 30;           // on SIGTERM: how long in-flight requests may finish
  int64_t disconnect_check_ms = 1000;  // non-streaming: past this, probe the client every interval
  size_t max_body_bytes = 1 << 20;     // larger bodies get 413
  int threads = 16;                    // HTTP worker threads (each streaming client holds one)
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

class Server {
 public:
  // Loads the model, tokenizer and module folders (mixed into one handle); throws
  // std::invalid_argument / ConfigError naming what cannot be loaded or mixed.
  explicit Server(ServeOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int bind();   // binds host:port, returns the port; throws std::runtime_error when it cannot
  void run();   // serves until stop() (call bind() first)
  void stop();  // ends running requests, stops listening; safe from any thread, idempotent
  // Refuses new requests (503), lets the running and waiting ones finish for up to
  // `seconds`, then stops; false when some were still running at the deadline.
  bool drain(double seconds);
  // The ids /v1/models lists: the base first, then the module sets by name.
  std::vector<std::string> model_ids() const;
  SchedulerStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace modula::serve
