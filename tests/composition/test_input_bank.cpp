// Input banks: prompts / prefixes routed per row; every row equals that row run alone.
#include <gtest/gtest.h>

#include "modula/backbone/registry.h"
#include "modula/composition/input_bank.h"
#include "modula/composition/registry.h"
#include "support/errors.h"
#include "support/temp_dir.h"

using namespace modula;
using modula::testing::error_of;
using modula::testing::fixture;
using modula::testing::TempDir;
using Modules = std::vector<std::shared_ptr<InputModule>>;

namespace {

constexpr double kTol = 1e-5;

std::shared_ptr<Backbone> load(const std::string& arch) { return load_backbone(fixture("hf/models/" + arch)); }

// Rows of T tokens; left padding on rows 1 and 2, token types on encoders.
BackboneInput batch(const Backbone& model, int64_t rows, int64_t T, bool token_types = false) {
  torch::manual_seed(3);
  BackboneInput in;
  in.input_ids = torch::randint(3, model.config().vocab_size, {rows, T}, torch::kInt64);
  in.attention_mask = torch::ones({rows, T}, torch::kInt64);
  in.attention_mask.index_put_({1, torch::indexing::Slice(0, 2)}, 0);
  if (rows > 2) in.attention_mask.index_put_({2, 0}, 0);
  if (token_types)
    in.token_type_ids = (torch::arange(T, torch::kInt64) >= T / 2).to(torch::kInt64).expand({rows, T}).clone();
  return in;
}

BackboneInput row(const BackboneInput& in, int64_t n) {
  BackboneInput r;
  r.input_ids = in.input_ids.slice(0, n, n + 1);
  r.attention_mask = in.attention_mask.slice(0, n, n + 1);
  if (in.token_type_ids.defined()) r.token_type_ids = in.token_type_ids.slice(0, n, n + 1);
  return r;
}

// Logits of one row run alone with module m (null: the backbone alone), real tokens only.
torch::Tensor alone(Backbone& model, const std::shared_ptr<InputModule>& m, const BackboneInput& r) {
  const int64_t T = r.input_ids.size(1);
  auto out = m ? forward_with(model, {m}, r).logits : model.forward(r).logits;
  return out.dim() == 3 ? out.narrow(1, out.size(1) - T, T) : out;
}

// Max |a - b| over the attended tokens ([1, T, V]) or over all ([1, L]).
double diff(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& mask) {
  auto d = (a - b).abs();
  if (d.dim() == 3) d = d * mask.unsqueeze(-1).to(d.dtype());
  return d.max().item<double>();
}

// The bank's output for `in` with row ids `ids`, each row checked against running it alone.
void expect_rows_alone(Backbone& model, InputBank& bank, const Modules& modules, const std::vector<int64_t>& ids,
                       const BackboneInput& in, const std::string& what) {
  bank->context->set(bank->options.key(), torch::tensor(ids, torch::kInt64));
  torch::NoGradGuard no_grad;
  auto out = forward_with(model, {bank.ptr()}, in).logits;
  auto got = out.dim() == 3 ? bank->real_tokens(model, out) : out;
  ASSERT_EQ(got.size(0), in.input_ids.size(0)) << what;
  if (out.dim() == 3) {
    ASSERT_EQ(got.size(1), in.input_ids.size(1)) << what;
  }
  for (size_t n = 0; n < ids.size(); ++n) {
    auto r = row(in, static_cast<int64_t>(n));
    auto want = alone(model, ids[n] < 0 ? nullptr : modules[static_cast<size_t>(ids[n])], r);
    EXPECT_LE(diff(got.slice(0, n, n + 1), want, r.attention_mask), kTol)
        << what << " row " << n << " (module " << ids[n] << ")";
    if (ids[n] >= 0) {  // the module changes the row: the comparison is not vacuous
      EXPECT_GT(diff(want, alone(model, nullptr, r), r.attention_mask), 1e-3) << what << " row " << n;
    }
  }
}

std::shared_ptr<InputModule> fixture_module(Backbone& model, const std::string& name) {
  return load_adapter(model, fixture("hf/adapters/" + name)).input;
}

std::shared_ptr<InputModule> random_prompt(Backbone& model, int64_t n, uint64_t seed) {
  return std::make_shared<PromptTuningImpl>(PromptTuningOptions(n, model.config().hidden_size).seed(seed), model);
}

std::shared_ptr<InputModule> random_prefix(Backbone& model, int64_t n, bool projection = false) {
  const auto& c = model.config();
  auto o = PrefixTuningOptions(n, c.num_hidden_layers, c.num_key_value_heads, c.head_dim);
  if (projection) o.projection(true).encoder_hidden(16);
  return std::make_shared<PrefixTuningImpl>(o);
}

InputBank make_bank(const Modules& modules) { return InputBank(modules, std::make_shared<RoutingContext>()); }

const std::vector<std::string> kDecoders = {"llama", "gpt2", "qwen2", "mistral"};
const std::vector<int64_t> kIds = {0, 1, -1, 2, 1};  // padding on rows 1 (module 1) and 2 (none)

}  // namespace

TEST(InputBank, PromptRowsEqualEachRowAloneOnDecoders) {
  for (const auto& arch : kDecoders) {
    auto model = load(arch);
    // Fixture prompt (5 tokens), a shorter and a longer random one: P = 7.
    Modules modules = {fixture_module(*model, arch + "-prompt"), random_prompt(*model, 2, 11),
                       random_prompt(*model, 7, 12)};
    auto bank = make_bank(modules);
    EXPECT_EQ(bank->num_virtual_tokens(), 7);
    EXPECT_EQ(bank->kind(), InputBankImpl::Kind::Prompt);
    expect_rows_alone(*model, bank, modules, kIds, batch(*model, 5, 6), arch);
  }
}

TEST(InputBank, PrefixRowsEqualEachRowAloneOnDecoders) {
  for (const auto& arch : kDecoders) {
    auto model = load(arch);
    torch::manual_seed(5);
    // Fixture prefix (4 tokens), a shorter one and a longer reparameterised one (MLP).
    Modules modules = {fixture_module(*model, arch + "-prefix"), random_prefix(*model, 2),
                       random_prefix(*model, 6, true)};
    auto bank = make_bank(modules);
    EXPECT_EQ(bank->kind(), InputBankImpl::Kind::Prefix);
    expect_rows_alone(*model, bank, modules, kIds, batch(*model, 5, 6), arch);
  }
}

TEST(InputBank, PromptRowsEqualEachRowAloneOnEncoders) {
  for (const std::string arch : {"bert", "bert-cls", "xlm-roberta"}) {
    auto model = load(arch);
    Modules modules = {random_prompt(*model, 3, 21), random_prompt(*model, 5, 22), random_prompt(*model, 1, 23)};
    auto bank = make_bank(modules);
    expect_rows_alone(*model, bank, modules, kIds, batch(*model, 5, 6, /*token_types=*/arch != "xlm-roberta"), arch);
    expect_rows_alone(*model, bank, modules, {-1, 2, 0, 1, -1}, batch(*model, 5, 6), arch + " (other routing)");
  }
}

TEST(InputBank, AllRowsWithoutAModuleEqualTheBackbone) {
  auto model = load("llama");
  Modules modules = {random_prompt(*model, 3, 1)};
  auto bank = make_bank(modules);
  expect_rows_alone(*model, bank, modules, {-1, -1, -1}, batch(*model, 3, 5), "llama");
}

namespace {

// Greedy continuation with the KV cache: the first step prepared by `m` (null: none), the
// virtual slots (num_virtual) kept attended in the caller's running mask, as for one prompt.
std::pair<torch::Tensor, torch::Tensor> greedy(Backbone& model, const std::shared_ptr<InputModule>& m, BackboneInput in,
                                               int64_t steps) {
  torch::NoGradGuard no_grad;
  KVCache cache;
  const int64_t B = in.input_ids.size(0), nv = m ? m->num_virtual_tokens() : 0;
  auto mask = torch::cat({torch::ones({B, nv}, torch::kInt64), in.attention_mask}, 1);
  in.cache = &cache;
  std::vector<torch::Tensor> tokens, logits;
  for (int64_t s = 0; s <= steps; ++s) {
    auto out = (m ? forward_with(model, {m}, in) : model.forward(in)).logits;
    logits.push_back(out.select(1, -1));
    tokens.push_back(out.select(1, -1).argmax(-1, /*keepdim=*/true));
    in = BackboneInput();
    in.input_ids = tokens.back();
    in.cache = &cache;
    mask = torch::cat({mask, torch::ones({B, 1}, torch::kInt64)}, 1);
    in.attention_mask = mask;
  }
  return {torch::cat(tokens, 1), torch::stack(logits, 1)};
}

}  // namespace

TEST(InputBank, KVCacheGreedyContinuationPerRowEqualsTheRowAlone) {
  for (const std::string name : {"llama-prompt", "llama-prefix", "gpt2-prefix", "gpt2-prompt", "qwen2-prefix"}) {
    const std::string arch = name.substr(0, name.find('-'));
    const bool prompt = name.find("prompt") != std::string::npos;
    auto model = load(arch);
    torch::manual_seed(9);
    Modules modules = {fixture_module(*model, name), prompt ? random_prompt(*model, 2, 31) : random_prefix(*model, 7)};
    auto bank = make_bank(modules);
    const std::vector<int64_t> ids = {1, -1, 0};
    bank->context->set("task", torch::tensor(ids, torch::kInt64));
    auto in = batch(*model, 3, 5);
    auto [tokens, logits] = greedy(*model, bank.ptr(), in, 6);
    for (int64_t n = 0; n < 3; ++n) {
      auto [want_tokens, want_logits] = greedy(*model, ids[n] < 0 ? nullptr : modules[ids[n]], row(in, n), 6);
      EXPECT_TRUE(torch::equal(tokens.slice(0, n, n + 1), want_tokens)) << name << " row " << n;
      EXPECT_LE((logits.slice(0, n, n + 1) - want_logits).abs().max().item<double>(), kTol) << name << " row " << n;
    }
  }
}

TEST(InputBank, GradientsReachOnlyTheUsedModules) {
  auto model = load("llama");
  freeze_backbone(*model);
  torch::manual_seed(4);
  Modules modules = {random_prompt(*model, 4, 1), random_prompt(*model, 2, 2), random_prompt(*model, 6, 3)};
  auto bank = make_bank(modules);
  auto in = batch(*model, 3, 5);
  const std::vector<int64_t> ids = {0, -1, 0};
  bank->context->set("task", torch::tensor(ids, torch::kInt64));
  auto weight = torch::randn({3, 5, model->config().vocab_size}) * in.attention_mask.unsqueeze(-1);
  (bank->real_tokens(*model, forward_with(*model, {bank.ptr()}, in).logits) * weight).sum().backward();
  auto got = modules[0]->parameters()[0].grad().clone();
  EXPECT_FALSE(modules[1]->parameters()[0].grad().defined());
  EXPECT_FALSE(modules[2]->parameters()[0].grad().defined());
  // The summed loss of the rows run alone gives the same gradient.
  modules[0]->parameters()[0].mutable_grad() = torch::Tensor();
  for (int64_t n : {0, 2}) (alone(*model, modules[0], row(in, n)) * weight.slice(0, n, n + 1)).sum().backward();
  auto want = modules[0]->parameters()[0].grad();
  EXPECT_GT(want.abs().max().item<double>(), 0);
  EXPECT_TRUE(torch::allclose(got, want, 1e-4, 1e-5));
}

TEST(InputBank, PrefixGradientsReachTheReparameterisation) {
  auto model = load("qwen2");
  torch::manual_seed(4);
  Modules modules = {random_prefix(*model, 3), random_prefix(*model, 5, true)};
  auto bank = make_bank(modules);
  bank->context->set("task", torch::tensor({1, -1}, torch::kInt64));
  auto in = batch(*model, 2, 4);
  forward_with(*model, {bank.ptr()}, in).logits.pow(2).mean().backward();
  EXPECT_FALSE(modules[0]->parameters()[0].grad().defined());
  for (const auto& p : modules[1]->named_parameters())
    EXPECT_TRUE(p.value().grad().defined() && p.value().grad().abs().max().item<double>() > 0) << p.key();
}

TEST(InputBank, LoadsPeftFoldersByName) {
  auto model = load("llama");
  TempDir tmp;
  auto extra =
      add_adapter(*model, {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 3}, {"token_dim", 64}}, "extra");
  save_adapter(extra, tmp / "extra");
  auto ctx = std::make_shared<RoutingContext>();
  auto bank = load_mixed_inputs(*model, {{"fixture", fixture("hf/adapters/llama-prompt")}, {"extra", tmp / "extra"}},
                                ctx, "lang");
  EXPECT_EQ(bank->names(), (std::vector<std::string>{"fixture", "extra"}));
  bank->set_rows({"extra", kBaseAdapter, "fixture"});
  EXPECT_TRUE(torch::equal(ctx->get("lang"), torch::tensor({1, -1, 0}, torch::kInt64)));
  Modules alone_modules = {fixture_module(*model, "llama-prompt"), extra.input};
  expect_rows_alone(*model, bank, alone_modules, {1, -1, 0}, batch(*model, 3, 5), "loaded");
}

TEST(InputBank, ErrorsNameTheProblem) {
  auto model = load("llama");
  auto ctx = std::make_shared<RoutingContext>();
  auto prompt = random_prompt(*model, 3, 1), prefix = random_prefix(*model, 2);
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              InputBank(Modules{prompt, prefix}, ctx);
            }).find("[input bank] module '1' is a prefix (PREFIX_TUNING) but module '0' is a prompt (PROMPT_TUNING)"),
            std::string::npos);
  auto narrow = random_prompt(*model, 3, 2);
  std::dynamic_pointer_cast<PromptTuningImpl>(narrow)->embedding.set_data(torch::zeros({3, 32}));
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              InputBank(Modules{prompt, narrow}, ctx);
            }).find("module '1' has token_dim 32 but module '0' has token_dim 64"),
            std::string::npos);
  auto other = std::make_shared<PrefixTuningImpl>(PrefixTuningOptions(2, 2, 4, 8));
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              InputBank(Modules{prefix, other}, ctx);
            }).find("4 kv heads"),
            std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] { InputBank(Modules{}, ctx); }).find("[input bank] no modules"),
            std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              InputBank(Modules{prompt}, ctx, InputBankOptions().names({"a", "b"}));
            }).find("names has 2 entries for 1 modules"),
            std::string::npos);

  InputBank bank(Modules{prompt, random_prompt(*model, 5, 3)}, ctx, InputBankOptions().names({"a", "b"}));
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              bank->set_rows({"a", "c"});
            }).find("unknown module name 'c' (known: __base__, a, b)"),
            std::string::npos);
  auto in = batch(*model, 3, 4);
  auto run = [&] { forward_with(*model, {bank.ptr()}, in); };
  EXPECT_NE(error_of<std::invalid_argument>(run).find("task"), std::string::npos);  // no ids set
  ctx->set("task", torch::tensor({0, 1}, torch::kInt64));
  EXPECT_NE(error_of<std::invalid_argument>(run).find("routing key 'task' has 2 ids but the batch has 3 rows"),
            std::string::npos);
  ctx->set("task", torch::tensor({0, 2, -1}, torch::kInt64));
  EXPECT_NE(error_of<std::invalid_argument>(run).find("row 1 has module id 2; ids must be in [-1, 2)"),
            std::string::npos);
  ctx->set("task", torch::tensor({0, 1, -1}, torch::kInt64));
  in.position_ids = torch::arange(4, torch::kInt64).expand({3, 4});
  EXPECT_NE(error_of<std::invalid_argument>(run).find("explicit position_ids"), std::string::npos);

  auto bert = load("bert");
  InputBank prefixes(Modules{random_prefix(*model, 2)}, ctx);
  ctx->set("task", torch::tensor({0}, torch::kInt64));
  BackboneInput one;
  one.input_ids = torch::ones({1, 3}, torch::kInt64);
  EXPECT_NE(
      error_of<std::invalid_argument>([&] { forward_with(*bert, {prefixes.ptr()}, one); }).find("needs a decoder"),
      std::string::npos);
}

TEST(InputBank, LoaderErrorsNameTheFolder) {
  auto model = load("llama");
  const auto prompt = fixture("hf/adapters/llama-prompt"), prefix = fixture("hf/adapters/llama-prefix");
  auto err = [&](std::vector<std::pair<std::string, std::string>> dirs) {
    return error_of<std::invalid_argument>([&] { load_mixed_inputs(*model, dirs); });
  };
  EXPECT_NE(err({{"p", prompt}, {"q", prefix}})
                .find("'q' (" + prefix + ") is PREFIX_TUNING but 'p' (" + prompt + ") is PROMPT_TUNING"),
            std::string::npos);
  EXPECT_NE(err({{"p", prompt}, {"l", fixture("hf/adapters/llama-lora")}})
                .find("is a LORA adapter, not PROMPT_TUNING or PREFIX_TUNING"),
            std::string::npos);
  EXPECT_NE(err({{"p", prompt}, {"p", prompt}}).find("module name 'p' appears twice"), std::string::npos);
  EXPECT_NE(err({{kBaseAdapter, prompt}}).find("is reserved"), std::string::npos);
  EXPECT_NE(err({}).find("[input bank] no folders to load"), std::string::npos);
}
