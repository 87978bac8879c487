// Composition specs as module sets of a mixed handle (composition_set): one forward whose
// rows use different compositions (stack / parallel / avg over LoRA, (IA)³ and bottleneck
// adapters), a plain adapter or none, each row equal to that composition applied alone
// with apply_spec on a fresh model.
#include <gtest/gtest.h>

#include "modula/backbone/registry.h"
#include "modula/composition/apply_spec.h"
#include "modula/composition/mixed.h"
#include "modula/composition/registry.h"
#include "support/temp_dir.h"

using namespace modula;
using modula::testing::fixture;
using modula::testing::TempDir;
using json = nlohmann::json;

namespace {

std::shared_ptr<Backbone> llama() { return load_backbone(fixture("hf/models/llama")); }

// Module folders with non-trivial random parameters.
struct Folders {
  TempDir dir;
  std::map<std::string, std::string> path;
};

Folders make_folders(const std::vector<std::pair<std::string, json>>& configs) {
  Folders f;
  torch::manual_seed(5);
  for (const auto& [name, config] : configs) {
    auto m = llama();
    auto a = add_adapter(*m, config, name);
    {
      torch::NoGradGuard g;
      for (auto& p : a.parameters()) p.add_(torch::randn_like(p) * 0.2);
    }
    save_adapter(a, f.dir / name);
    f.path[name] = f.dir / name;
  }
  return f;
}

json lora(int r) { return {{"peft_type", "LORA"}, {"r", r}, {"lora_alpha", 2 * r}, {"target_modules", "all-linear"}}; }
json ia3() {
  return {{"peft_type", "IA3"}, {"target_modules", {"k_proj", "down_proj"}}, {"feedforward_modules", {"down_proj"}}};
}
json bottleneck(const std::string& preset) { return {{"peft_type", "MODULA_BOTTLENECK"}, {"config", preset}}; }

BackboneInput batch(int64_t rows, int64_t T = 6) {
  BackboneInput in;
  in.input_ids = torch::arange(7, 7 + rows * T, torch::kInt64).remainder(89).add(3).view({rows, T});
  in.attention_mask = torch::ones({rows, T}, torch::kInt64);
  return in;
}

torch::Tensor alone(const std::string& spec, const Folders& f, const BackboneInput& in, int64_t n) {
  auto m = llama();
  BackboneInput r;
  r.input_ids = in.input_ids.slice(0, n, n + 1);
  r.attention_mask = in.attention_mask.slice(0, n, n + 1);
  if (spec == kBaseAdapter) return m->forward(r).logits[0];
  auto comp = apply_spec(*m, parse_spec(spec), f.path);
  return comp.forward(*m, r).logits[0];
}

}  // namespace

TEST(MixedCompositions, EachRowEqualsItsCompositionAlone) {
  auto f = make_folders({{"l4", lora(4)},
                         {"l2", lora(2)},
                         {"ia", ia3()},
                         {"ib", ia3()},
                         {"pf", bottleneck("pfeiffer")},
                         {"hb", bottleneck("houlsby")}});
  const std::vector<std::string> specs = {"stack(l4, pf)", "avg(l4:0.3, l2:0.7)", "stack(ia, ib)", "parallel(pf, hb)",
                                          "stack(hb, avg(pf, l4))"};
  auto m = llama();
  std::vector<Adapter> sets;
  for (size_t i = 0; i < specs.size(); ++i)
    sets.push_back(composition_set(*m, parse_spec(specs[i]), f.path, specs[i], "c" + std::to_string(i)));
  sets.push_back(load_adapter(*m, f.path["l2"], "l2"));
  auto mixed = mix_adapters(std::move(sets), "serve");
  std::vector<std::string> per_row = {specs[0], specs[1], kBaseAdapter, specs[2], specs[3], "l2", specs[4], specs[0]};
  set_row_modules(mixed, per_row);
  auto in = batch(static_cast<int64_t>(per_row.size()));
  torch::NoGradGuard no_grad;
  auto got = forward_adapted(*m, mixed, in).logits;
  auto base = llama()->forward(in).logits;
  for (size_t n = 0; n < per_row.size(); ++n) {
    const auto row = static_cast<int64_t>(n);
    auto want = alone(per_row[n], f, in, row);  // a plain adapter alone: the spec of its one name
    EXPECT_LE((got[row] - want).abs().max().item<double>(), 1e-5) << "row " << n << " " << per_row[n];
    if (per_row[n] != kBaseAdapter) {  // the composition changes the row: not vacuous
      EXPECT_GT((got[row] - base[row]).abs().max().item<double>(), 1e-3) << per_row[n];
    }
  }
  mixed.remove();
  for (const auto& p : m->named_parameters())  // nothing left attached
    EXPECT_EQ(p.key().find(".adapters."), std::string::npos) << p.key();
}

TEST(MixedCompositions, UnservableSpecsAreRejectedAndLeaveNothing) {
  auto f = make_folders({{"l4", lora(4)}, {"pf", bottleneck("pfeiffer")}, {"hb", bottleneck("houlsby")}});
  auto m = llama();
  auto message = [&](const std::string& spec) {
    try {
      composition_set(*m, parse_spec(spec), f.path, spec, "c0");
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("fuse(pf, hb)").find("no trained fusion"), std::string::npos);
  EXPECT_NE(message("route(task, pf, hb)").find("route"), std::string::npos);
  EXPECT_NE(message("moe(pf, hb)").find("route"), std::string::npos);
  EXPECT_NE(message("stack(l4, nope)").find("nope"), std::string::npos);
  auto ia = make_folders({{"ia", ia3()}});
  f.path["ia"] = ia.path["ia"];
  auto set = composition_set(*m, parse_spec("stack(ia, l4)"), f.path, "stack(ia, l4)", "c1");
  std::vector<Adapter> sets;
  sets.push_back(std::move(set));
  try {
    mix_adapters(std::move(sets), "serve");
    ADD_FAILURE() << "LoRA and (IA)3 at one site were mixed";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("order"), std::string::npos) << e.what();
  }
  for (const auto& p : m->named_parameters()) EXPECT_EQ(p.key().find(".adapters."), std::string::npos) << p.key();
}
