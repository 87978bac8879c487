// Hypernetworks that generate modules (survey §3.4): one shared generator conditioned on
// a task embedding and a site embedding writes the LoRA weights of every site
// (HyperFormer, Mahabadi et al. 2021). Tasks may also be given by an embedding alone,
// e.g. a typological language vector, so unseen tasks get modules (Üstün et al. 2022).
//
//   z = [e_task ; e_site]                  e_task ∈ R^{d_t} (learned row or supplied), e_site ∈ R^{d_l}
//   h = relu(W_h z + b_h)                  R^{hidden}, shared by all sites
//   A = reshape(W_A^g h + b_A^g, [r, in])  heads of the site's shape group g = (in, out)
//   B = reshape(W_B^g h + b_B^g, [out, r]) W_B, b_B start at 0: the adapted model starts as the base
//   y ← y + scale · alpha/r · B A x        per example: A [N,r,in], B [N,out,r], x [N,T,in]
//
// Sites of different shapes need output heads of different sizes, so sites are grouped by
// (in, out) and each group owns one pair of heads, "heads.in<in>_out<out>.lora_{A,B}".
//
// Parameters (the hypernetwork's; none of them live in the backbone, and the site modules
// it attaches, GeneratedLora, own none):
//   task_embeddings                 [T, d_t]   learned task rows (absent when num_tasks = 0)
//   site_embeddings                 [S, d_l]   one row per selected site, in site order
//   hidden.weight, hidden.bias      [h, d_t + d_l], [h]
//   heads.in<i>_out<o>.lora_A.weight, .bias   [r·i, h], [r·i]
//   heads.in<i>_out<o>.lora_B.weight, .bias   [o·r, h], [o·r]
//   count = T·d_t + S·d_l + (d_t + d_l + 1)·h + Σ_groups (h + 1)·r·(in + out)
//
//   auto hyper = HyperLora(*model, HyperLoraOptions(2).r(4).target_modules({"q_proj", "v_proj"}));
//   hyper->attach(*model, "hyper");
//   hyper->set_task_ids(torch::tensor({0, 1}));   // row 0 is task 0, row 1 task 1
//   auto out = model->forward(in);                // train hyper->parameters()
//
// The hypernetwork is not a child of the backbone: move it with hyper->to(...) when moving
// the model, and save it with save_hyper_lora (not save_adapter).
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/backbone/backbone.h"
#include "modula/backbone/layers.h"
#include "modula/routing/algorithm1.h"
#include "modula/routing/fixed.h"

namespace modula {

inline const std::string kHyperLoraType = "MODULA_HYPER_LORA";

struct HyperLoraOptions {
  explicit HyperLoraOptions(int64_t num_tasks = 1) : num_tasks_(num_tasks) {}
  TORCH_ARG(int64_t, num_tasks);                 // learned task rows T; 0: embeddings are always supplied
  TORCH_ARG(int64_t, task_embedding_dim) = 64;   // d_t
  TORCH_ARG(int64_t, layer_embedding_dim) = 64;  // d_l, the per-site embedding
  TORCH_ARG(int64_t, hidden) = 128;              // h, the generator width
  TORCH_ARG(int64_t, r) = 8;                     // LoRA rank of the generated modules
  TORCH_ARG(double, alpha) = 16.0;               // LoRA scaling alpha / r
  TORCH_ARG(nlohmann::json, target_modules) = nlohmann::json::array({"q_proj", "v_proj"});  // PEFT rules
  TORCH_ARG(uint64_t, seed) = 0;                                                            // initialisation seed
  // The RoutingContext entry with the per-row ids when the tasks follow routing metadata
  // (the registry's task_source): "task" or a metadata field such as "language".
  TORCH_ARG(std::string, routing_key) = "task";

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
  double scaling() const { return alpha() / static_cast<double>(r()); }
};

// A site the hypernetwork writes modules for: its path, shape and shape group.
struct HyperSite {
  std::string path;
  int64_t in_features = 0, out_features = 0;
  bool conv1d_layout = false;  // GPT-2 Conv1D weight (PEFT fan_in_fan_out)
  size_t group = 0;            // index into the shape groups
};

// LoRA weights generated for one site: A [N, r, in], B [N, out, r] (N task embeddings).
struct GeneratedLoraWeights {
  std::string site;
  torch::Tensor lora_A, lora_B;
};

class HyperLoraImpl : public torch::nn::Module {
 public:
  // Selects the sites of `model` by options.target_modules and builds the generator on the
  // device/dtype of their weights. Throws std::invalid_argument for bad options or no site.
  HyperLoraImpl(Backbone& model, const HyperLoraOptions& options);
  // Seeded initialisation: embeddings ~ N(0, 1); hidden like torch.nn.Linear; A-heads
  // U(±1/sqrt(h·in)), bias 0 (generated A has LoRA's 1/sqrt(in) scale); B-heads 0.
  void reset();

  // Attaches one GeneratedLora named `name` to each site of `model` (the same paths and
  // shapes as at construction, else std::invalid_argument naming the site).
  void attach(Backbone& model, const std::string& name);
  // Detaches every GeneratedLora this hypernetwork attached.
  void detach();

  // The batch's tasks, one id per example [N] (or [1] for the whole batch). Throws
  // std::invalid_argument naming an id outside [0, num_tasks).
  void set_task_ids(const torch::Tensor& task_ids);
  // Tasks given by embedding alone, [N, d_t] (or [d_t]); gradients flow into it. Set it again
  // after changing it in place: under no-grad the generated weights are cached (rows_weights).
  void set_task_embedding(const torch::Tensor& task_embedding);
  // The current tasks' embeddings [N, d_t]; std::runtime_error if none was set.
  torch::Tensor task_embedding() const;

  // LoRA weights of site `site` for embeddings [N, d_t]: A [N, r, in], B [N, out, r].
  std::pair<torch::Tensor, torch::Tensor> generate(size_t site, const torch::Tensor& task_embedding) const;
  // Every site's weights for an embedding alone: [d_t] gives A [r, in], B [out, r];
  // [N, d_t] gives [N, r, in], [N, out, r].
  std::vector<GeneratedLoraWeights> modules_for_embedding(const torch::Tensor& task_embedding) const;
  // y + scale · alpha/r · B A x for the current tasks; x [N, .., in], y [N, .., out]: Algorithm 1
  // at the site, a FixedRouter sending each example to its row of the embedding table (the
  // learned task rows, or the embeddings set with set_task_embedding) over a HyperLoraBank.
  torch::Tensor apply(size_t site, const torch::Tensor& x, const torch::Tensor& y, double scale);
  // The embedding table the tasks are rows of, [M, d_t], and each example's row [N] for a
  // batch of N (one task set for all rows is repeated); std::invalid_argument when the
  // number of tasks set is neither 1 nor N, std::runtime_error when none is set.
  std::pair<torch::Tensor, torch::Tensor> task_rows(int64_t batch);
  // generate() for rows `ids` [n] of `table`; under no-grad reused while the tasks, the ids
  // and the parameters are unchanged (decoding generates once per sequence, not per token).
  std::pair<torch::Tensor, torch::Tensor> rows_weights(size_t site, const torch::Tensor& table,
                                                       const torch::Tensor& ids);

  const std::vector<HyperSite>& sites() const { return sites_; }
  // Where the tasks come from when they follow per-row metadata (the registry reads the
  // RoutingContext's options.routing_key): called before each forward's generation;
  // undefined = keep.
  std::function<torch::Tensor()> task_source;
  // adapter_config.json: {"peft_type": "MODULA_HYPER_LORA", the options (routing_key only
  // when it is not "task"), "sites": [paths]}.
  nlohmann::json config() const;

  HyperLoraOptions options;
  torch::Tensor task_embeddings, site_embeddings;
  torch::nn::Linear hidden{nullptr};
  std::vector<std::pair<torch::nn::Linear, torch::nn::Linear>> heads;  // (lora_A, lora_B) per shape group

 private:
  struct Cached {
    torch::Tensor lora_A, lora_B, ids;
    uint64_t task_version = 0;
    int64_t param_version = -1;
  };
  void follow_source();  // task_source → set_task_ids when the metadata changed
  int64_t param_version() const;

  std::vector<HyperSite> sites_;
  std::vector<Cached> cache_;
  torch::Tensor task_ids_, external_embedding_, source_ids_;
  uint64_t task_version_ = 1;
  std::vector<std::pair<std::weak_ptr<LinearImpl>, std::string>> attached_;
  std::shared_ptr<RoutingContext> rows_ = std::make_shared<RoutingContext>();  // "row" of each example
  FixedRouter router_{nullptr};                                                // over the table's rows
};
TORCH_MODULE(HyperLora);

// The hypernetwork at one site as a module bank (routing/algorithm1.h): module m is the LoRA
// generated from row m of an embedding table E [M, d_t], so routing over tasks (or
// languages) picks embedding rows, and only the selected rows are generated:
//   selected: Σ_k w_k · s · B(e_{idx_k}) A(e_{idx_k}) x
//   mixed:    Σ_m w_m · s · B(e_m) A(e_m) x
//   averaged: s · B̄ Ā x with Ā = Σ_m w_m A(e_m), B̄ = Σ_m w_m B(e_m)   (the generated parameters)
// s = scale · alpha / r.
class HyperLoraBank : public ModuleBank {
 public:
  HyperLoraBank(HyperLoraImpl& hyper, size_t site, torch::Tensor table, double scale)
      : hyper_(hyper), site_(site), table_(std::move(table)), scale_(scale) {}
  int64_t num_modules() const override { return table_.size(0); }
  torch::Tensor selected(const SiteInput& in, const torch::Tensor& idx, const torch::Tensor& w) override;
  torch::Tensor mixed(const SiteInput& in, const torch::Tensor& w) override;
  torch::Tensor averaged(const SiteInput& in, const torch::Tensor& w) override;
  std::string kind() const override { return "hypernetwork bank"; }

 private:
  HyperLoraImpl& hyper_;
  size_t site_;
  torch::Tensor table_;
  double scale_;
};

// The site module a hypernetwork attaches: no weights of its own; asks the hypernetwork for
// the (A, B) of the current tasks. Per-example weights cannot be folded into the base
// weight: merge() throws (export_lora gives a static LoRA for one task).
class GeneratedLoraImpl : public SiteModule {
 public:
  GeneratedLoraImpl(std::shared_ptr<HyperLoraImpl> hypernet, size_t site_index)
      : hyper(std::move(hypernet)), site(site_index) {}
  torch::Tensor transform_output(const torch::Tensor& x, const torch::Tensor& y, const LinearImpl& base) override;
  bool mergeable() const override { return false; }
  void merge(LinearImpl& base) override;
  void unmerge(LinearImpl& base) override;

  std::shared_ptr<HyperLoraImpl> hyper;  // not a registered child: its parameters stay out of the backbone
  size_t site;                           // index into hyper->sites()
};
TORCH_MODULE(GeneratedLora);

// Options from an adapter_config.json object; std::invalid_argument naming `where` and the key.
HyperLoraOptions hyper_lora_options(const nlohmann::json& config, const std::string& where);
// Writes adapter_config.json + adapter_model.safetensors (tensors by parameter name).
void save_hyper_lora(const HyperLoraImpl& hyper, const std::string& dir);
// Builds the hypernetwork for `model` from a folder, copies its tensors and attaches it as
// `name`. Throws std::runtime_error for missing files, std::invalid_argument naming the
// file and key for a wrong peft_type, bad options, other sites, missing/extra tensors or shapes.
HyperLora load_hyper_lora(Backbone& model, const std::string& dir, const std::string& name = "hyper");
// Writes the modules of one task embedding [d_t] as a plain PEFT LoRA folder (load_adapter
// and PEFT load it): a new task's static adapter from its embedding alone.
void export_lora(const HyperLoraImpl& hyper, const torch::Tensor& task_embedding, const std::string& dir);

}  // namespace modula
