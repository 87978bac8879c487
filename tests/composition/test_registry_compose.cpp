// Registry matrix: compose (see registry_matrix.h). A composition trains (its learned
// routers / fusions, and the routed members), is written as a MODULA_COMPOSITION folder and
// reloads over its members to the same eval loss: as a module of the run (modules: -
// config: {peft_type: MODULA_COMPOSITION, ...}) and from a `compose:` run (out/compose).
#include "composition/registry_matrix.h"
#include "modula/composition/composition_module.h"
#include "modula/io/peft.h"
#include "modula/modules/targets.h"

namespace {

using namespace modula;
using namespace modula::testing::matrix;
using modula::testing::fixture;
using modula::testing::TempDir;

const json kLora = {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj", "v_proj"}}};
const json kBottleneck = {{"peft_type", "MODULA_BOTTLENECK"}, {"config", "pfeiffer"}, {"reduction_factor", 4}};
const json kIa3 = {
    {"peft_type", "IA3"}, {"target_modules", {"v_proj", "down_proj"}}, {"feedforward_modules", {"down_proj"}}};

// Members a, b, c, ... (n of them) with the same config.
json members(const json& config, int n) {
  json out = json::array();
  for (int i = 0; i < n; ++i) out.push_back({{"name", std::string(1, static_cast<char>('a' + i))}, {"config", config}});
  return out;
}

json composition(const std::string& spec) { return {{"peft_type", "MODULA_COMPOSITION"}, {"spec", spec}}; }

// `compose: spec` over `modules` (configs, or trained folders by path): trains, then the
// members by path plus out/compose (trainable: false) evaluate to the same loss.
void compose_save_reload(const TempDir& d, const std::string& spec, const json& modules, double lr = 3e-2) {
  auto first = run_config(d, "llama", "a", modules, lr, 24);
  first["compose"] = spec;
  auto trained = run(first);
  EXPECT_LT(trained.last, trained.first) << spec << ": loss did not go down";
  const std::string folder = d / "a/compose";
  ASSERT_TRUE(modula::fs::is_file(modula::fs::join(folder, "adapter_config.json"))) << folder;
  EXPECT_EQ(io::read_peft_folder(folder).peft_type, "MODULA_COMPOSITION");
  json reload = json::array();
  for (const auto& m : modules) {
    const auto name = m.at("name").get<std::string>();
    const auto dir = m.contains("path") ? m.at("path").get<std::string>() : d / ("a/modules/" + name);
    reload.push_back({{"name", name}, {"path", dir}, {"trainable", false}});
  }
  reload.push_back({{"name", "c0"}, {"path", folder}, {"trainable", false}});
  reload.push_back({{"name", "probe"}, {"config", {{"peft_type", "LORA"}, {"r", 1}, {"target_modules", {"k_proj"}}}}});
  auto again = run(run_config(d, "llama", "b", reload, 1e-12, 1));
  EXPECT_NEAR(again.eval_loss, trained.eval_loss, 1e-5 * std::max(1.0, std::abs(trained.eval_loss))) << spec;
}
void compose_save_reload(const std::string& spec, const json& member_config, int n, double lr = 3e-2) {
  TempDir d;
  compose_save_reload(d, spec, members(member_config, n), lr);
}

TEST(RegistryMatrix, ComposeRouteSoftmaxOverLora) { compose_save_reload("route(softmax, a, b)", kLora, 2); }
TEST(RegistryMatrix, ComposeRouteSoftmaxTokenOverLora) { compose_save_reload("route(softmax_token, a, b)", kLora, 2); }
TEST(RegistryMatrix, ComposeRouteTop2OverLora) { compose_save_reload("route(top2, a, b, c)", kLora, 3); }
TEST(RegistryMatrix, ComposeRouteSmearOverLora) { compose_save_reload("route(smear, a, b)", kLora, 2); }
TEST(RegistryMatrix, ComposeMoeOverLora) { compose_save_reload("moe(top1, a, b, c)", kLora, 3); }
TEST(RegistryMatrix, ComposeRouteSoftmaxOverIa3) { compose_save_reload("route(softmax, a, b)", kIa3, 2, 1e-1); }
TEST(RegistryMatrix, ComposeRouteSoftmaxOverBottleneck) { compose_save_reload("route(softmax, a, b)", kBottleneck, 2); }
TEST(RegistryMatrix, ComposeRouteSoftmaxTokenOverBottleneck) {
  compose_save_reload("route(softmax_token, a, b)", kBottleneck, 2);
}
TEST(RegistryMatrix, ComposeRouteTop2OverBottleneck) { compose_save_reload("route(top2, a, b, c)", kBottleneck, 3); }

// As a module of the run: the registry row builds it over the earlier modules.
TEST(RegistryMatrix, CompositionModuleRouteOverLora) {
  train_save_reload("llama", composition("route(softmax_token, a, b)"), 3e-2, members(kLora, 2));
  train_save_reload("llama", composition("route(smear, a, b)"), 3e-2, members(kLora, 2));
}
TEST(RegistryMatrix, CompositionModuleRouteOverBottleneck) {
  train_save_reload("llama", composition("route(top2, a, b, c)"), 3e-2, members(kBottleneck, 3));
}

// fuse(...) over trained members (a fusion's members are frozen): trains the fusion,
// reloads it by folder, both as a module and from `compose:`.
TEST(RegistryMatrix, CompositionFuse) {
  TempDir d;
  run(run_config(d, "llama", "pre", members(kBottleneck, 2), 3e-2, 12));
  json trained = json::array();
  for (const char* n : {"a", "b"}) trained.push_back({{"name", n}, {"path", d / (std::string("pre/modules/") + n)}});
  train_save_reload("llama", composition("fuse(a, b)"), 3e-2, trained);
  compose_save_reload(d, "fuse(a, b)", trained);  // out/compose also keeps fuse0/ and spec.txt
  EXPECT_TRUE(modula::fs::is_file(d / "a/compose/fuse0/adapter_config.json"));
  EXPECT_TRUE(modula::fs::is_file(d / "a/compose/spec.txt"));
}

// The folder: keys by node and site; a wrong key, a wrong shape, a missing tensor or a
// missing member is an error naming the folder and the key.
TEST(RegistryMatrix, CompositionFolderErrorsNameTheFolderAndKey) {
  TempDir d;
  auto model = load_backbone(fixture("hf/models/llama"));
  ModuleEnv env;
  env.name = "a";
  auto a = build_module(*model, kLora, env);
  env.name = "b";
  auto b = build_module(*model, kLora, env);
  env.name = "x";
  auto x = build_module(*model, kBottleneck, env);
  env.name = "y";
  auto y = build_module(*model, kBottleneck, env);
  env.name = "c";
  env.members = {{"a", &a}, {"b", &b}, {"x", &x}, {"y", &y}};
  const std::string spec = "stack(fuse(x, y), route(softmax, a, b))";
  auto c = build_module(*model, composition(spec), env);
  ASSERT_NE(composition_of(c), nullptr);
  const std::string dir = d / "c";
  save_module(c, dir);
  auto folder = io::read_peft_folder(dir);
  EXPECT_EQ(folder.config.at("spec"), spec);
  EXPECT_EQ(folder.config.at("adapters"), json({"x", "y", "a", "b"}));
  size_t fused = 0, routed = 0;  // fusion 0's and route node 0's tensors, by site
  for (const auto& [key, t] : folder.tensors) {
    fused += key.rfind("fuse0.", 0) == 0;
    routed += key.rfind("route0.model.layers.", 0) == 0;
  }
  EXPECT_GT(fused, 0u);
  EXPECT_GT(routed, 0u);
  EXPECT_EQ(fused + routed, folder.tensors.size());
  BackboneInput in;
  in.input_ids = torch::arange(3, 15, torch::kInt64).view({2, 6});
  in.attention_mask = torch::ones({2, 6}, torch::kInt64);
  torch::Tensor want;
  {
    torch::NoGradGuard g;
    want = forward_adapted(*model, c, in).logits;
  }
  c.remove();
  {
    auto again = load_module(*model, dir, env);
    torch::NoGradGuard g;
    EXPECT_LE((forward_adapted(*model, again, in).logits - want).abs().max().item<double>(), 1e-6);
    again.remove();
  }
  auto tampered = [&](const std::string& name, const std::function<void(io::NamedTensors&)>& edit) {
    io::NamedTensors ts(folder.tensors.begin(), folder.tensors.end());
    edit(ts);
    const std::string out = d / name;
    io::write_peft_folder(out, folder.config, ts);
    return out;
  };
  const auto first_key = folder.tensors.begin()->first;
  auto extra =
      tampered("extra", [](io::NamedTensors& ts) { ts.emplace_back("route9.nowhere.weight", torch::zeros({1})); });
  auto msg = modula::testing::error_of([&] { load_module(*model, extra, env); });
  EXPECT_NE(msg.find(extra + ": tensor 'route9.nowhere.weight' is not a parameter"), std::string::npos) << msg;
  auto shape = tampered("shape", [](io::NamedTensors& ts) { ts.front().second = torch::zeros({3}); });
  msg = modula::testing::error_of([&] { load_module(*model, shape, env); });
  EXPECT_NE(msg.find(shape + ": tensor '" + first_key + "' has shape [3]"), std::string::npos) << msg;
  auto missing = tampered("missing", [](io::NamedTensors& ts) { ts.erase(ts.begin()); });
  msg = modula::testing::error_of([&] { load_module(*model, missing, env); });
  EXPECT_NE(msg.find(missing + ": tensor '" + first_key + "' is missing"), std::string::npos) << msg;
  env.members.erase("b");
  msg = modula::testing::error_of([&] { load_module(*model, dir, env); });
  EXPECT_NE(msg.find(dir + ": member module 'b' is not loaded"), std::string::npos) << msg;
  // A failed load leaves the members as they were (running natively).
  for (const auto& [path, layer] : linear_sites(*model)) EXPECT_EQ(layer->module("c"), nullptr) << path;
}

}  // namespace
