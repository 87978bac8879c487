// The strict conformance runner (issue 14): a case passes only when it compared something
// within the fixtures README's bar. Each test copies a real case into a temp folder and
// doctors one thing; the runner must FAIL it and name what it looked for.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "conformance/cases.h"
#include "modula/conformance.h"
#include "modula/io/safetensors.h"
#include "support/temp_dir.h"

using modula::CaseResult;
using modula::CaseStatus;
using modula::ConformanceOptions;
using modula::format;
using modula::run_case;
using modula::testing::fixture;
using modula::testing::TempDir;
namespace fs = modula::fs;
namespace io = modula::io;

namespace {

// The files of a fixture case folder (flat: model and adapter cases).
void copy_case(const std::string& from, const std::string& to) {
  fs::make_dirs(to);
  for (const char* name : {"case.json", "config.json", "generation_config.json", "model.safetensors",
                           "expected.safetensors", "adapter_config.json", "adapter_model.safetensors"}) {
    auto src = fs::join(from, name);
    if (fs::exists(src)) fs::copy_file(src, fs::join(to, name));
  }
}

nlohmann::json read_case_json(const std::string& dir) {
  std::ifstream in(fs::join(dir, "case.json"));
  return nlohmann::json::parse(in);
}

void write_case_json(const std::string& dir, const nlohmann::json& spec) {
  std::ofstream(fs::join(dir, "case.json")) << spec.dump(1);
}

// Loads expected.safetensors (private copies), lets `edit` change it, writes it back.
template <typename Edit>
void doctor_expected(const std::string& dir, Edit edit) {
  const auto path = fs::join(dir, "expected.safetensors");
  io::NamedTensors tensors;
  {
    auto f = io::SafetensorsFile::open(path);
    for (const auto& k : f.keys()) tensors.emplace_back(k, f.get(k).clone());
  }
  edit(tensors);
  io::save_safetensors(path, tensors);
}

torch::Tensor& tensor_named(io::NamedTensors& tensors, const std::string& name) {
  for (auto& [k, t] : tensors)
    if (k == name) return t;
  throw std::runtime_error("test: no tensor " + name);
}

// Flat index into logits [B,T,V] of the compared (mask 1) value with the smallest |want|,
// where the bar is the absolute 1e-4.
int64_t smallest_kept_logit(io::NamedTensors& tensors) {
  auto logits = tensor_named(tensors, "logits");
  auto mask = tensor_named(tensors, "attention_mask").to(torch::kBool).unsqueeze(-1).expand_as(logits);
  auto score = logits.abs().masked_fill(mask.logical_not(), std::numeric_limits<float>::infinity());
  return score.flatten().argmin().item<int64_t>();
}

void add_at(torch::Tensor& t, int64_t flat, float delta) {
  auto v = t.view({-1});
  v[flat] = v[flat].item<float>() + delta;
}

struct StrictModelCase : ::testing::Test {
  TempDir tmp;
  std::string dir = tmp / "gpt2";
  void SetUp() override { copy_case(fixture("hf/models/gpt2"), dir); }
};

void expect_fail(const CaseResult& r, std::initializer_list<std::string> words) {
  EXPECT_EQ(r.status, CaseStatus::Fail) << format(r);
  for (const auto& w : words) EXPECT_NE(r.detail.find(w), std::string::npos) << "'" << w << "' not in: " << r.detail;
}

TEST_F(StrictModelCase, UndoctoredCopyPasses) {
  auto r = run_case(dir);
  EXPECT_EQ(r.status, CaseStatus::Pass) << format(r);
  EXPECT_EQ(r.compared, 2);  // last_hidden_state and logits
  EXPECT_LT(r.max_abs_diff, 1e-5);
}

TEST_F(StrictModelCase, NothingComparableFails) {
  doctor_expected(dir, [](io::NamedTensors& t) {
    for (auto& [k, v] : t)
      if (k == "logits" || k == "last_hidden_state") k = "renamed_" + k;
  });
  expect_fail(run_case(dir), {"expected.safetensors", "logits", "last_hidden_state"});
}

TEST_F(StrictModelCase, NanInExpectedFails) {
  doctor_expected(dir, [](io::NamedTensors& t) {
    auto flat = smallest_kept_logit(t);
    tensor_named(t, "logits").view({-1})[flat] = std::nanf("");
  });
  auto r = run_case(dir);
  expect_fail(r, {"logits", "NaN/Inf", "expected"});
  EXPECT_TRUE(std::isinf(r.max_abs_diff));
}

TEST_F(StrictModelCase, InfInExpectedHiddenStateFails) {
  doctor_expected(dir, [](io::NamedTensors& t) {
    tensor_named(t, "last_hidden_state").select(-1, 0).fill_(std::numeric_limits<float>::infinity());
  });
  expect_fail(run_case(dir), {"last_hidden_state", "NaN/Inf"});
}

TEST_F(StrictModelCase, UnknownKindFails) {
  auto spec = read_case_json(dir);
  spec["kind"] = "modle";
  write_case_json(dir, spec);
  expect_fail(run_case(dir), {"unknown kind 'modle'", "model"});
}

TEST_F(StrictModelCase, MissingKindFails) {
  auto spec = read_case_json(dir);
  spec.erase("kind");
  write_case_json(dir, spec);
  expect_fail(run_case(dir), {"no string 'kind'"});
}

TEST_F(StrictModelCase, PerturbationOutsideToleranceFails) {
  doctor_expected(dir, [](io::NamedTensors& t) { add_at(tensor_named(t, "logits"), smallest_kept_logit(t), 2e-4f); });
  expect_fail(run_case(dir), {"logits", "1 value(s) outside"});
}

TEST_F(StrictModelCase, PerturbationInsideTolerancePasses) {
  doctor_expected(dir, [](io::NamedTensors& t) { add_at(tensor_named(t, "logits"), smallest_kept_logit(t), 5e-5f); });
  auto r = run_case(dir);
  EXPECT_EQ(r.status, CaseStatus::Pass) << format(r);
  EXPECT_GT(r.max_abs_diff, 4e-5);
}

TEST_F(StrictModelCase, CaseStatesItsOwnTolerance) {
  doctor_expected(dir, [](io::NamedTensors& t) { add_at(tensor_named(t, "logits"), smallest_kept_logit(t), 2e-4f); });
  auto spec = read_case_json(dir);
  spec["atol"] = 1e-3;
  write_case_json(dir, spec);
  EXPECT_EQ(run_case(dir).status, CaseStatus::Pass);
  spec["atol"] = -1;
  write_case_json(dir, spec);
  expect_fail(run_case(dir), {"atol"});
  spec["atol"] = "loose";
  write_case_json(dir, spec);
  expect_fail(run_case(dir), {"'atol' must be a number"});
}

TEST(StrictAdapterCase, MissingLogitsFails) {
  TempDir tmp;
  copy_case(fixture("hf/models/gpt2"), tmp / "models/gpt2");
  const auto dir = tmp / "adapters/gpt2-lora";
  copy_case(fixture("hf/adapters/gpt2-lora"), dir);
  EXPECT_EQ(run_case(dir).status, CaseStatus::Pass);
  doctor_expected(dir, [](io::NamedTensors& t) {
    t.erase(std::remove_if(t.begin(), t.end(), [](const auto& kv) { return kv.first == "logits"; }), t.end());
  });
  expect_fail(run_case(dir), {"no tensor 'logits'"});
}

// The bar itself: max(atol, rtol*|want|), NaN/Inf on the computed side, masked positions.
TEST(CaseCheck, ReadmeToleranceAndComputedNonFinite) {
  ConformanceOptions o;
  auto want = torch::tensor({1000.0, 1.0, 0.5});
  auto run = [&](const torch::Tensor& got, const torch::Tensor& mask = {}) {
    modula::CaseCheck c(o);
    c.compare(got, want, mask, "logits");
    return c.result();
  };
  EXPECT_EQ(run(want + torch::tensor({0.05, 0.0, 0.0})).status, CaseStatus::Pass);  // relative for large values
  EXPECT_EQ(run(want + torch::tensor({0.2, 0.0, 0.0})).status, CaseStatus::Fail);
  EXPECT_EQ(run(want + torch::tensor({0.0, 1.5e-4, 0.0})).status, CaseStatus::Fail);  // not atol + rtol*|want|
  EXPECT_EQ(run(want + torch::tensor({0.0, 0.0, 9e-5})).status, CaseStatus::Pass);
  auto nan = want.clone();
  nan[2] = std::nan("");
  expect_fail(run(nan), {"logits", "NaN/Inf in the computed tensor", "[2]"});
  auto mask = torch::tensor({1, 1, 0});  // a masked (padded) position is not compared
  EXPECT_EQ(run(nan, mask).status, CaseStatus::Pass);
  expect_fail(run(want, torch::zeros({3}, torch::kLong)), {"keeps no position"});
  EXPECT_EQ(modula::CaseCheck(o).result().status, CaseStatus::Fail);  // nothing compared
}

TEST(RunConformance, CountsCasesAndRejectsBadOptions) {
  TempDir tmp;
  EXPECT_THROW(modula::run_conformance(tmp.path), std::runtime_error);  // no case at all
  copy_case(fixture("hf/models/gpt2"), tmp / "models/gpt2");
  EXPECT_EQ(modula::run_conformance(tmp.path).size(), 1u);
  ConformanceOptions o;
  o.min_cases = 2;
  try {
    modula::run_conformance(tmp.path, o);
    ADD_FAILURE() << "expected a throw";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("1 case(s)"), std::string::npos) << e.what();
  }
  o = ConformanceOptions();
  o.atol = std::nan("");
  EXPECT_THROW(modula::run_conformance(tmp.path, o), std::invalid_argument);
}

TEST(RunConformance, EveryFixtureCasePassesNoneSkipped) {
  ConformanceOptions o;
  o.min_cases = 63;
  for (const auto& r : modula::run_conformance(fixture(""), o)) EXPECT_EQ(r.status, CaseStatus::Pass) << format(r);
}

}  // namespace
