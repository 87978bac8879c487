// Continuous batching: every request served in a batch (rows of different module types,
// joining and leaving mid-flight) equals that request run alone with modula::generate
// and its one module loaded on a fresh model.
#include <gtest/gtest.h>

#include <thread>

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/serve/scheduler.h"
#include "support/temp_dir.h"

using namespace modula;
using modula::testing::fixture;

namespace {

const std::vector<std::pair<std::string, std::string>>& module_dirs() {
  static const std::vector<std::pair<std::string, std::string>> dirs = {
      {"lora", fixture("hf/adapters/llama-lora")},
      {"ia3", fixture("hf/adapters/llama-ia3")},
      {"prefix", fixture("hf/adapters/llama-prefix")},
      {"a1", fixture("hf/adapters/llama-mixed/a1")},
  };
  return dirs;
}

std::string dir_of(const std::string& name) {
  for (const auto& [n, d] : module_dirs())
    if (n == name) return d;
  return {};
}

// The request alone: a fresh model, its one module (if any), modula::generate.
std::vector<int64_t> alone(const std::string& module, const std::vector<int64_t>& prompt, const GenerateOptions& o) {
  auto model = load_backbone(fixture("hf/models/llama"));
  Adapter a;
  if (module != kBaseAdapter) a = load_module(*model, dir_of(module));
  PrepareInput prepare = [&](BackboneInput& in) {
    KVCache unused;
    if (a.input) a.input->prepare(*model, in, unused);
  };
  return generate(*model, prompt, o, {}, prepare);
}

struct Served {
  Served() {
    for (const auto& [name, dir] : module_dirs()) pool.add(name, dir);
  }
  std::shared_ptr<Backbone> model = load_backbone(fixture("hf/models/llama"));
  serve::ModulePool pool{*model, {}};
};

GenerateOptions greedy(int64_t n) {
  GenerateOptions o;
  o.max_new_tokens = n;
  return o;
}

std::vector<int64_t> drain(serve::Generation& g) {
  std::vector<int64_t> out;
  for (int64_t id; g.next(id);) out.push_back(id);
  return out;
}

std::vector<int64_t> prompt_of(int64_t seed, int64_t length) {
  std::vector<int64_t> p;
  for (int64_t i = 0; i < length; ++i) p.push_back(3 + (seed * 37 + i * 11) % 500);
  return p;
}

}  // namespace

TEST(Scheduler, EachModuleAloneEqualsGenerate) {
  Served s;
  serve::Scheduler sched(*s.model, &s.pool);
  for (std::string m : {kBaseAdapter, std::string("lora"), std::string("ia3"), std::string("prefix")}) {
    serve::GenRequest r;
    r.prompt = prompt_of(1, 6);
    r.module = m;
    r.options = greedy(10);
    auto g = sched.submit(r);
    EXPECT_EQ(drain(*g), alone(m, r.prompt, r.options)) << m;
    EXPECT_EQ(g->finish(), serve::Finish::Length);
  }
}

TEST(Scheduler, MixedBatchRowsEqualTheirAloneRuns) {
  Served s;
  serve::SchedulerOptions so;
  so.max_batch = 8;
  serve::Scheduler sched(*s.model, &s.pool, so);
  const std::vector<std::string> modules = {"lora", "ia3", "prefix", kBaseAdapter, "a1", "prefix", "lora", "ia3"};
  std::vector<serve::GenRequest> reqs;
  std::vector<std::shared_ptr<serve::Generation>> gens;
  for (size_t i = 0; i < modules.size(); ++i) {
    serve::GenRequest r;
    r.prompt = prompt_of(static_cast<int64_t>(i), 3 + static_cast<int64_t>(i) % 5);  // lengths differ
    r.module = modules[i];
    r.options = greedy(6 + static_cast<int64_t>(i) % 4);
    reqs.push_back(r);
    gens.push_back(sched.submit(r));
  }
  for (size_t i = 0; i < reqs.size(); ++i)
    EXPECT_EQ(drain(*gens[i]), alone(reqs[i].module, reqs[i].prompt, reqs[i].options)) << "request " << i;
  const auto st = sched.stats();
  EXPECT_GT(st.max_rows, 1);
  EXPECT_GT(st.mixed_steps, 0);
}

// max_batch 2 with 6 requests of different lengths: rows join and leave while others decode.
TEST(Scheduler, RowsJoinAndLeaveMidFlight) {
  Served s;
  serve::SchedulerOptions so;
  so.max_batch = 2;
  serve::Scheduler sched(*s.model, &s.pool, so);
  std::vector<serve::GenRequest> reqs;
  std::vector<std::shared_ptr<serve::Generation>> gens;
  const std::vector<std::string> modules = {"prefix", "lora", kBaseAdapter, "ia3", "prefix", "a1"};
  for (size_t i = 0; i < modules.size(); ++i) {
    serve::GenRequest r;
    r.prompt = prompt_of(10 + static_cast<int64_t>(i), 2 + static_cast<int64_t>(i * 3) % 7);
    r.module = modules[i];
    r.options = greedy(3 + static_cast<int64_t>(i * 5) % 9);
    reqs.push_back(r);
    gens.push_back(sched.submit(r));
  }
  for (size_t i = 0; i < reqs.size(); ++i)
    EXPECT_EQ(drain(*gens[i]), alone(reqs[i].module, reqs[i].prompt, reqs[i].options)) << "request " << i;
  EXPECT_LE(sched.stats().max_rows, 2);
}

TEST(Scheduler, SeededSamplingEqualsGenerate) {
  Served s;
  serve::Scheduler sched(*s.model, &s.pool);
  GenerateOptions o = greedy(8);
  o.temperature = 0.9;
  o.top_k = 20;
  o.top_p = 0.95;
  o.seed = 1234;
  std::vector<std::shared_ptr<serve::Generation>> gens;
  for (std::string m : {"lora", "prefix"}) {
    serve::GenRequest r;
    r.prompt = prompt_of(7, 5);
    r.module = m;
    r.options = o;
    gens.push_back(sched.submit(r));
  }
  EXPECT_EQ(drain(*gens[0]), alone("lora", prompt_of(7, 5), o));
  EXPECT_EQ(drain(*gens[1]), alone("prefix", prompt_of(7, 5), o));
}

TEST(Scheduler, StopIdEndsTheRow) {
  Served s;
  serve::Scheduler sched(*s.model, &s.pool);
  serve::GenRequest r;
  r.prompt = prompt_of(3, 4);
  r.options = greedy(8);
  const auto full = drain(*sched.submit(r));
  ASSERT_EQ(full.size(), 8u);
  r.options.stop_ids = {full[2]};
  auto g = sched.submit(r);
  const auto cut = drain(*g);
  const auto first = std::find(full.begin(), full.end(), full[2]);
  EXPECT_EQ(cut, std::vector<int64_t>(full.begin(), first + 1));
  EXPECT_EQ(g->finish(), serve::Finish::Stop);
}

TEST(Scheduler, BadRequestsAreRejectedClearly) {
  Served s;
  serve::SchedulerOptions so;
  so.max_queue = 1;
  serve::Scheduler sched(*s.model, &s.pool, so);
  serve::GenRequest r;
  r.options = greedy(4);
  auto message = [&](serve::GenRequest req) {
    try {
      sched.submit(req);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(r).find("prompt is empty"), std::string::npos);
  r.prompt = {1, 999999};
  EXPECT_NE(message(r).find("outside the vocabulary"), std::string::npos);
  r.prompt = {1, 2};
  r.module = "nope";
  EXPECT_NE(message(r).find("nope"), std::string::npos);
  r.module = "lora";
  r.options.max_new_tokens = 100000;
  EXPECT_NE(message(r).find("context"), std::string::npos);
  r.options.max_new_tokens = 4;
  r.options.top_p = 0;
  EXPECT_NE(message(r).find("top_p"), std::string::npos);
  serve::SchedulerOptions bad;
  bad.max_batch = 0;
  EXPECT_THROW(bad.validate(), std::invalid_argument);
}

TEST(Scheduler, CancelledRowLeavesAndOthersContinue) {
  Served s;
  serve::Scheduler sched(*s.model, &s.pool);
  serve::GenRequest r;
  r.prompt = prompt_of(5, 4);
  r.module = "lora";
  r.options = greedy(200);
  auto long_run = sched.submit(r);
  int64_t id = 0;
  ASSERT_TRUE(long_run->next(id));
  long_run->cancel();
  while (long_run->next(id)) {
  }
  EXPECT_EQ(long_run->finish(), serve::Finish::Cancelled);
  r.options = greedy(5);
  r.module = "ia3";
  EXPECT_EQ(drain(*sched.submit(r)), alone("ia3", r.prompt, r.options));
}

TEST(Scheduler, StopEndsWaitingAndRunningRequests) {
  Served s;
  auto sched = std::make_unique<serve::Scheduler>(*s.model, &s.pool);
  serve::GenRequest r;
  r.prompt = prompt_of(2, 4);
  r.options = greedy(200);
  auto a = sched->submit(r), b = sched->submit(r);
  sched->stop();
  drain(*a);
  drain(*b);
  EXPECT_NE(a->finish(), serve::Finish::None);
  EXPECT_NE(b->finish(), serve::Finish::None);
  EXPECT_THROW(sched->submit(r), serve::QueueFull);
}
