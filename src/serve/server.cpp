#include "modula/serve/server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "modula/backbone/registry.h"
#include "modula/serve/chat_template.h"
#include "modula/serve/openai.h"
#include "modula/text/stream_decoder.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"

namespace modula::serve {
namespace {

using json = nlohmann::json;
constexpr std::string_view kTag = "serve";

// Text on the wire: bytes that are not UTF-8 (a model may emit them) become U+FFFD.
std::string wire(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(wire(error_body(e)), "application/json");
}

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string last_component(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  auto slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

// tokenizer_config.json's chat_template (a string, or a list of {name, template}: "default"),
// bos/eos tokens (strings or {"content": ...}). Empty template when there is none.
struct ChatConfig {
  std::string chat_template, bos, eos;
};

ChatConfig read_chat_config(const std::string& dir) {
  ChatConfig c;
  const auto path = fs::join(dir, "tokenizer_config.json");
  if (!fs::exists(path)) return c;
  std::ifstream in(path);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::parse_error& e) {
    throw_error<ConfigError>(kTag, path + ": not valid JSON: " + e.what());
  }
  auto token = [&](const char* key) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) return std::string();
    if (it->is_string()) return it->get<std::string>();
    if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
      return (*it)["content"].get<std::string>();
    throw_error<ConfigError>(kTag, path + ": '" + key + "' must be a string or {\"content\": string}");
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
  if (c.chat_template.empty()) throw_error<ConfigError>(kTag, path + ": 'chat_template' has no default template");
  return c;
}

// A request's text as it is produced: detokenised incrementally, cut at the first stop string.
struct Output {
  Output(const text::Tokenizer& tok, std::vector<std::string> stops) : decoder(tok), stop(std::move(stops)) {}
  std::string add(int64_t id) {
    ids.push_back(id);
    return stop.push(decoder.push(id));
  }
  std::string end() {
    if (stop.stopped()) return {};
    auto out = stop.push(decoder.finish());
    return stop.stopped() ? out : out + stop.flush();
  }
  text::StreamDecoder decoder;
  StopMatcher stop;
  std::vector<int64_t> ids;
};

std::string finish_reason(const Generation& g, const Output& out) {
  if (out.stop.stopped()) return "stop";
  switch (g.finish()) {
    case Finish::Stop:
      return "stop";
    case Finish::Length:
      return "length";
    case Finish::Error:
      throw ApiError(500, "[serve] generation failed: " + g.error(), {}, "generation_failed", "server_error");
    default:
      throw ApiError(503, "[serve] the request was cancelled: the server is shutting down", {}, "shutting_down",
                     "server_error");
  }
}

}  // namespace

void ServeOptions::validate() const {
  check(!model_dir.empty(), kTag, "model_dir (--model) is required");
  check(port >= 0 && port <= 65535, kTag, "port must be in [0, 65535] (got " + std::to_string(port) + ")");
  check(!host.empty(), kTag, "host must not be empty");
  check(max_body_bytes > 0, kTag, "max_body_bytes must be > 0");
  check(threads >= 1, kTag, "threads must be >= 1 (got " + std::to_string(threads) + ")");
  SchedulerOptions s;
  s.max_batch = max_batch;
  s.max_queue = max_queue;
  s.validate();
}

struct Server::Impl {
  ServeOptions o;
  std::shared_ptr<Backbone> model;
  std::unique_ptr<text::Tokenizer> tok;
  std::unique_ptr<Adapter> mixed;  // null: base model only
  std::vector<std::string> adapter_names;
  std::string base_name;
  ChatConfig chat;
  std::unique_ptr<Scheduler> scheduler;
  httplib::Server http;
  std::atomic<int64_t> counter{0};
  std::mutex stop_mu;
  bool stopped = false, running = false;  // under stop_mu
  std::atomic<bool> run_done{false};

  void load();
  void routes();
  bool authorized(const httplib::Request& req) const;
  std::string module_of(const std::string& model) const;
  std::vector<int64_t> prompt_of(const CompletionRequest& r) const;
  GenRequest request_of(const CompletionRequest& r) const;
  void completion(const httplib::Request& req, httplib::Response& res, bool chat);
  void respond(const CompletionRequest& r, std::shared_ptr<Generation> g, httplib::Response& res);
  void stream(const CompletionRequest& r, std::shared_ptr<Generation> g, httplib::Response& res);
};

void Server::Impl::load() {
  LoadOptions lo;
  lo.device = torch::Device(o.device);
  model = load_backbone(o.model_dir, lo);
  const auto tpath = o.tokenizer.empty() ? o.model_dir : o.tokenizer;
  tok = text::Tokenizer::from_file(tpath);
  chat = read_chat_config(fs::exists(fs::join(tpath, "tokenizer_config.json")) ? tpath : o.model_dir);
  base_name = o.name.empty() ? last_component(o.model_dir) : o.name;
  std::vector<std::pair<std::string, std::string>> dirs;
  for (const auto& spec : o.adapters) {
    const auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      throw_error(kTag, "--adapter '" + spec + "': expected NAME=DIR");
    const auto name = spec.substr(0, eq);
    if (name == base_name || name == kBaseAdapter ||
        std::find(adapter_names.begin(), adapter_names.end(), name) != adapter_names.end())
      throw_error(kTag, "--adapter '" + spec + "': the name '" + name + "' is already taken");
    adapter_names.push_back(name);
    dirs.emplace_back(name, spec.substr(eq + 1));
  }
  if (!dirs.empty()) mixed = std::make_unique<Adapter>(load_mixed(*model, dirs, "serve"));
  SchedulerOptions so;
  so.max_batch = o.max_batch;
  so.max_queue = o.max_queue;
  scheduler = std::make_unique<Scheduler>(*model, mixed.get(), so);
}

bool Server::Impl::authorized(const httplib::Request& req) const {
  if (o.api_key.empty()) return true;
  return req.get_header_value("Authorization") == "Bearer " + o.api_key;
}

std::string Server::Impl::module_of(const std::string& name) const {
  if (name == base_name) return kBaseAdapter;
  if (std::find(adapter_names.begin(), adapter_names.end(), name) != adapter_names.end()) return name;
  throw ApiError(404, "The model '" + name + "' does not exist (GET /v1/models lists the served models)", "model",
                 "model_not_found");
}

std::vector<int64_t> Server::Impl::prompt_of(const CompletionRequest& r) const {
  if (!r.chat) return r.prompt_text ? tok->encode(*r.prompt_text, r.add_special_tokens) : r.prompt_ids;
  if (chat.chat_template.empty())
    throw ApiError(400, "the model has no chat template (tokenizer_config.json 'chat_template'); use /v1/completions",
                   "messages", "no_chat_template");
  std::string text;
  try {
    text = render_chat_template(chat.chat_template, r.messages, chat.bos, chat.eos, /*add_generation_prompt=*/true);
  } catch (const std::invalid_argument& e) {
    throw ApiError(400, std::string("the model's chat template cannot be rendered: ") + e.what(), "messages",
                   "unsupported_chat_template");
  }
  return tok->encode(text, r.add_special_tokens);
}

GenRequest Server::Impl::request_of(const CompletionRequest& r) const {
  GenRequest g;
  g.module = module_of(r.model);
  g.prompt = prompt_of(r);
  auto& opt = g.options;
  opt.temperature = r.temperature;
  opt.top_p = r.top_p;
  opt.top_k = r.top_k;
  opt.seed = r.seed ? *r.seed : std::random_device{}();
  if (r.max_tokens) {
    opt.max_new_tokens = *r.max_tokens;
  } else {  // the rest of the context
    const int64_t virtual_tokens = mixed && mixed->input ? mixed->input->num_virtual_tokens() : 0;
    opt.max_new_tokens =
        std::max<int64_t>(1, scheduler->context_length() - static_cast<int64_t>(g.prompt.size()) - virtual_tokens);
  }
  if (!r.ignore_eos) opt.stop_ids = model->config().eos_token_ids;
  return g;
}

void Server::Impl::completion(const httplib::Request& req, httplib::Response& res, bool chat) {
  try {
    auto r = parse_request(req.body, chat);
    std::shared_ptr<Generation> g;
    try {
      g = scheduler->submit(request_of(r));
    } catch (const QueueFull& e) {
      res.set_header("Retry-After", "1");
      throw ApiError(503, e.what(), {}, "server_busy", "server_error");
    } catch (const text::TokenizerError& e) {
      throw ApiError(400, e.what(), chat ? "messages" : "prompt");
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      const bool context = what.find("context") != std::string::npos;
      throw ApiError(400, what, context ? "max_tokens" : (chat ? "messages" : "prompt"),
                     context ? "context_length_exceeded" : "invalid_value");
    }
    if (r.stream)
      stream(r, g, res);
    else
      respond(r, g, res);
  } catch (const ApiError& e) {
    send_error(res, e);
  }
}

void Server::Impl::respond(const CompletionRequest& r, std::shared_ptr<Generation> g, httplib::Response& res) {
  Output out(*tok, r.stop);
  Choice c;
  for (int64_t id; g->next(id);) {
    c.text += out.add(id);
    if (out.stop.stopped()) {
      g->cancel();
      break;
    }
  }
  c.text += out.end();
  c.finish_reason = finish_reason(*g, out);
  c.token_ids = out.ids;
  const auto id = std::string(r.chat ? "chatcmpl-" : "cmpl-") + std::to_string(counter++);
  res.set_content(
      wire(completion_body(r, id, now_seconds(), c, g->prompt_tokens(), static_cast<int64_t>(out.ids.size()))),
      "application/json");
}

void Server::Impl::stream(const CompletionRequest& r, std::shared_ptr<Generation> g, httplib::Response& res) {
  const auto id = std::string(r.chat ? "chatcmpl-" : "cmpl-") + std::to_string(counter++);
  const auto created = now_seconds();
  auto out = std::make_shared<Output>(*tok, r.stop);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [r, g, out, id, created](size_t, httplib::DataSink& sink) {
        auto send = [&](const json& j) {
          const auto event = "data: " + wire(j) + "\n\n";
          return sink.write(event.data(), event.size());
        };
        bool first = true;
        for (int64_t token; g->next(token);) {
          auto piece = out->add(token);
          if (out->stop.stopped()) g->cancel();
          if ((!piece.empty() || first) && !send(chunk_body(r, id, created, piece, std::nullopt, first))) {
            g->cancel();
            return false;
          }
          first = false;
          if (out->stop.stopped()) break;
        }
        auto tail = out->end();
        std::string reason;
        try {
          reason = finish_reason(*g, *out);
        } catch (const ApiError& e) {  // the status is sent already: the error travels as an event
          send(error_body(e));
          sink.write("data: [DONE]\n\n", 14);
          sink.done();
          return true;
        }
        json last = chunk_body(r, id, created, tail, reason, first);
        if (!send(last)) return false;
        if (r.include_usage) {
          json usage = {{"id", id},
                        {"object", last["object"]},
                        {"created", created},
                        {"model", r.model},
                        {"choices", json::array()},
                        {"usage", usage_body(g->prompt_tokens(), static_cast<int64_t>(out->ids.size()))}};
          if (!send(usage)) return false;
        }
        sink.write("data: [DONE]\n\n", 14);
        sink.done();
        return true;
      },
      [g](bool success) {
        if (!success) g->cancel();
      });
}

void Server::Impl::routes() {
  http.new_task_queue = [n = o.threads] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
  http.set_payload_max_length(o.max_body_bytes);
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
  http.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
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
    for (const auto& n : adapter_names)
      data.push_back({{"id", n},
                      {"object", "model"},
                      {"created", created},
                      {"owned_by", "modula"},
                      {"root", n},
                      {"parent", base_name},
                      {"max_model_len", scheduler->context_length()}});
    res.set_content(wire(json{{"object", "list"}, {"data", data}}), "application/json");
  });
  http.Post("/v1/completions",
            [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, false); });
  http.Post("/v1/chat/completions",
            [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, true); });
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
    throw_error<std::runtime_error>(kTag, "cannot listen on " + o.host + ":" + std::to_string(o.port) +
                                              " (in use, or not an address of this machine)");
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

std::vector<std::string> Server::model_ids() const {
  std::vector<std::string> ids{impl_->base_name};
  ids.insert(ids.end(), impl_->adapter_names.begin(), impl_->adapter_names.end());
  return ids;
}

SchedulerStats Server::stats() const { return impl_->scheduler->stats(); }

}  // namespace modula::serve
