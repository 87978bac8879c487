#include "modula/serve/openai.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "modula/util/json.h"

namespace modula::serve {

// Request bodies nest a few levels (messages[i].content parts, stream_options); far more is hostile.
constexpr int kOpenaiMaxDepth = 32;
namespace {

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& field, const std::string& msg) {
  throw ApiError(400, "'" + field + "' " + msg, field, "invalid_value");
}

// The field, or null when absent or explicitly null (clients send null for "unset").
const json& field(const json& b, const char* key) {
  static const json null;
  if (!b.is_object()) return null;
  auto it = b.find(key);
  return it == b.end() ? null : *it;
}

double number(const json& b, const char* key, double def, double lo, double hi) {
  const auto& v = field(b, key);
  if (v.is_null()) return def;
  if (!v.is_number()) bad(key, "must be a number, got " + v.dump());
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi)) bad(key, "must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " + v.dump());
  return x;
}

std::optional<int64_t> integer(const json& b, const char* key, int64_t lo) {
  const auto& v = field(b, key);
  if (v.is_null()) return std::nullopt;
  if (!v.is_number_integer()) bad(key, "must be an integer, got " + v.dump());
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    bad(key, "is too large: " + v.dump());
  const auto x = v.get<int64_t>();
  if (x < lo) bad(key, "must be >= " + std::to_string(lo) + ", got " + v.dump());
  return x;
}

bool boolean(const json& b, const char* key, bool def) {
  const auto& v = field(b, key);
  if (v.is_null()) return def;
  if (!v.is_boolean()) bad(key, "must be true or false, got " + v.dump());
  return v.get<bool>();
}

[[noreturn]] void unsupported(const std::string& key) {
  throw ApiError(400, "'" + key + "' is not supported by this server yet", key, "unsupported_parameter");
}

// Parameters we cannot honour yet: rejected unless absent or at their no-op value.
void reject_unsupported(const json& b, bool chat) {
  auto set = [&](const char* key) { return !field(b, key).is_null(); };
  if (set("echo") && field(b, "echo") != json(false)) unsupported("echo");
  if (set("best_of") && field(b, "best_of") != json(1)) unsupported("best_of");
  if (set("suffix") && field(b, "suffix") != json("")) unsupported("suffix");
  for (const char* key : {"presence_penalty", "frequency_penalty"})
    if (number(b, key, 0, -2, 2) != 0) unsupported(key);
  if (set("logit_bias") && !(field(b, "logit_bias").is_object() && field(b, "logit_bias").empty()))
    unsupported("logit_bias");
  if (set("tools") && !(field(b, "tools").is_array() && field(b, "tools").empty())) unsupported("tools");
  if (set("response_format") && field(field(b, "response_format"), "type") != json("text"))
    unsupported("response_format");
  if (!chat && set("messages")) bad("messages", "belongs to /v1/chat/completions; /v1/completions takes 'prompt'");
  if (chat && set("prompt")) bad("prompt", "belongs to /v1/completions; /v1/chat/completions takes 'messages'");
}

// merge: {"adapters": [names], "weights": [numbers] (default: equal), "method": "linear"} as
// the spec avg(a:w, ...): the weighted average of the adapters' deltas (weights normalised).
std::string merge_spec(const json& m) {
  if (!m.is_object()) bad("merge", "must be an object {adapters, weights, method}");
  const auto& adapters = field(m, "adapters");
  if (!adapters.is_array() || adapters.empty() || adapters.size() > 16)
    bad("merge.adapters", "must be an array of 1 to 16 served adapter names");
  const auto& weights = field(m, "weights");
  if (!weights.is_null() && (!weights.is_array() || weights.size() != adapters.size()))
    bad("merge.weights", "must be an array with one number per adapter");
  const auto& method = field(m, "method");
  if (!method.is_null() && method != json("linear"))
    throw ApiError(400,
                   "'merge.method' " + method.dump() +
                       ": only \"linear\" is merged per request (TIES, DARE: merge offline with modula merge-adapters)",
                   "merge.method", "unsupported_parameter");
  std::string spec = "avg(";
  for (size_t i = 0; i < adapters.size(); ++i) {
    if (!adapters[i].is_string() || adapters[i].get<std::string>().empty())
      bad("merge.adapters", "must hold adapter names, got " + adapters[i].dump());
    const auto name = adapters[i].get<std::string>();
    if (name.find_first_of("(),: ") != std::string::npos) bad("merge.adapters", "holds a name with '(),: ': " + name);
    spec += (i ? ", " : "") + name;
    if (!weights.is_null()) {
      if (!weights[i].is_number() || !(weights[i].get<double>() > 0) || !std::isfinite(weights[i].get<double>()))
        bad("merge.weights", "must hold positive finite numbers, got " + weights[i].dump());
      spec += ":" + json(weights[i].get<double>()).dump();
    }
  }
  return adapters.size() == 1 ? adapters[0].get<std::string>() : spec + ")";
}

std::vector<int64_t> token_ids(const json& v, const std::string& key) {
  std::vector<int64_t> ids;
  for (const auto& id : v) {
    if (!id.is_number_integer()) bad(key, "must be a string or an array of token ids; got the element " + id.dump());
    ids.push_back(id.get<int64_t>());
  }
  return ids;
}

void parse_prompt(const json& b, CompletionRequest& r) {
  const auto& p = field(b, "prompt");
  if (p.is_null()) bad("prompt", "is required");
  if (p.is_string()) {
    r.prompt_text = p.get<std::string>();
  } else if (p.is_array() && !p.empty() && p[0].is_string()) {
    if (p.size() != 1 || !p[0].is_string())
      throw ApiError(400,
                     "'prompt' holds " + std::to_string(p.size()) +
                         " prompts; one prompt per request is supported (send several requests)",
                     "prompt", "unsupported_parameter");
    r.prompt_text = p[0].get<std::string>();
  } else if (p.is_array() && !p.empty() && p[0].is_array()) {
    if (p.size() != 1)
      throw ApiError(400,
                     "'prompt' holds " + std::to_string(p.size()) + " prompts; one prompt per request is supported",
                     "prompt", "unsupported_parameter");
    r.prompt_ids = token_ids(p[0], "prompt");
  } else if (p.is_array()) {
    r.prompt_ids = token_ids(p, "prompt");
  } else {
    bad("prompt", "must be a string or an array of token ids, got " + p.dump());
  }
  if ((r.prompt_text && r.prompt_text->empty()) || (!r.prompt_text && r.prompt_ids.empty())) bad("prompt", "is empty");
}

void parse_messages(const json& b, CompletionRequest& r) {
  const auto& m = field(b, "messages");
  if (!m.is_array() || m.empty()) bad("messages", "must be a non-empty array of {role, content}");
  for (size_t i = 0; i < m.size(); ++i) {
    const auto key = "messages[" + std::to_string(i) + "]";
    if (!m[i].is_object()) bad(key, "must be an object {role, content}");
    const auto& role = field(m[i], "role");
    if (!role.is_string() || role.get<std::string>().empty()) bad(key + ".role", "must be a non-empty string");
    const auto& content = field(m[i], "content");
    ChatMessage msg{role.get<std::string>(), {}};
    if (content.is_string()) {
      msg.content = content.get<std::string>();
    } else if (content.is_array()) {  // content parts: text only
      for (const auto& part : content) {
        if (!part.is_object() || field(part, "type") != json("text") || !field(part, "text").is_string())
          bad(key + ".content", "parts other than {\"type\": \"text\", \"text\": ...} are not supported");
        msg.content += part["text"].get<std::string>();
      }
    } else {
      bad(key + ".content", "must be a string or an array of text parts, got " + content.dump());
    }
    r.messages.push_back(std::move(msg));
  }
}

}  // namespace

ApiError::ApiError(int status_, const std::string& message, std::string param_, std::string code_, std::string type_)
    : std::runtime_error(message),
      status(status_),
      param(std::move(param_)),
      code(std::move(code_)),
      type(std::move(type_)) {}

nlohmann::json error_body(const ApiError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type},
            {"param", e.param.empty() ? json() : json(e.param)},
            {"code", e.code.empty() ? json() : json(e.code)}}}};
}

CompletionRequest parse_request(const std::string& body, bool chat) {
  json b;
  try {
    b = parse_json(body, kOpenaiMaxDepth);  // copying and dumping recurse per level (util/json.h)
  } catch (const JsonTextError& e) {
    throw ApiError(400, std::string("the body is not valid JSON: ") + e.what(), {}, "invalid_json");
  }
  if (!b.is_object()) throw ApiError(400, "the body must be a JSON object", {}, "invalid_json");
  CompletionRequest r;
  r.chat = chat;
  const auto& model = field(b, "model");
  if (!model.is_string() || model.get<std::string>().empty()) bad("model", "must be a non-empty string");
  r.model = model.get<std::string>();
  reject_unsupported(b, chat);
  if (chat)
    parse_messages(b, r);
  else
    parse_prompt(b, r);
  r.max_tokens = integer(b, "max_tokens", 1);
  if (chat && !r.max_tokens) r.max_tokens = integer(b, "max_completion_tokens", 1);
  if (!chat && !r.max_tokens) r.max_tokens = 16;  // OpenAI's default for completions
  r.temperature = number(b, "temperature", 1.0, 0, 2);
  r.top_p = number(b, "top_p", 1.0, 0, 1);
  if (r.top_p == 0) bad("top_p", "must be in (0, 1], got 0");
  r.top_k = integer(b, "top_k", -1).value_or(0);
  if (r.top_k < 0) r.top_k = 0;
  if (const auto& s = field(b, "seed"); !s.is_null()) {
    if (!s.is_number_integer()) bad("seed", "must be an integer, got " + s.dump());
    r.seed = s.is_number_unsigned() ? s.get<uint64_t>() : static_cast<uint64_t>(s.get<int64_t>());
  }
  const auto& stop = field(b, "stop");
  if (stop.is_string()) {
    r.stop.push_back(stop.get<std::string>());
  } else if (stop.is_array()) {
    for (const auto& s : stop) {
      if (!s.is_string()) bad("stop", "must be a string or an array of strings, got the element " + s.dump());
      r.stop.push_back(s.get<std::string>());
    }
  } else if (!stop.is_null()) {
    bad("stop", "must be a string or an array of strings, got " + stop.dump());
  }
  if (r.stop.size() > 4) bad("stop", "holds " + std::to_string(r.stop.size()) + " strings; at most 4");
  if (std::any_of(r.stop.begin(), r.stop.end(), [](const std::string& s) { return s.empty(); }))
    bad("stop", "must not hold an empty string");
  r.stream = boolean(b, "stream", false);
  if (const auto& so = field(b, "stream_options"); !so.is_null()) {
    if (!r.stream) bad("stream_options", "is only allowed with \"stream\": true");
    if (!so.is_object()) bad("stream_options", "must be an object");
    r.include_usage = boolean(so, "include_usage", false);
  }
  r.add_special_tokens = boolean(b, "add_special_tokens", !chat);
  r.ignore_eos = boolean(b, "ignore_eos", false);
  r.return_token_ids = boolean(b, "return_token_ids", false);
  if (const auto& m = field(b, "merge"); !m.is_null()) r.merge_spec = merge_spec(m);
  r.n = integer(b, "n", 1).value_or(1);
  if (r.n > 16) bad("n", "must be at most 16, got " + std::to_string(r.n));
  if (chat) {
    const auto top = integer(b, "top_logprobs", 0);
    if (top && *top > 20) bad("top_logprobs", "must be at most 20, got " + std::to_string(*top));
    if (boolean(b, "logprobs", false))
      r.logprobs = top.value_or(0);
    else if (top)
      bad("top_logprobs", "needs \"logprobs\": true");
  } else if (const auto& lp = field(b, "logprobs"); !lp.is_null() && lp != json(false)) {
    const auto k = integer(b, "logprobs", 0);
    if (*k > 20) bad("logprobs", "must be at most 20, got " + std::to_string(*k));
    r.logprobs = *k;
  }
  return r;
}

std::string StopMatcher::push(const std::string& text) {
  if (stopped_) return {};
  held_ += text;
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    auto out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Keep the longest tail that a stop string begins with.
  size_t keep = 0;
  for (const auto& s : stops_)
    for (size_t l = std::min(s.size() - 1, held_.size()); l > keep; --l)
      if (held_.compare(held_.size() - l, l, s, 0, l) == 0) {
        keep = l;
        break;
      }
  auto out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  auto out = std::move(held_);
  held_.clear();
  return out;
}

nlohmann::json usage_body(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

nlohmann::json logprobs_body(const CompletionRequest& r, const std::vector<TokenLogprobs>& tokens, int64_t offset) {
  if (r.logprobs < 0) return nullptr;
  auto bytes = [](const std::string& t) { return std::vector<int>(t.begin(), t.end()); };
  if (r.chat) {
    json content = json::array();
    for (const auto& t : tokens) {
      json top = json::array();
      for (const auto& [tok, lp] : t.top) top.push_back({{"token", tok}, {"logprob", lp}, {"bytes", bytes(tok)}});
      content.push_back({{"token", t.token}, {"logprob", t.logprob}, {"bytes", bytes(t.token)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const auto& t : tokens) {
    out["tokens"].push_back(t.token);
    out["token_logprobs"].push_back(t.logprob);
    json top = json::object();
    for (const auto& [tok, lp] : t.top) top[tok] = lp;
    out["top_logprobs"].push_back(top);
    out["text_offset"].push_back(offset);
    offset += static_cast<int64_t>(t.token.size());
  }
  return out;
}

nlohmann::json completion_body(const CompletionRequest& r, const std::string& id, int64_t created,
                               const std::vector<Choice>& choices, int64_t prompt_tokens, int64_t completion_tokens) {
  json list = json::array();
  for (const auto& choice : choices) {
    json c = {{"index", choice.index},
              {"finish_reason", choice.finish_reason},
              {"logprobs", logprobs_body(r, choice.logprobs)}};
    if (r.chat)
      c["message"] = {{"role", "assistant"}, {"content", choice.text}};
    else
      c["text"] = choice.text;
    if (r.return_token_ids) c["token_ids"] = choice.token_ids;
    list.push_back(std::move(c));
  }
  return {{"id", id},           {"object", r.chat ? "chat.completion" : "text_completion"},
          {"created", created}, {"model", r.model},
          {"choices", list},    {"usage", usage_body(prompt_tokens, completion_tokens)}};
}

nlohmann::json chunk_body(const CompletionRequest& r, const std::string& id, int64_t created, const std::string& text,
                          const std::optional<std::string>& finish_reason, bool first, int64_t index,
                          const std::vector<TokenLogprobs>& logprobs, int64_t offset) {
  json c = {{"index", index},
            {"finish_reason", finish_reason ? json(*finish_reason) : json()},
            {"logprobs", logprobs_body(r, logprobs, offset)}};
  if (r.chat) {
    c["delta"] = json::object();
    if (first) c["delta"]["role"] = "assistant";
    if (!text.empty() || !finish_reason) c["delta"]["content"] = text;
  } else {
    c["text"] = text;
  }
  return {{"id", id},
          {"object", r.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", r.model},
          {"choices", json::array({c})}};
}

}  // namespace modula::serve
