// modula serve: the OpenAI-compatible server (docs/serving.md). Runs until SIGINT/SIGTERM.
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <iostream>
#include <thread>

#include "commands.h"
#include "flags.h"
#include "modula/serve/server.h"

namespace modula::cli {

void add_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server; each request picks its module set by name");
  static serve::ServeOptions o;
  flags::model(*cmd, o.model_dir)->required();
  cmd->add_option("--adapter,-a", o.adapters, "NAME=DIR: a module folder served as model NAME; repeatable");
  cmd->add_option("--adapter-dir", o.adapter_dirs,
                  "Folder whose module subfolders are served by name, loaded on first use; repeatable. Paths sent to "
                  "/v1/load_lora_adapter must lie inside one");
  cmd->add_option("--max-resident", o.max_resident, "Module sets in the model at once (least recently used leave)")
      ->capture_default_str();
  cmd->add_option("--adapter-dtype", o.adapter_dtype,
                  "Store the served LoRA weights as float32, bfloat16, float16 or int8 (default: the model's dtype); "
                  "bfloat16 halves their memory and what each decode step reads, int8 (one scale per row) "
                  "quarters it");
  cmd->add_option("--max-batch-tokens", o.max_batch_tokens,
                  "Cache slots the running rows may reserve together (0 = max-batch x context)")
      ->capture_default_str();
  cmd->add_option("--drain-seconds", o.drain_seconds, "On SIGTERM/SIGINT: time for running requests to finish")
      ->capture_default_str();
  cmd->add_option("--disconnect-check-ms", o.disconnect_check_ms,
                  "Non-streaming requests running longer: probe the client at this interval, cancel if it left")
      ->capture_default_str();
  cmd->add_option("--tokenizer,-t", o.tokenizer, "Tokenizer file or folder (default: the model folder)");
  cmd->add_option("--name", o.name, "The base model's id (default: the model folder's name)");
  cmd->add_option("--host", o.host, "Address to listen on (loopback by default)")->capture_default_str();
  cmd->add_option("--port", o.port, "Port (0 = any free port)")->capture_default_str();
  cmd->add_option("--api-key", o.api_key, "Require 'Authorization: Bearer KEY'");
  cmd->add_option("--max-batch", o.max_batch, "Rows decoded together")->capture_default_str();
  cmd->add_option("--max-queue", o.max_queue, "Waiting requests before 429")->capture_default_str();
  flags::device(*cmd, o.device)->capture_default_str();
  cmd->callback([] {
    // SIGINT/SIGTERM write to a pipe (async-signal-safe); a watcher thread stops the server.
    static int wake[2] = {-1, -1};
    if (pipe(wake) != 0) throw std::runtime_error("[serve] cannot create the signal pipe");
    struct sigaction sa {};
    sa.sa_handler = [](int) {
      const char c = 1;
      [[maybe_unused]] auto n = write(wake[1], &c, 1);
    };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    serve::Server server(o);
    const int port = server.bind();
    std::cerr << "modula serve: http://" << o.host << ":" << port << "/v1 (models:";
    for (const auto& id : server.model_ids()) std::cerr << " " << id;
    std::cerr << ")" << std::endl;
    std::thread watcher([&] {  // the first signal drains, a second one stops at once
      char c = 0;
      while (read(wake[0], &c, 1) < 0 && errno == EINTR) {
      }
      if (c == 0) return server.stop();  // run() ended on its own
      std::cerr << "modula serve: draining (up to " << o.drain_seconds << " s; signal again to stop now)" << std::endl;
      std::thread second([&] {
        char d = 0;
        while (read(wake[0], &d, 1) < 0 && errno == EINTR) {
        }
        if (d != 0) server.stop();  // 0: main is past run() and owns the server's end
      });
      second.detach();
      if (!server.drain(o.drain_seconds)) std::cerr << "modula serve: requests still running were ended" << std::endl;
    });
    server.run();
    const char c = 0;  // run() may end on its own: wake the watcher either way
    [[maybe_unused]] auto n = write(wake[1], &c, 1);
    watcher.join();
    std::cerr << "modula serve: stopped" << std::endl;
  });
}

}  // namespace modula::cli
