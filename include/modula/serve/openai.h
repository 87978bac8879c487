// The OpenAI wire format of `modula serve` (no torch, no HTTP): request parsing with one
// clear error per bad field, error bodies, response and stream-chunk bodies, and stop
// strings matched across token boundaries.
//
//   auto req = modula::serve::parse_request(body, /*chat=*/false);   // throws ApiError
//   modula::serve::StopMatcher stop(req.stop);
//   out += stop.push(piece);  if (stop.stopped()) ...;  out += stop.flush();
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace modula::serve {

// An error the client gets as {"error": {"message", "type", "param", "code"}} with `status`.
struct ApiError : std::runtime_error {
  ApiError(int status, const std::string& message, std::string param = {}, std::string code = {},
           std::string type = "invalid_request_error");
  int status;
  std::string param, code, type;
};
nlohmann::json error_body(const ApiError& e);

struct ChatMessage {
  std::string role, content;
};

// A parsed /v1/completions or /v1/chat/completions body. Sampling defaults are OpenAI's.
struct CompletionRequest {
  bool chat = false;
  std::string model;
  std::optional<std::string> prompt_text;  // completions: a string prompt
  std::vector<int64_t> prompt_ids;         // completions: a token-id prompt (used as is)
  std::vector<ChatMessage> messages;       // chat
  std::optional<int64_t> max_tokens;       // absent: completions 16, chat the rest of the context
  double temperature = 1.0;                // 0 = greedy
  double top_p = 1.0;
  int64_t top_k = 0;  // 0 or -1 = off (vLLM's extension)
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;  // at most 4, none empty
  bool stream = false;
  bool include_usage = false;      // stream_options.include_usage
  bool add_special_tokens = true;  // vLLM's extension; chat default false (the template has them)
  bool ignore_eos = false;         // vLLM's extension
  bool return_token_ids = false;   // modula's extension: "token_ids" per choice
  // LoRAX-style per-request merge {"adapters": [...], "weights": [...], "method": "linear"}: the
  // composition spec it stands for ("avg(a:0.7, b:0.3)"), empty when absent.
  std::string merge_spec;
  int64_t n = 1;          // choices, each sampled on its own (seed + index when seeded)
  int64_t logprobs = -1;  // >= 0: per-token log-probabilities with this many alternatives
                          // (completions: "logprobs": k; chat: "logprobs": true, "top_logprobs": k)
};

// Throws ApiError(400) naming the field for malformed JSON, a wrong type, a value out of
// range, or a parameter this server does not support yet (echo, penalties, tools, ...).
CompletionRequest parse_request(const std::string& body, bool chat);

// Holds back text that may begin a stop string; once one appears, returns the text before
// it and reports stopped().
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  std::string push(const std::string& text);  // newly final text
  std::string flush();                        // what is still held back (no stop came)
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

// One generated token's log-probability and the best alternatives, as text.
struct TokenLogprobs {
  std::string token;
  double logprob = 0;
  std::vector<std::pair<std::string, double>> top;
};

// One choice's result.
struct Choice {
  int64_t index = 0;
  std::string text;
  std::string finish_reason;  // "stop" or "length"
  std::vector<int64_t> token_ids;
  std::vector<TokenLogprobs> logprobs;  // one per token when the request asked for them
};

// The "logprobs" object of a choice or chunk in the endpoint's format (null when the
// request did not ask); text_offset counts bytes from `offset` (completions).
nlohmann::json logprobs_body(const CompletionRequest& r, const std::vector<TokenLogprobs>& tokens, int64_t offset = 0);
// Full response bodies ("text_completion" / "chat.completion"), one choice per entry.
nlohmann::json completion_body(const CompletionRequest& r, const std::string& id, int64_t created,
                               const std::vector<Choice>& choices, int64_t prompt_tokens, int64_t completion_tokens);
// One server-sent event's JSON ("text_completion" / "chat.completion.chunk") for choice
// `index`: `text` as the delta, finish_reason null unless given; `first` adds the assistant
// role (chat); `logprobs` of the chunk's tokens when asked for.
nlohmann::json chunk_body(const CompletionRequest& r, const std::string& id, int64_t created, const std::string& text,
                          const std::optional<std::string>& finish_reason, bool first, int64_t index = 0,
                          const std::vector<TokenLogprobs>& logprobs = {}, int64_t offset = 0);
nlohmann::json usage_body(int64_t prompt_tokens, int64_t completion_tokens);

}  // namespace modula::serve
