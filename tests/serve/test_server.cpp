// `modula serve` in-process on an ephemeral loopback port, driven with httplib's client:
// models, completions equal to modula::generate for the same module, concurrent requests
// with different modules batched together, streaming, errors, shutdown.
#include <gtest/gtest.h>
#include <httplib.h>

#include <fstream>
#include <future>
#include <thread>

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/serve/server.h"
#include "modula/text/tokenizer.h"
#include "serve/serve_support.h"
#include "support/temp_dir.h"

using namespace modula;
using modula::testing::fixture;
using namespace modula::testing;
using json = nlohmann::json;

namespace {

const std::vector<int64_t> kPrompt = {5, 17, 42, 99, 7};

}  // namespace

TEST(Server, ListsTheBaseAndEveryAdapter) {
  Running r(options());
  auto c = r.client();
  auto res = c.Get("/v1/models");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  auto j = json::parse(res->body);
  std::vector<std::string> ids;
  for (const auto& m : j["data"]) ids.push_back(m["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{"llama", "lora", "ia3", "prefix"}));
  EXPECT_EQ(j["data"][1]["parent"], "llama");
}

TEST(Server, CompletionEqualsGenerateForEachModule) {
  Running r(options());
  auto c = r.client();
  auto tok = text::Tokenizer::from_file(fixture("hf/tokenizers/bytelevel-bpe.json"));
  std::vector<int64_t> base_ids;
  for (std::string m : {"llama", "lora", "ia3", "prefix"}) {
    auto j = post(c, "/v1/completions", body(m, kPrompt, 8).dump(), 200);
    const auto ids = j["choices"][0]["token_ids"].get<std::vector<int64_t>>();
    EXPECT_EQ(ids, alone(m == "llama" ? "" : m, kPrompt, 8)) << m;
    EXPECT_EQ(j["choices"][0]["text"], tok->decode(ids)) << m;
    EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_EQ(j["usage"]["prompt_tokens"], 5);
    EXPECT_EQ(j["usage"]["completion_tokens"], 8);
    EXPECT_EQ(j["usage"]["total_tokens"], 13);
    if (m == "llama")
      base_ids = ids;
    else
      EXPECT_NE(ids, base_ids) << m << " should differ from the base";
  }
}

TEST(Server, TextPromptAndStopString) {
  Running r(options());
  auto c = r.client();
  auto tok = text::Tokenizer::from_file(fixture("hf/tokenizers/bytelevel-bpe.json"));
  json b = body("lora", kPrompt, 12);
  const std::string full = post(c, "/v1/completions", b.dump(), 200)["choices"][0]["text"];
  // A stop string from the middle of the text, cut at UTF-8 character boundaries.
  auto boundary = [&](size_t i) {
    while (i < full.size() && (static_cast<unsigned char>(full[i]) & 0xC0) == 0x80) ++i;
    return i;
  };
  const size_t from = boundary(3), to = boundary(from + 1);
  ASSERT_LT(to, full.size());
  const std::string stop = full.substr(from, to - from);
  b["stop"] = stop;
  auto j = post(c, "/v1/completions", b.dump(), 200);
  EXPECT_EQ(j["choices"][0]["text"], full.substr(0, full.find(stop)));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  // A text prompt is tokenised with the served tokenizer (a text whose ids the tiny model knows).
  std::string text;
  for (std::string candidate : {"in re on", "se de", "in", "a"}) {
    const auto ids = tok->encode(candidate);
    if (std::all_of(ids.begin(), ids.end(), [](int64_t id) { return id < 512; })) {
      text = candidate;
      break;
    }
  }
  ASSERT_FALSE(text.empty());
  json t = body("lora", {}, 8);
  t["prompt"] = text;
  auto k = post(c, "/v1/completions", t.dump(), 200);
  EXPECT_EQ(k["choices"][0]["token_ids"].get<std::vector<int64_t>>(), alone("lora", tok->encode(text), 8));
}

TEST(Server, ConcurrentRequestsWithDifferentModulesEqualTheirAloneRuns) {
  Running r(options());
  const std::vector<std::string> models = {"lora", "ia3", "prefix", "llama", "lora", "prefix", "ia3", "llama"};
  std::vector<std::future<std::vector<int64_t>>> results;
  for (size_t i = 0; i < models.size(); ++i)
    results.push_back(std::async(std::launch::async, [&, i] {
      auto c = r.client();
      std::vector<int64_t> prompt(kPrompt.begin(), kPrompt.begin() + 2 + static_cast<int64_t>(i % 4));
      auto j = post(c, "/v1/completions", body(models[i], prompt, 12).dump(), 200);
      return j["choices"][0]["token_ids"].get<std::vector<int64_t>>();
    }));
  for (size_t i = 0; i < models.size(); ++i) {
    std::vector<int64_t> prompt(kPrompt.begin(), kPrompt.begin() + 2 + static_cast<int64_t>(i % 4));
    EXPECT_EQ(results[i].get(), alone(models[i] == "llama" ? "" : models[i], prompt, 12)) << "request " << i;
  }
  EXPECT_GT(r.server.stats().max_rows, 1);
}

TEST(Server, StreamingYieldsTheSameTextAndEndsWithDone) {
  Running r(options());
  auto c = r.client();
  json b = body("prefix", kPrompt, 10);
  const std::string want = post(c, "/v1/completions", b.dump(), 200)["choices"][0]["text"];
  b["stream"] = true;
  b["stream_options"] = {{"include_usage", true}};
  auto res = c.Post("/v1/completions", b.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  std::string got, finish, last;
  int64_t completion_tokens = -1;
  std::istringstream lines(res->body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("data: ", 0) != 0) continue;
    last = line.substr(6);
    if (last == "[DONE]") continue;
    auto j = json::parse(last);
    if (j.contains("usage")) completion_tokens = j["usage"]["completion_tokens"];
    if (j["choices"].empty()) continue;
    got += j["choices"][0]["text"].get<std::string>();
    if (!j["choices"][0]["finish_reason"].is_null()) finish = j["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(finish, "length");
  EXPECT_EQ(completion_tokens, 10);
  EXPECT_EQ(last, "[DONE]");
}

TEST(Server, BadRequestsGetClearErrors) {
  Running r(options());
  auto c = r.client();
  auto expect = [&](const std::string& text, int status, const std::string& needle) -> json {
    auto j = post(c, "/v1/completions", text, status);
    if (!j.contains("error")) {
      ADD_FAILURE() << text << " gave no error body";
      return j;
    }
    EXPECT_NE(j["error"]["message"].get<std::string>().find(needle), std::string::npos)
        << j.dump() << " should mention " << needle;
    return j;
  };
  expect("{not json", 400, "not valid JSON");
  expect("[1, 2]", 400, "JSON object");
  expect(R"({"model": "lora", "prompt": [1, 2], "max_tokens": "ten"})", 400, "max_tokens");
  expect(R"({"model": "lora", "prompt": [1, 2], "max_tokens": -3})", 400, "max_tokens");
  expect(R"({"model": "lora", "prompt": [1, 2], "temperature": "hot"})", 400, "temperature");
  expect(R"({"model": "lora", "prompt": {"a": 1}})", 400, "prompt");
  expect(R"({"model": "lora", "prompt": [1, 2], "n": 17})", 400, "'n'");
  expect(R"({"model": "lora", "prompt": [1, 100000]})", 400, "vocabulary");
  expect(R"({"prompt": [1, 2]})", 400, "model");
  auto j = expect(R"({"model": "nope", "prompt": [1, 2]})", 404, "nope");
  EXPECT_EQ(j["error"]["code"], "model_not_found");
  j = expect(R"({"model": "lora", "prompt": [1, 2], "max_tokens": 1000000})", 400, "context");
  EXPECT_EQ(j["error"]["code"], "context_length_exceeded");
  // Chat needs a template; the fixture model has none.
  auto k =
      post(c, "/v1/chat/completions", R"({"model": "lora", "messages": [{"role": "user", "content": "hi"}]})", 400);
  EXPECT_EQ(k["error"]["code"], "no_chat_template");
  post(c, "/v1/chat/completions", R"({"model": "lora", "messages": "hi"})", 400);
  auto big = post(c, "/v1/completions", std::string(2 << 20, ' '), 413);  // over max_body_bytes
  EXPECT_EQ(big["error"]["code"], "request_too_large");
  auto res = c.Get("/v1/nothing");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  EXPECT_EQ(json::parse(res->body)["error"]["code"], "unknown_url");
  // The server keeps serving.
  post(c, "/v1/completions", body("lora", kPrompt, 2).dump(), 200);
}

TEST(Server, ApiKeyIsChecked) {
  Running r(options("sekret"));
  auto c = r.client();
  auto j = post(c, "/v1/completions", body("lora", kPrompt, 2).dump(), 401);
  EXPECT_EQ(j["error"]["type"], "authentication_error");
  post(c, "/v1/completions", body("lora", kPrompt, 2).dump(), 401, {{"Authorization", "Bearer wrong"}});
  post(c, "/v1/completions", body("lora", kPrompt, 2).dump(), 200, {{"Authorization", "Bearer sekret"}});
  auto res = c.Get("/v1/models");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
}

TEST(Server, StartupErrorsNameTheProblem) {
  auto o = options();
  o.adapters = {"lora"};
  EXPECT_THROW(serve::Server s(o), std::invalid_argument);
  o = options();
  o.adapters = {"llama=" + fixture("hf/adapters/llama-lora")};  // the base's name
  EXPECT_THROW(serve::Server s(o), std::invalid_argument);
  o = options();
  o.max_batch = 0;
  EXPECT_THROW(serve::Server s(o), std::invalid_argument);
}

TEST(Server, StopsWhileRequestsRun) {
  auto r = std::make_unique<Running>(options());
  auto pending = std::async(std::launch::async, [&] {
    auto c = r->client();
    json b = body("lora", kPrompt, 240);
    return c.Post("/v1/completions", b.dump(), "application/json");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  r.reset();  // stop + join: must not hang
  auto res = pending.get();
  if (res) {
    EXPECT_TRUE(res->status == 200 || res->status == 503) << res->status;
  }
}

// Chat: the tokenizer folder's tokenizer_config.json template renders the messages; the
// reply equals the completion of the rendered text, streamed or not.
TEST(Server, ChatRendersTheTemplate) {
  modula::testing::TempDir dir;
  {
    std::ifstream in(fixture("hf/tokenizers/bytelevel-bpe.json"), std::ios::binary);
    std::ofstream(dir / "tokenizer.json", std::ios::binary) << in.rdbuf();
    json config = {{"chat_template",
                    "{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}"
                    "{% endfor %}{% if add_generation_prompt %} re{% endif %}"}};
    std::ofstream(dir / "tokenizer_config.json") << config.dump();
  }
  auto o = options();
  o.tokenizer = dir.path;
  Running r(o);
  auto c = r.client();
  json chat = {{"model", "ia3"},
               {"messages", {{{"role", "system"}, {"content", "in"}}, {{"role", "user"}, {"content", "se"}}}},
               {"max_tokens", 6},
               {"temperature", 0},
               {"ignore_eos", true}};
  auto j = post(c, "/v1/chat/completions", chat.dump(), 200);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  json completion = {{"model", "ia3"},   {"prompt", "in se re"},        {"max_tokens", 6},
                     {"temperature", 0}, {"add_special_tokens", false}, {"ignore_eos", true}};
  auto k = post(c, "/v1/completions", completion.dump(), 200);
  EXPECT_EQ(j["choices"][0]["message"]["content"], k["choices"][0]["text"]);
  EXPECT_EQ(j["usage"], k["usage"]);
  chat["stream"] = true;
  auto res = c.Post("/v1/chat/completions", chat.dump(), "application/json");
  ASSERT_TRUE(res);
  std::string got, role;
  std::istringstream lines(res->body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("data: {", 0) != 0) continue;
    auto d = json::parse(line.substr(6));
    EXPECT_EQ(d["object"], "chat.completion.chunk");
    const auto& delta = d["choices"][0]["delta"];
    if (delta.contains("role")) role = delta["role"];
    if (delta.contains("content")) got += delta["content"].get<std::string>();
  }
  EXPECT_EQ(role, "assistant");
  EXPECT_EQ(got, j["choices"][0]["message"]["content"]);
  EXPECT_NE(res->body.find("data: [DONE]"), std::string::npos);
}
