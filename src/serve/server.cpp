// `modula serve`: loading, the routes besides the completions (server_completion.cpp),
// dynamic modules, metrics, and the server's lifetime (bind, run, drain, stop).
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "modula/backbone/registry.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"
#include "server_impl.h"

namespace modula::serve {

using json = nlohmann::json;

namespace {
constexpr std::string_view kServerTag = "serve";

// Debian's compiled cpp-httplib listens with a backlog of 5: a burst of clients (32 at once)
// overflows it and connections are reset. listen() again on the bound socket (Linux
// updates the backlog) — the socket is found as the listening one on our port.
void raise_listen_backlog(int port) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return;
  while (auto* e = readdir(dir)) {
    const int fd = std::atoi(e->d_name);
    int listening = 0;
    socklen_t len = sizeof listening;
    if (fd <= 2 || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) continue;
    sockaddr_storage addr{};
    socklen_t alen = sizeof addr;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &alen) != 0) continue;
    int bound = -1;
    if (addr.ss_family == AF_INET) bound = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    if (addr.ss_family == AF_INET6) bound = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    if (bound == port) ::listen(fd, SOMAXCONN);
  }
  closedir(dir);
}

std::string last_component(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  auto slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}
}  // namespace

// Text on the wire: bytes that are not UTF-8 (a model may emit them) become U+FFFD.
std::string wire(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(wire(error_body(e)), "application/json");
}

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// tokenizer_config.json's chat_template (a string, or a list of {name, template}: "default"),
// bos/eos tokens (strings or {"content": ...}). Empty template when there is none.

ChatConfig read_chat_config(const std::string& dir) {
  ChatConfig c;
  const auto path = fs::join(dir, "tokenizer_config.json");
  if (!fs::exists(path)) return c;
  std::ifstream in(path);
  json j;
  try {
    j = parse_json(in);
  } catch (const JsonTextError& e) {
    throw_error<ConfigError>(kServerTag, path + ": not valid JSON: " + e.what());
  }
  auto token = [&](const char* key) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) return std::string();
    if (it->is_string()) return it->get<std::string>();
    if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
      return (*it)["content"].get<std::string>();
    throw_error<ConfigError>(kServerTag, path + ": '" + key + "' must be a string or {\"content\": string}");
  };
  c.bos = token("bos_token");
  c.eos = token("eos_token");
  const auto it = j.find("chat_template");
  if (it == j.end() || it->is_null()) return c;
  if (it->is_string()) {
    c.chat_template = it->get<std::string>();
  } else if (it->is_array()) {
    for (const auto& t : *it)
      if (t.is_object() && t.value("name", "") == "default" && t.contains("template") && t["template"].is_string())
        c.chat_template = t["template"].get<std::string>();
  }
  if (c.chat_template.empty()) throw_error<ConfigError>(kServerTag, path + ": 'chat_template' has no default template");
  return c;
}

void ServeOptions::validate() const {
  check(!model_dir.empty(), kServerTag, "model_dir (--model) is required");
  check(port >= 0 && port <= 65535, kServerTag, "port must be in [0, 65535] (got " + std::to_string(port) + ")");
  check(!host.empty(), kServerTag, "host must not be empty");
  check(max_body_bytes > 0, kServerTag, "max_body_bytes must be > 0");
  check(threads >= 1, kServerTag, "threads must be >= 1 (got " + std::to_string(threads) + ")");
  check(drain_seconds >= 0, kServerTag, "drain_seconds must be >= 0");
  check(disconnect_check_ms >= 1, kServerTag, "disconnect_check_ms must be >= 1");
  SchedulerOptions s;
  s.max_batch = max_batch;
  s.max_queue = max_queue;
  s.max_batch_tokens = max_batch_tokens;
  s.validate();
  PoolOptions p;
  p.max_resident = max_resident;
  p.adapter_dtype = adapter_dtype;
  p.validate();
}

void Server::Impl::load() {
  LoadOptions lo;
  lo.device = torch::Device(o.device);
  model = load_backbone(o.model_dir, lo);
  const auto tpath = o.tokenizer.empty() ? o.model_dir : o.tokenizer;
  tok = text::Tokenizer::from_file(tpath);
  chat = read_chat_config(fs::exists(fs::join(tpath, "tokenizer_config.json")) ? tpath : o.model_dir);
  base_name = o.name.empty() ? last_component(o.model_dir) : o.name;
  PoolOptions po;
  po.adapter_dirs = o.adapter_dirs;
  po.max_resident = o.max_resident;
  po.adapter_dtype = o.adapter_dtype;
  pool = std::make_unique<ModulePool>(*model, po);
  for (const auto& spec : o.adapters) {
    const auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      throw_error(kServerTag, "--adapter '" + spec + "': expected NAME=DIR");
    const auto name = spec.substr(0, eq);
    if (name == base_name)
      throw_error(kServerTag, "--adapter '" + spec + "': the name '" + name + "' is the base model's");
    try {
      pool->add(name, spec.substr(eq + 1));
    } catch (const PoolError& e) {
      throw_error(kServerTag, "--adapter '" + spec + "': " + e.what());
    }
  }
  SchedulerOptions so;
  so.max_batch = o.max_batch;
  so.max_queue = o.max_queue;
  so.max_batch_tokens = o.max_batch_tokens;
  scheduler = std::make_unique<Scheduler>(*model, pool.get(), so);
  // Each folder given at start must load and mix now (a clear startup error, not a 400 later).
  for (const auto& name : pool->names()) {
    try {
      scheduler->call([&] {
        if (pool->acquire(name)) pool->release(name);
      });
    } catch (const std::exception& e) {
      scheduler->stop();
      throw_error(kServerTag, "--adapter " + name + ": " + e.what());
    }
  }
}

bool Server::Impl::authorized(const httplib::Request& req) const {
  if (o.api_key.empty()) return true;
  return req.get_header_value("Authorization") == "Bearer " + o.api_key;
}

void Server::Impl::routes() {
  http.new_task_queue = [n = o.threads] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
  http.set_payload_max_length(o.max_body_bytes);
  http.set_tcp_nodelay(true);  // one event per token: no Nagle / delayed-ACK stalls (~40 ms each)
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.path.rfind("/v1/", 0) != 0 || authorized(req)) return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, ApiError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')", {},
                             "invalid_api_key", "authentication_error"));
    return httplib::Server::HandlerResponse::Handled;
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413)
      send_error(res, ApiError(413, "the request body is too large", {}, "request_too_large"));
    else if (res.status == 404)
      send_error(res, ApiError(404, "no route " + req.method + " " + req.path, {}, "unknown_url"));
    else
      send_error(res, ApiError(res.status, "HTTP " + std::to_string(res.status)));
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, "[serve] internal error: " + what, {}, "internal_error", "server_error"));
  });
  http.Post("/v1/completions",
            [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, false); });
  http.Post("/v1/chat/completions",
            [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, true); });
  admin_routes();
}

// GET /health, /metrics, /v1/models; POST /v1/load_lora_adapter, /v1/unload_lora_adapter.
void Server::Impl::admin_routes() {
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.status = draining ? 503 : 200;
    res.set_content(draining ? "draining\n" : "ok\n", "text/plain");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.prometheus(scheduler->stats(), pool->stats()), "text/plain; version=0.0.4");
  });
  http.Post("/v1/load_lora_adapter", [this](const httplib::Request& req, httplib::Response& res) {
    try {
      const auto b = json::parse(req.body, nullptr, false);
      if (!b.is_object() || !b.contains("lora_name") || !b["lora_name"].is_string() || !b.contains("lora_path") ||
          !b["lora_path"].is_string())
        throw ApiError(400, "the body must be {\"lora_name\": string, \"lora_path\": string}", {}, "invalid_value");
      const auto name = b["lora_name"].get<std::string>();
      if (name == base_name)
        throw ApiError(400, "'" + name + "' is the base model's name", "lora_name", "invalid_value");
      try {
        pool->add_allowed(name, b["lora_path"].get<std::string>());
      } catch (const PoolError& e) {
        throw ApiError(e.status, e.what(), "lora_path", "invalid_value");
      }
      try {  // load it now: a folder that cannot be served is this request's error
        scheduler->call([&] {
          if (pool->acquire(name)) pool->release(name);
        });
      } catch (const std::exception& e) {
        pool->remove(name);
        throw ApiError(400, std::string("cannot load '") + name + "': " + e.what(), "lora_path", "module_load_failed");
      }
      res.set_content("Success: module '" + name + "' added.\n", "text/plain");
    } catch (const ApiError& e) {
      send_error(res, e);
    }
    metrics.request("load_lora_adapter", res.status < 0 ? 200 : res.status);
  });
  http.Post("/v1/unload_lora_adapter", [this](const httplib::Request& req, httplib::Response& res) {
    try {
      const auto b = json::parse(req.body, nullptr, false);
      if (!b.is_object() || !b.contains("lora_name") || !b["lora_name"].is_string())
        throw ApiError(400, "the body must be {\"lora_name\": string}", {}, "invalid_value");
      try {
        pool->remove(b["lora_name"].get<std::string>());
      } catch (const PoolError& e) {
        throw ApiError(e.status, e.what(), "lora_name", "model_not_found");
      }
      res.set_content("Success: module '" + b["lora_name"].get<std::string>() + "' removed.\n", "text/plain");
    } catch (const ApiError& e) {
      send_error(res, e);
    }
    metrics.request("unload_lora_adapter", res.status < 0 ? 200 : res.status);
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json data = json::array();
    const auto created = now_seconds();
    data.push_back({{"id", base_name},
                    {"object", "model"},
                    {"created", created},
                    {"owned_by", "modula"},
                    {"root", o.model_dir},
                    {"parent", nullptr},
                    {"max_model_len", scheduler->context_length()}});
    for (const auto& n : pool->names())
      data.push_back({{"id", n},
                      {"object", "model"},
                      {"created", created},
                      {"owned_by", "modula"},
                      {"root", n},
                      {"parent", base_name},
                      {"max_model_len", scheduler->context_length()}});
    res.set_content(wire(json{{"object", "list"}, {"data", data}}), "application/json");
  });
}

Server::Server(ServeOptions options) : impl_(new Impl) {
  options.validate();
  impl_->o = std::move(options);
  impl_->load();
  impl_->routes();
}

Server::~Server() { stop(); }

int Server::bind() {
  auto& o = impl_->o;
  const int port =
      o.port == 0 ? impl_->http.bind_to_any_port(o.host) : (impl_->http.bind_to_port(o.host, o.port) ? o.port : -1);
  if (port < 0)
    throw_error<std::runtime_error>(kServerTag, "cannot listen on " + o.host + ":" + std::to_string(o.port) +
                                                    " (in use, or not an address of this machine)");
  raise_listen_backlog(port);
  return port;
}

void Server::run() {
  {
    std::lock_guard<std::mutex> lk(impl_->stop_mu);
    if (impl_->stopped) return;
    impl_->running = true;
  }
  impl_->http.listen_after_bind();
  impl_->run_done = true;
}

void Server::stop() {
  std::lock_guard<std::mutex> lk(impl_->stop_mu);
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->scheduler->stop();  // ends every request, so no handler waits on a token
  // httplib's stop() does nothing before listening has begun: wait for run() to get there.
  while (impl_->running && !impl_->http.is_running() && !impl_->run_done)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  impl_->http.stop();
}

bool Server::drain(double seconds) {
  impl_->draining = true;  // new requests get 503, /health says so
  const bool drained = impl_->scheduler->drain(seconds);
  stop();
  return drained;
}

std::vector<std::string> Server::model_ids() const {
  std::vector<std::string> ids{impl_->base_name};
  const auto names = impl_->pool->names();
  ids.insert(ids.end(), names.begin(), names.end());
  return ids;
}

SchedulerStats Server::stats() const { return impl_->scheduler->stats(); }

}  // namespace modula::serve
