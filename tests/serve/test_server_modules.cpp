// The served module sets beyond --adapter: compositions as `model`, --adapter-dir with a
// bounded resident set (LRU), load / unload at run time with path checks, n and logprobs,
// /metrics, /health, 429 on a full queue, and draining. Every answer is checked against
// the same request run alone.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <sstream>

#include "serve/serve_support.h"

using namespace modula;
using namespace modula::testing;
using json = nlohmann::json;

namespace {

const std::map<std::string, std::string> kFolders = {
    {"lora", fixture("hf/adapters/llama-lora")},     {"ia3", fixture("hf/adapters/llama-ia3")},
    {"prefix", fixture("hf/adapters/llama-prefix")}, {"a0", fixture("hf/adapters/llama-mixed/a0")},
    {"a1", fixture("hf/adapters/llama-mixed/a1")},   {"a2", fixture("hf/adapters/llama-mixed/a2")}};

// An adapter folder of copies (name → fixture folder) for --adapter-dir.
struct AdapterDir {
  TempDir dir;
  explicit AdapterDir(const std::vector<std::string>& names) {
    for (const auto& n : names) {
      fs::make_dirs(dir / n);
      for (const char* f : {"adapter_config.json", "adapter_model.safetensors"})
        fs::copy_file(fs::join(kFolders.at(n), f), fs::join(dir / n, f));
    }
  }
};

// A Prometheus counter or gauge without labels.
double metric(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  ADD_FAILURE() << name << " not in /metrics";
  return -1;
}

std::vector<int64_t> ids_of(const json& j, int i = 0) {
  return j["choices"][i]["token_ids"].get<std::vector<int64_t>>();
}

// w rounded as int8 storage rounds it: per row of the last dimension, to steps of max|w| / 127.
torch::Tensor int8_steps(const torch::Tensor& w) {
  auto step = w.abs().amax(-1, true) / 127.0;
  step = torch::where(step > 0, step, torch::ones_like(step));
  return torch::round(w / step) * step;
}

}  // namespace

// The issue's concurrency check: 32 parallel requests over 8 module sets (adapters and
// compositions, and the base) all succeed, each equals its request alone, and the batch mixed them.
TEST(ServerModules, ThirtyTwoRequestsOverEightSetsEqualTheirAloneRuns) {
  auto o = options();
  o.adapters = {};
  for (const auto& [n, d] : kFolders) o.adapters.push_back(n + "=" + d);
  o.max_batch = 16;
  Running r(o);
  const std::vector<std::string> models = {
      "lora", "ia3", "a0", "a1", "a2", "avg(a0:0.3, a2:0.7)", "stack(lora, a1)", "stack(prefix, a1)", "llama"};
  std::vector<std::future<json>> results;
  auto prompt_of = [](size_t i) { return std::vector<int64_t>{5 + static_cast<int64_t>(i % 7), 17, 42, 99}; };
  for (size_t i = 0; i < 32; ++i)
    results.push_back(std::async(std::launch::async, [&, i] {
      auto c = r.client();
      return post(c, "/v1/completions", body(models[i % models.size()], prompt_of(i), 10).dump(), 200);
    }));
  std::map<std::string, std::vector<int64_t>> seen;
  for (size_t i = 0; i < 32; ++i) {
    const auto& m = models[i % models.size()];
    const auto j = results[i].get();
    ASSERT_TRUE(j.contains("choices")) << "request " << i << " (" << m << "): " << j.dump();
    auto got = ids_of(j);
    // An adapter alone is the spec of its one name.
    const auto want = m == "llama" ? alone("", prompt_of(i), 10) : alone_spec(m, kFolders, prompt_of(i), 10);
    EXPECT_EQ(got, want) << "request " << i << " (" << m << ")";
    if (i < models.size()) seen[m] = got;
  }
  EXPECT_NE(seen["avg(a0:0.3, a2:0.7)"], seen["a0"]);
  EXPECT_NE(seen["stack(lora, a1)"], seen["lora"]);
  EXPECT_NE(seen["stack(prefix, a1)"], seen["stack(lora, a1)"]);
  auto c = r.client();
  auto res = c.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_GT(metric(res->body, "modula_mixed_steps_total"), 0);
  EXPECT_GE(metric(res->body, "modula_step_module_sets_max"), 4);
  EXPECT_GT(metric(res->body, "modula_decode_rows_total"), metric(res->body, "modula_decode_steps_total"));
  EXPECT_EQ(metric(res->body, "modula_time_to_first_token_seconds_count"), 32);
  EXPECT_GE(metric(res->body, "modula_generated_tokens_total"), 32 * 10);
}

TEST(ServerModules, AdapterDirServesByNameWithABoundedResidentSet) {
  AdapterDir dir({"lora", "a0", "a1", "a2"});
  auto o = options();
  o.adapters = {};
  o.adapter_dirs = {dir.dir.path};
  o.max_resident = 2;
  o.max_batch = 2;
  Running r(o);
  auto c = r.client();
  const std::vector<int64_t> prompt = {3, 9, 27};
  for (int round = 0; round < 2; ++round)
    for (std::string m : {"a0", "a1", "lora", "a2", "stack(a0, a2)"}) {
      auto j = post(c, "/v1/completions", body(m, prompt, 6).dump(), 200);
      EXPECT_EQ(ids_of(j), alone_spec(m, kFolders, prompt, 6)) << m << " round " << round;
    }
  auto res = c.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_LE(metric(res->body, "modula_resident_modules"), 2);
  EXPECT_GT(metric(res->body, "modula_module_evictions_total"), 0);
  // Names that are not folders of the adapter dir, or that climb out of it, are unknown.
  for (std::string m : {"nope", "../lora", "lora/..", "..", "/etc"}) {
    auto e = post(c, "/v1/completions", body(m, prompt, 2).dump(), 404);
    EXPECT_EQ(e["error"]["code"], "model_not_found") << m;
  }
  auto e = post(c, "/v1/completions", body("stack(a0, nope)", prompt, 2).dump(), 404);
  EXPECT_NE(e["error"]["message"].get<std::string>().find("nope"), std::string::npos);
  e = post(c, "/v1/completions", body("fuse(a0, a1)", prompt, 2).dump(), 400);
  EXPECT_NE(e["error"]["message"].get<std::string>().find("fusion"), std::string::npos);
  e = post(c, "/v1/completions", body("stack(a0,", prompt, 2).dump(), 400);
  EXPECT_EQ(e["error"]["param"], "model");
}

TEST(ServerModules, LoadAndUnloadAtRunTimeInsideTheAllowedFolderOnly) {
  AdapterDir dir({"lora"});
  TempDir outside;
  fs::make_dirs(outside / "evil");
  fs::copy_file(fs::join(kFolders.at("a1"), "adapter_config.json"), outside / "evil/adapter_config.json");
  fs::copy_file(fs::join(kFolders.at("a1"), "adapter_model.safetensors"), outside / "evil/adapter_model.safetensors");
  ASSERT_EQ(symlink((outside / "evil").c_str(), (dir.dir / "link").c_str()), 0);
  fs::make_dirs(dir.dir / "broken");
  std::ofstream(dir.dir / "broken/adapter_config.json") << "{\"peft_type\": \"LORA\", \"r\": ";
  auto o = options();
  o.adapter_dirs = {dir.dir.path};
  Running r(o);
  auto c = r.client();
  const std::vector<int64_t> prompt = {4, 8, 15, 16};
  auto load = [&](const std::string& name, const std::string& path, int status) {
    return post(c, "/v1/load_lora_adapter", json{{"lora_name", name}, {"lora_path", path}}.dump(), status);
  };
  load("fresh", dir.dir / "lora", 200);
  EXPECT_EQ(ids_of(post(c, "/v1/completions", body("fresh", prompt, 6).dump(), 200)), alone("lora", prompt, 6));
  auto models = c.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_NE(models->body.find("\"fresh\""), std::string::npos);
  // Traversal, a symlink out of the folder, an absolute path elsewhere: 400, nothing loaded.
  for (std::string p : {dir.dir / "../" + fs::filename(outside.path) + "/evil", dir.dir / "link", outside / "evil",
                        std::string("/etc")}) {
    auto e = load("bad", p, 400);
    EXPECT_NE(e["error"]["message"].get<std::string>().find("outside the allowed"), std::string::npos) << p;
  }
  post(c, "/v1/completions", body("bad", prompt, 2).dump(), 404);
  auto e = load("broken", dir.dir / "broken", 400);
  EXPECT_NE(e["error"]["message"].get<std::string>().find("adapter_config.json"), std::string::npos) << e.dump();
  load("fresh", dir.dir / "lora", 400);                            // the name is taken
  load("../x", dir.dir / "lora", 400);                             // not a name
  post(c, "/v1/load_lora_adapter", R"({"lora_name": "x"})", 400);  // no path
  post(c, "/v1/unload_lora_adapter", R"({"lora_name": "fresh"})", 200);
  post(c, "/v1/completions", body("fresh", prompt, 2).dump(), 404);  // gone
  post(c, "/v1/unload_lora_adapter", R"({"lora_name": "fresh"})", 404);
  // Still serving.
  EXPECT_EQ(ids_of(post(c, "/v1/completions", body("lora", prompt, 4).dump(), 200)), alone("lora", prompt, 4));
}

TEST(ServerModules, ChoicesAndLogprobs) {
  Running r(options());
  auto c = r.client();
  const std::vector<int64_t> prompt = {6, 7, 8};
  json b = body("lora", prompt, 5);
  b["n"] = 3;
  b["temperature"] = 1.0;
  b["seed"] = 11;
  auto j = post(c, "/v1/completions", b.dump(), 200);
  ASSERT_EQ(j["choices"].size(), 3u);
  EXPECT_EQ(j["usage"]["completion_tokens"], 15);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(j["choices"][i]["index"], i);
  EXPECT_EQ(post(c, "/v1/completions", b.dump(), 200)["choices"], j["choices"]);  // seeded: reproducible
  json one = b;
  one["n"] = 1;
  one["seed"] = 12;  // choice 1 is sampled with seed + 1
  EXPECT_EQ(ids_of(post(c, "/v1/completions", one.dump(), 200)), ids_of(j, 1));
  // Greedy with logprobs: each token is the best alternative, and the first one's
  // log-probability is the model's log-softmax at the prompt's last position.
  json g = body("lora", prompt, 4);
  g["logprobs"] = 3;
  auto k = post(c, "/v1/completions", g.dump(), 200);
  const auto& lp = k["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 4u);
  ASSERT_EQ(lp["top_logprobs"][0].size(), 3u);
  for (size_t t = 0; t < 4; ++t) {
    double best = -1e9;  // (alternatives that decode to the same text share one key)
    for (auto& [tok, v] : lp["top_logprobs"][t].items()) best = std::max(best, v.get<double>());
    EXPECT_GE(lp["token_logprobs"][t].get<double>(), best - 1e-6);
    if (lp["top_logprobs"][t].size() == 3) {
      EXPECT_NEAR(lp["token_logprobs"][t].get<double>(), best, 1e-6);
    }
    EXPECT_LE(lp["token_logprobs"][t].get<double>(), 0);
  }
  auto model = load_backbone(fixture("hf/models/llama"));
  auto a = load_module(*model, kFolders.at("lora"));
  BackboneInput in;
  in.input_ids = torch::tensor(prompt).view({1, -1});
  torch::NoGradGuard no_grad;
  auto want = torch::log_softmax(model->forward(in).logits[0][-1], 0).max().item<double>();
  EXPECT_NEAR(lp["token_logprobs"][0].get<double>(), want, 1e-4);
  json chat = {{"model", "lora"},
               {"messages", {{{"role", "user"}, {"content", "x"}}}},
               {"logprobs", true},
               {"top_logprobs", 2},
               {"max_tokens", 2}};
  post(c, "/v1/chat/completions", chat.dump(), 400);  // the fixture tokenizer has no chat template
}

// --adapter-dtype bfloat16 / int8: the served LoRA banks stored so. Each generated token's
// log-probability equals the model's carrying the adapter with its weights rounded to bf16
// (to int8 steps of max|row| / 127), and the first differs from the unrounded model's.
TEST(ServerModules, AdapterDtypeBfloat16AndInt8) {
  auto bad = options();
  bad.adapter_dtype = "bf16";
  try {
    bad.validate();
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("adapter_dtype: 'bf16' is not float32, bfloat16, float16 or int8"),
              std::string::npos)
        << e.what();
  }
  for (std::string dtype : {"bfloat16", "int8"}) {
    auto o = options();
    o.adapters = {"lora=" + kFolders.at("lora"), "a0=" + kFolders.at("a0"), "a2=" + kFolders.at("a2")};
    o.adapter_dtype = dtype;
    Running r(o);
    auto c = r.client();
    const std::vector<int64_t> prompt = {6, 7, 8};
    double largest = 0;
    for (std::string m : {"lora", "a0", "a2"}) {
      json g = body(m, prompt, 3);
      g["logprobs"] = 1;
      auto res = post(c, "/v1/completions", g.dump(), 200);
      auto lp = res["choices"][0]["logprobs"];
      const auto ids = ids_of(res);
      ASSERT_EQ(ids.size(), 3u) << m;
      // Every token's log-probability (the prompt's GEMMs, then two decode steps' BGMV kernel)
      // against one forward over prompt + the generated tokens.
      auto model = load_backbone(fixture("hf/models/llama"));
      auto a = load_module(*model, kFolders.at(m));
      std::vector<int64_t> seq = prompt;
      seq.insert(seq.end(), ids.begin(), ids.end() - 1);
      BackboneInput in;
      in.input_ids = torch::tensor(seq).view({1, -1});
      torch::NoGradGuard no_grad;
      auto logprob = [&](size_t t) {
        const auto at = static_cast<int64_t>(prompt.size() + t) - 1;
        return torch::log_softmax(model->forward(in).logits[0][at], 0)[ids[t]].item<double>();
      };
      const double exact = logprob(0);
      for (auto& p : a.parameters()) p.copy_(dtype == "int8" ? int8_steps(p) : p.to(torch::kBFloat16));
      for (size_t t = 0; t < ids.size(); ++t)
        EXPECT_NEAR(lp["token_logprobs"][t].get<double>(), logprob(t), 1e-4) << m << " " << dtype << " token " << t;
      largest = std::max(largest, std::abs(lp["token_logprobs"][0].get<double>() - exact));
    }
    EXPECT_GT(largest, 1e-4) << dtype;
  }
}

TEST(ServerModules, HealthMetricsQueueLimitAndDrain) {
  auto o = options();
  o.max_batch = 1;
  o.max_queue = 1;
  Running r(o);
  auto c = r.client();
  auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  // One running, one waiting: the rest of a burst gets 429 with Retry-After.
  std::vector<std::future<httplib::Result>> burst;
  for (int i = 0; i < 6; ++i)
    burst.push_back(std::async(std::launch::async, [&] {
      auto cc = r.client();
      return cc.Post("/v1/completions", body("lora", {1, 2, 3}, 150).dump(), "application/json");
    }));
  int ok = 0, limited = 0;
  for (auto& f : burst) {
    auto res = f.get();
    ASSERT_TRUE(res);
    if (res->status == 200) ++ok;
    if (res->status == 429) {
      ++limited;
      EXPECT_EQ(res->get_header_value("Retry-After"), "1");
      EXPECT_EQ(json::parse(res->body)["error"]["code"], "too_many_requests");
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(limited, 1);
  EXPECT_EQ(ok + limited, 6);
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("modula_requests_total{endpoint=\"completions\",status=\"429\"}"), std::string::npos);
  EXPECT_NE(m->body.find("modula_inter_token_latency_seconds_bucket{le=\"+Inf\"}"), std::string::npos);
  // Draining: the running request finishes; new ones and /health get 503.
  auto running = std::async(std::launch::async, [&] {
    auto cc = r.client();
    return cc.Post("/v1/completions", body("lora", {1, 2, 3}, 200).dump(), "application/json");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto drained = std::async(std::launch::async, [&] { return r.server.drain(30); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto late = c.Post("/v1/completions", body("lora", {1, 2}, 2).dump(), "application/json");
  if (late) {
    EXPECT_EQ(late->status, 503);
  }
  auto res = running.get();
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(json::parse(res->body)["usage"]["completion_tokens"], 200);
  EXPECT_TRUE(drained.get());
}

// LoRAX-style per-request merges: merge {adapters, weights} is the weighted average of the
// adapters' deltas, the same rows as the avg(...) composition spec.
TEST(ServerModules, PerRequestLinearMerge) {
  auto o = options();
  o.adapters = {};
  for (const auto& [n, d] : kFolders) o.adapters.push_back(n + "=" + d);
  Running r(o);
  auto c = r.client();
  const std::vector<int64_t> prompt = {9, 8, 7, 6};
  json b = body("llama", prompt, 6);
  b["merge"] = {{"adapters", {"a0", "a2"}}, {"weights", {0.3, 0.7}}, {"method", "linear"}};
  auto j = post(c, "/v1/completions", b.dump(), 200);
  EXPECT_EQ(ids_of(j), alone_spec("avg(a0:0.3, a2:0.7)", kFolders, prompt, 6));
  EXPECT_NE(ids_of(j), alone_spec("a0", kFolders, prompt, 6));
  b["merge"]["method"] = "ties";
  EXPECT_EQ(post(c, "/v1/completions", b.dump(), 400)["error"]["param"], "merge.method");
  b["merge"] = {{"adapters", {"a0", "nope"}}};
  EXPECT_EQ(post(c, "/v1/completions", b.dump(), 404)["error"]["code"], "model_not_found");
  b["merge"] = {{"adapters", {"a0", "a2"}}, {"weights", {1}}};
  EXPECT_EQ(post(c, "/v1/completions", b.dump(), 400)["error"]["param"], "merge.weights");
}

// Sends a request over a raw socket, reads up to `read` bytes of the answer, and hangs up.
void hang_up_after(int port, const std::string& body, size_t read) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const auto request =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  ASSERT_EQ(send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  std::string got(read, '\0');
  size_t n = 0;
  while (n < read) {
    const auto k = recv(fd, got.data() + n, read - n, 0);
    if (k <= 0) break;
    n += static_cast<size_t>(k);
  }
  if (read == 0) std::this_thread::sleep_for(std::chrono::milliseconds(30));
  close(fd);
}

// A client that leaves is noticed (streaming: at the next event; otherwise by the probe past
// disconnect_check_ms) and its row stops decoding long before max_tokens.
TEST(ServerModules, ClientsThatLeaveAreCancelled) {
  auto o = options();
  o.disconnect_check_ms = 5;
  Running r(o);
  int64_t disconnects = 0;
  for (bool stream : {false, true}) {
    json b = body("lora", {1, 2, 3}, 240);
    b["stream"] = stream;
    auto c = r.client();
    const double rows_before = metric(c.Get("/metrics")->body, "modula_decode_rows_total");
    hang_up_after(r.port, b.dump(), stream ? 300 : 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    auto m = c.Get("/metrics");
    ASSERT_TRUE(m);
    EXPECT_EQ(metric(m->body, "modula_client_disconnects_total"), ++disconnects) << (stream ? "stream" : "body");
    EXPECT_EQ(metric(m->body, "modula_batch_rows"), 0);
    EXPECT_LT(metric(m->body, "modula_decode_rows_total") - rows_before, 200) << "the row ran on";
  }
}
