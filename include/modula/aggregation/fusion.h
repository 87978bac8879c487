// AdapterFusion (Pfeiffer et al. 2021): per block site, attention over the contributions
// d_c of N frozen adapters, the query from the sub-layer output y:
//
//   q = W_q y + b_q,  k_c = W_k d_c + b_k,  v_c = W_v d_c
//   y ← y + Σ_c softmax_c(q · k_c / T) v_c
//
// W_v starts near the identity (1 on the diagonal, value_epsilon elsewhere), W_q, W_k
// as BERT's initialiser (normal 0.02, zero bias), so with one adapter and W_v = I the
// fusion equals that adapter. Only the fusion trains: add_fusion freezes the members.
// Pfeiffer et al. regularise W_v towards I: regularization_loss() = Σ_sites ‖I − W_v‖²_F.
//
//   auto fusion = modula::add_fusion(*model, {&task_a, &task_b});
//   auto loss = task_loss + 0.01 * fusion.regularization_loss();
//   modula::save_fusion(fusion, "out/fusion-ab");        // MODULA_FUSION folder
#pragma once

#include <nlohmann/json.hpp>

#include "modula/aggregation/composite.h"
#include "modula/modules/adapter.h"

namespace modula {

struct FusionOptions {
  explicit FusionOptions(int64_t features) : features_(features) {}
  TORCH_ARG(int64_t, features);             // hidden size H of the block site
  TORCH_ARG(double, temperature) = 1.0;     // T of the softmax
  TORCH_ARG(double, value_epsilon) = 1e-6;  // off-diagonal entries of the initial W_v
  TORCH_ARG(double, init_std) = 0.02;       // std of the initial W_q, W_k
  TORCH_ARG(double, dropout) = 0.0;         // on the attention scores, training only
  TORCH_ARG(uint64_t, seed) = 0;            // initialisation seed of W_q, W_k

 public:  // TORCH_ARG leaves the section private
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
  nlohmann::json to_json() const;  // everything but features
  // Reads the keys to_json writes (absent: default). Throws naming a key of the wrong type.
  static FusionOptions from_json(const nlohmann::json& config, int64_t features);
};

class FusionImpl : public CompositeImpl {
 public:
  FusionImpl(const FusionOptions& options, std::vector<std::shared_ptr<SiteModule>> children);
  void reset();
  torch::Tensor transform_block(const torch::Tensor& x, const torch::Tensor& y) override;
  // The attention probabilities over the children of the last forward [.., C] (detached).
  const torch::Tensor& last_attention() const { return last_attention_; }
  // ‖I − W_v‖²_F
  torch::Tensor value_regularization() const;
  // query.weight/bias, key.weight/bias, value.weight (the fusion's own parameters only).
  std::vector<std::pair<std::string, torch::Tensor>> fusion_parameters() const;

  FusionOptions options;
  torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr};

 private:
  torch::Tensor last_attention_;
};
TORCH_MODULE(Fusion);

// One fusion over named adapters across the model: a FusionImpl per block site where at
// least one member has a module.
struct AdapterFusion {
  std::string name = "fusion";
  std::vector<std::string> adapters;                                       // member adapter names, in attention order
  nlohmann::json config;                                                   // FusionOptions::to_json()
  std::vector<std::pair<std::string, std::shared_ptr<FusionImpl>>> sites;  // block path -> fusion
  std::vector<std::pair<std::string, std::shared_ptr<SiteHost>>> hosts;    // where attached (add_fusion only)

  std::vector<torch::Tensor> parameters() const;
  int64_t num_trainable() const;
  torch::Tensor regularization_loss() const;  // Σ_sites ‖I − W_v‖²_F
};

// Builds a fusion over the block-site modules of `adapters` at every site they share,
// attaches it as `name` (members switched off there, see attach_composition) and freezes
// the members' parameters. Throws std::invalid_argument if fewer than one adapter is given,
// an adapter has no block-site modules (LoRA, prompts), or names repeat.
AdapterFusion add_fusion(Backbone& model, const std::vector<const Adapter*>& adapters,
                         const nlohmann::json& config = nlohmann::json::object(), const std::string& name = "fusion");
// Detaches the fusion and switches the members back on (their parameters stay frozen).
void remove_fusion(AdapterFusion& fusion);

// MODULA_FUSION folder (docs/module-formats.md): adapter_config.json + tensors
// base_model.model.<site>.fusion.{query,key,value}.*.
void save_fusion(const AdapterFusion& fusion, const std::string& dir);
// Reads a MODULA_FUSION folder: config, member names and tensors by site.
struct FusionFolder {
  std::string dir;
  nlohmann::json config;
  std::vector<std::string> adapters;
  std::map<std::string, torch::Tensor> tensors;
};
FusionFolder read_fusion_folder(const std::string& dir);
// Copies a folder's tensors into `fusion` (every site must find its tensors with the
// right shapes, every tensor its site). Throws std::invalid_argument naming dir/key/shape.
void load_fusion_weights(AdapterFusion& fusion, const FusionFolder& folder);
// add_fusion over `adapters` (matched to the folder's member names, in its order) with the
// folder's weights.
AdapterFusion load_fusion(Backbone& model, const std::string& dir, const std::vector<const Adapter*>& adapters,
                          const std::string& name = "fusion");

}  // namespace modula
