// Applies a composition spec (spec.h) to a model: loads or takes the named modules and
// builds, at every block site, the composite the spec describes (aggregation/*.h).
//
//   auto spec = modula::parse_spec("stack(lang:de, fuse(task:a, task:b))");
//   auto comp = modula::apply_spec(*model, spec, {{"lang:de", "adapters/de"},
//                                                {"task:a", "adapters/a"}, {"task:b", "adapters/b"}});
//   auto out = comp.forward(*model, input);
//
// How each kind of module takes part:
//   block-site adapters (MODULA_BOTTLENECK): every operator; a member without a module at
//     a site is the identity there (stack/parallel/avg/fuse skip it, route keeps its slot).
//   linear-site adapters (LORA, IA3): applied at their own sites; stack and parallel add
//     them, avg scales them by their normalised weight (scale = Σ over their appearances of
//     the product of the avg weights above them); under fuse they are rejected. As direct
//     arguments of route(...) they are routed per Linear site over a view bank (LoRA or
//     (IA)³, one kind per site; not DoRA): the members stay attached, switched off, and
//     gradients reach them.
//   prompts (PROMPT_TUNING, PREFIX_TUNING): only at the top level (the spec itself or an
//     argument of a top-level stack), or inside concat (PROMPT_TUNING only).
//   MODULA_FUSION folders (by folder only): a name whose folder is a fusion stands for
//     fuse(<its member adapters>) with the trained fusion weights; the members must be
//     named in the same map.
// route(key, a, b, …) routes each row by the ids the caller sets in `context` under `key`
// (routing/fixed.h; id −1: no module for that row); route(softmax|softmax_token|smear|top<k>,
// …) and moe(…) learn one router per site. A trained composition is saved and reloaded as
// one module folder (MODULA_COMPOSITION, composition/composition_module.h).
#pragma once

#include <map>

#include "modula/aggregation/fusion.h"
#include "modula/composition/spec.h"
#include "modula/modules/adapter.h"
#include "modula/routing/router.h"

namespace modula {

struct ComposeOptions {
  TORCH_ARG(std::string, name) = "compose";                      // the composition's name at each site (no '.')
  TORCH_ARG(nlohmann::json, fusion) = nlohmann::json::object();  // FusionOptions keys for new fuse(…) nodes
  // The routing metadata route(key, …) reads; null: the composition makes its own.
  TORCH_ARG(std::shared_ptr<RoutingContext>, context) = nullptr;

 public:                  // TORCH_ARG leaves the section private
  void validate() const;  // std::invalid_argument naming the bad field
};

struct Composition {
  SpecNode spec;
  std::string name;
  std::map<std::string, const Adapter*> members;     // module name → adapter
  std::map<std::string, Adapter> owned;              // adapters apply_spec loaded from folders
  std::vector<AdapterFusion> fusions;                // one per fuse node, in spec order (trainable)
  std::vector<std::shared_ptr<InputModule>> inputs;  // prepared in order on the first step
  std::shared_ptr<RoutingContext> context = std::make_shared<RoutingContext>();
  std::vector<std::shared_ptr<RouterImpl>>
      routers;  // fixed: one per route node, shared by its sites; learned: one per site
  // Parallel to `routers`: "route<j>.<site>" for a learned router (j: the route node in
  // pre-order), "" for a fixed one; the stable names its parameters are saved under.
  std::vector<std::string> router_keys;
  ComposeOptions options;                                                 // as applied
  std::vector<std::pair<std::string, std::shared_ptr<BlockSite>>> sites;  // where a composite is attached
  // route(...) over LoRA adapters: the Linear sites with a routed bank, and the members it
  // switched off there (they run inside the bank).
  std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> linear_sites;
  std::vector<std::shared_ptr<SiteModule>> switched_off;
  std::map<std::string, double> previous_scales;  // linear adapters avg rescaled: their scale before
  // The parts that start freshly initialised, one line each (a fuse(…) without trained
  // weights, a learned route's routers): what runs untrained unless something trains it.
  std::vector<std::string> untrained;

  // Applies the input modules (first step of a sequence).
  void prepare(Backbone& model, BackboneInput& in) const;
  BackboneOutput forward(Backbone& model, BackboneInput in) const;
  // The fusion parameters (what trains; the member adapters of fuse nodes are frozen).
  std::vector<torch::Tensor> parameters() const;
};

// With adapters already attached to `model`, by module name (apply_spec does not own them;
// adapters in the map that the spec does not use are left as they are). Throws SpecError
// for unknown names and std::invalid_argument for modules where the spec cannot use them.
Composition apply_spec(Backbone& model, const SpecNode& spec, const std::map<std::string, const Adapter*>& adapters,
                       const ComposeOptions& options = {});
// Loads the folders the spec names (module name → folder) and applies it.
Composition apply_spec(Backbone& model, const SpecNode& spec, const std::map<std::string, std::string>& folders,
                       const ComposeOptions& options = {});
// Detaches every composite, switches the members back on, restores the scales avg changed
// and removes the adapters it owns.
void remove_composition(Composition& composition);

}  // namespace modula
