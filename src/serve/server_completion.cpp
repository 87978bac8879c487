// POST /v1/completions and /v1/chat/completions: parse, resolve the model to a module set,
// submit n rows to the scheduler, and answer with one body or a stream of events.
#include <algorithm>
#include <memory>
#include <random>

#include "modula/text/stream_decoder.h"
#include "server_impl.h"

namespace modula::serve {
namespace {

using json = nlohmann::json;

// A choice's text as it is produced: detokenised incrementally, cut at the first stop string.
struct Output {
  Output(const text::Tokenizer& tok, std::vector<std::string> stops) : tok(tok), decoder(tok), stop(std::move(stops)) {}
  std::string add(int64_t id, const TokenLogprob& lp, bool want_logprobs) {
    ids.push_back(id);
    if (want_logprobs) {
      TokenLogprobs t{tok.decode({id}, false), lp.logprob, {}};
      for (const auto& [alt, v] : lp.top) t.top.emplace_back(tok.decode({alt}, false), v);
      logprobs.push_back(std::move(t));
    }
    return stop.push(decoder.push(id));
  }
  std::string end() {
    if (stop.stopped()) return {};
    auto out = stop.push(decoder.finish());
    return stop.stopped() ? out : out + stop.flush();
  }
  const text::Tokenizer& tok;
  text::StreamDecoder decoder;
  StopMatcher stop;
  std::vector<int64_t> ids;
  std::vector<TokenLogprobs> logprobs;
};

std::string finish_reason(const Generation& g, const Output& out) {
  if (out.stop.stopped()) return "stop";
  switch (g.finish()) {
    case Finish::Stop:
      return "stop";
    case Finish::Length:
      return "length";
    case Finish::Error:
      if (g.error().rfind("cannot load the module set", 0) == 0)
        throw ApiError(400, "[serve] " + g.error(), "model", "module_load_failed");
      throw ApiError(500, "[serve] generation failed: " + g.error(), {}, "generation_failed", "server_error");
    default:
      throw ApiError(503, "[serve] the request was cancelled: the server is shutting down", {}, "shutting_down",
                     "server_error");
  }
}

// Time to first token and between tokens, as the client sees them (choice 0).
struct Latency {
  Latency(Metrics& m, Clock::time_point t0) : metrics(m), last(t0) {}
  void token() {
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    first ? metrics.first_token(dt) : metrics.inter_token(dt);
    first = false;
    last = now;
  }
  Metrics& metrics;
  Clock::time_point last;
  bool first = true;
};

}  // namespace

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

std::string Server::Impl::module_of(const std::string& name) const {
  if (name == base_name) return kBaseAdapter;
  try {
    return pool->resolve(name);
  } catch (const PoolError& e) {
    throw ApiError(e.status, e.what(), "model", e.status == 404 ? "model_not_found" : "invalid_value");
  }
}

GenRequest Server::Impl::request_of(const CompletionRequest& r) const {
  GenRequest g;
  g.module = module_of(r.merge_spec.empty() ? r.model : r.merge_spec);
  g.prompt = prompt_of(r);
  g.logprobs = r.logprobs;
  auto& opt = g.options;
  opt.temperature = r.temperature;
  opt.top_p = r.top_p;
  opt.top_k = r.top_k;
  opt.seed = r.seed ? *r.seed : std::random_device{}();
  if (r.max_tokens) {
    opt.max_new_tokens = *r.max_tokens;
  } else {  // the rest of the context
    const int64_t virtual_tokens = g.module == kBaseAdapter ? 0 : pool->virtual_tokens(g.module);
    opt.max_new_tokens =
        std::max<int64_t>(1, scheduler->context_length() - static_cast<int64_t>(g.prompt.size()) - virtual_tokens);
  }
  if (!r.ignore_eos) opt.stop_ids = model->config().eos_token_ids;
  return g;
}

void Server::Impl::completion(const httplib::Request& req, httplib::Response& res, bool chat) {
  const auto t0 = Clock::now();
  try {
    if (draining) throw ApiError(503, "[serve] the server is shutting down", {}, "shutting_down", "server_error");
    auto r = parse_request(req.body, chat);
    std::vector<std::shared_ptr<Generation>> gens;
    try {
      auto g = request_of(r);
      for (int64_t i = 0; i < r.n; ++i) {
        auto gi = g;
        if (r.seed) gi.options.seed = *r.seed + static_cast<uint64_t>(i);
        if (!r.seed && i > 0) gi.options.seed = std::random_device{}();
        gens.push_back(scheduler->submit(std::move(gi)));
      }
    } catch (const QueueFull& e) {
      for (auto& g : gens) g->cancel();
      res.set_header("Retry-After", "1");
      const bool busy = std::string(e.what()).find("queue") != std::string::npos;
      throw ApiError(busy ? 429 : 503, e.what(), {}, busy ? "too_many_requests" : "shutting_down",
                     busy ? "rate_limit_error" : "server_error");
    } catch (const PoolError& e) {
      throw ApiError(e.status, e.what(), "model", e.status == 404 ? "model_not_found" : "invalid_value");
    } catch (const text::TokenizerError& e) {
      throw ApiError(400, e.what(), chat ? "messages" : "prompt");
    } catch (const std::invalid_argument& e) {
      for (auto& g : gens) g->cancel();
      const std::string what = e.what();
      const bool context = what.find("context") != std::string::npos || what.find("budget") != std::string::npos;
      throw ApiError(400, what, context ? "max_tokens" : (chat ? "messages" : "prompt"),
                     context ? "context_length_exceeded" : "invalid_value");
    }
    if (r.stream)
      stream(r, gens, t0, res);
    else
      respond(r, gens, t0, res);
  } catch (const ApiError& e) {
    send_error(res, e);
  }
  metrics.request(chat ? "chat_completions" : "completions", res.status < 0 ? 200 : res.status);
}

namespace {

// A non-streaming request's choices as they are produced; collect() may stop at a deadline
// and be called again.
struct Collector {
  Collector(const CompletionRequest& r, std::vector<std::shared_ptr<Generation>> gens, const text::Tokenizer& tok,
            Metrics& metrics, Clock::time_point t0)
      : r(r), gens(std::move(gens)), tok(tok), latency(metrics, t0) {}

  // True when every choice is done, false at the deadline; ApiError for a failed choice.
  bool collect(Clock::time_point deadline) {
    for (; current < gens.size(); ++current) {
      auto& g = gens[current];
      if (!out) {
        out = std::make_unique<Output>(tok, r.stop);
        choice = Choice{};
        choice.index = static_cast<int64_t>(current);
      }
      for (;;) {
        int64_t id = 0;
        TokenLogprob lp;
        const auto w = g->next_until(id, &lp, deadline);
        if (w == Generation::Wait::Timeout) return false;
        if (w == Generation::Wait::Ended) break;
        if (current == 0) latency.token();
        choice.text += out->add(id, lp, r.logprobs >= 0);
        if (out->stop.stopped()) {
          g->cancel();
          break;
        }
      }
      choice.text += out->end();
      choice.finish_reason = finish_reason(*g, *out);
      choice.token_ids = out->ids;
      choice.logprobs = std::move(out->logprobs);
      generated += static_cast<int64_t>(out->ids.size());
      choices.push_back(std::move(choice));
      out.reset();
    }
    return true;
  }
  void cancel() {
    for (auto& g : gens) g->cancel();
  }

  const CompletionRequest r;
  std::vector<std::shared_ptr<Generation>> gens;
  const text::Tokenizer& tok;
  Latency latency;
  size_t current = 0;
  std::unique_ptr<Output> out;
  Choice choice;
  std::vector<Choice> choices;
  int64_t generated = 0;
};

}  // namespace

// The body goes out when the choices are done. A client that leaves meanwhile is noticed by
// a probe: past --disconnect-check-ms the response turns chunked and writes a space (JSON
// allows leading whitespace) at that interval; a failed write cancels the rows. An error
// after that point arrives as an error body with status 200.
void Server::Impl::respond(const CompletionRequest& r, const std::vector<std::shared_ptr<Generation>>& gens,
                           Clock::time_point t0, httplib::Response& res) {
  auto c = std::make_shared<Collector>(r, gens, *tok, metrics, t0);
  const auto probe = std::chrono::milliseconds(o.disconnect_check_ms);
  const auto id = std::string(r.chat ? "chatcmpl-" : "cmpl-") + std::to_string(counter++);
  auto body = [this, c, id] {
    metrics.tokens(c->gens.front()->prompt_tokens(), c->generated);
    return wire(completion_body(c->r, id, now_seconds(), c->choices, c->gens.front()->prompt_tokens(), c->generated));
  };
  try {
    if (c->collect(Clock::now() + probe)) return res.set_content(body(), "application/json");
  } catch (...) {
    c->cancel();
    throw;
  }
  res.set_chunked_content_provider(
      "application/json",
      [this, c, body, probe](size_t, httplib::DataSink& sink) {
        std::string out;
        try {
          while (!c->collect(Clock::now() + probe))
            if (!sink.write(" ", 1)) {
              c->cancel();
              metrics.disconnect();
              return false;
            }
          out = body();
        } catch (const ApiError& e) {
          c->cancel();
          out = wire(error_body(e));
        }
        sink.write(out.data(), out.size());
        sink.done();
        return true;
      },
      [c](bool success) {
        if (!success) c->cancel();
      });
}

void Server::Impl::stream(const CompletionRequest& r, const std::vector<std::shared_ptr<Generation>>& gens,
                          Clock::time_point t0, httplib::Response& res) {
  const auto id = std::string(r.chat ? "chatcmpl-" : "cmpl-") + std::to_string(counter++);
  const auto created = now_seconds();
  auto cancel_all = [gens] {
    for (auto& g : gens) g->cancel();
  };
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, r, gens, id, created, t0, cancel_all](size_t, httplib::DataSink& sink) {
        auto send = [&](const json& j) {
          const auto event = "data: " + wire(j) + "\n\n";
          return sink.write(event.data(), event.size());
        };
        auto done = [&] {
          sink.write("data: [DONE]\n\n", 14);
          sink.done();
          return true;
        };
        Latency latency(metrics, t0);
        int64_t generated = 0;
        // The choices one after another (each row was decoded alongside the others).
        for (size_t i = 0; i < gens.size(); ++i) {
          const auto& g = gens[i];
          const auto index = static_cast<int64_t>(i);
          Output out(*tok, r.stop);
          bool first = true;
          int64_t offset = 0;
          TokenLogprob lp;
          for (int64_t token; g->next(token, &lp);) {
            if (i == 0) latency.token();
            auto piece = out.add(token, lp, r.logprobs >= 0);
            if (out.stop.stopped()) g->cancel();
            std::vector<TokenLogprobs> lps;
            if (r.logprobs >= 0) lps.push_back(out.logprobs.back());
            if ((!piece.empty() || first || !lps.empty()) &&
                !send(chunk_body(r, id, created, piece, std::nullopt, first, index, lps, offset))) {
              cancel_all();
              metrics.disconnect();
              return false;
            }
            for (const auto& t : lps) offset += static_cast<int64_t>(t.token.size());
            first = false;
            if (out.stop.stopped()) break;
          }
          auto tail = out.end();
          std::string reason;
          try {
            reason = finish_reason(*g, out);
          } catch (const ApiError& e) {  // the status is sent already: the error travels as an event
            cancel_all();
            send(error_body(e));
            return done();
          }
          if (!send(chunk_body(r, id, created, tail, reason, first, index))) {
            cancel_all();
            return false;
          }
          generated += static_cast<int64_t>(out.ids.size());
        }
        metrics.tokens(gens.front()->prompt_tokens(), generated);
        if (r.include_usage) {
          json usage = {{"id", id},
                        {"object", r.chat ? "chat.completion.chunk" : "text_completion"},
                        {"created", created},
                        {"model", r.model},
                        {"choices", json::array()},
                        {"usage", usage_body(gens.front()->prompt_tokens(), generated)}};
          if (!send(usage)) return false;
        }
        return done();
      },
      [cancel_all](bool success) {
        if (!success) cancel_all();
      });
}

}  // namespace modula::serve
