// Merge recipes: a YAML (or JSON) file that names the models, the base and the method of a
// full-model merge (model_merge.h), in mergekit's layout; run_merge streams it tensor by
// tensor into a new checkpoint folder. Format and examples: docs/merging.md.
//
//   merge_method: ties
//   base_model: base            # folders, relative to the recipe's folder
//   models:
//     - model: math
//       parameters: {weight: 0.7, density: 0.5}
//     - model: code
//       parameters: {weight: 0.3, density: [0.3, 0.7]}   # a gradient over the layers
//   parameters: {normalize: true}
//   output: merged
//
//   auto recipe = modula::load_recipe("recipe.yaml");
//   auto report = modula::run_merge(recipe);                 // writes recipe.output
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "modula/merge/model_merge.h"

namespace modula {

// A numeric recipe parameter, per tensor: a number; a gradient (a list of numbers spread
// evenly over the layers and interpolated linearly); or filtered values
// [{filter: "self_attn", value: <number or gradient>}, {value: ...}] where the first entry
// whose filter is a substring of the tensor name (or that has no filter) applies.
class ParamValue {
 public:
  // Throws std::invalid_argument naming `field` (e.g. "models[1].parameters.weight").
  static ParamValue parse(const nlohmann::json& value, const std::string& field);
  // The value for `tensor` at relative depth in [0, 1] (layer i of L: i / (L−1)).
  double at(const std::string& tensor, double depth) const;

 private:
  struct Rule {
    std::string filter;  // "" matches every tensor
    std::vector<double> anchors;
  };
  std::vector<Rule> rules_;
  std::string field_;
};

struct RecipeModel {
  std::string path;                              // resolved folder
  std::map<std::string, ParamValue> parameters;  // weight, density
};

struct MergeRecipe {
  ModelMergeOptions options;  // method and its scalar parameters
  std::string base_model;     // resolved folder; "" when none
  std::vector<RecipeModel> models;
  std::map<std::string, ParamValue> parameters;  // t, and defaults for weight / density
  std::string dtype = "float32";                 // of the written checkpoint
  std::string tokenizer_source;                  // folder whose tokenizer files are copied; "" none
  std::string output;                            // resolved folder; "" when not given
  uint64_t seed = 0;                             // DARE's masks
  nlohmann::json source;                         // the recipe as read
};

// Parses a recipe (JSON value, e.g. converted from YAML); relative paths resolve against
// `base_dir`. Throws std::invalid_argument "[merge] <field>: <what is wrong>" for unknown
// keys or methods, missing models or weights, counts that do not match, bad values.
MergeRecipe parse_recipe(const nlohmann::json& recipe, const std::string& base_dir = ".");
// Reads a .yaml/.yml/.json recipe file; paths resolve against the file's folder.
MergeRecipe load_recipe(const std::string& path);

struct MergeReport {
  std::string output;
  int64_t tensors = 0;                    // merged (floating-point) tensors
  int64_t parameters = 0;                 // their elements
  std::vector<std::string> copied_files;  // tokenizer files copied beside the weights
};

// Merges tensor by tensor from memory-mapped checkpoints (one model's weights in memory,
// plus one tensor of each input at a time) and writes `output` (or recipe.output) with
// save_backbone, the tokenizer files and merge_recipe.json. Throws std::invalid_argument
// naming the model and tensor for a missing folder, a missing tensor or a shape mismatch.
MergeReport run_merge(const MergeRecipe& recipe, const std::string& output = "");

}  // namespace modula
