// Internal: what an Evaluator holds — the backbone with its modules (composition), the
// tasks with their encodings and heads — and how a task's batches run (as the trainer's).
//   evaluate_load.cpp  loading from a run or from a model with module folders;
//   evaluate.cpp       task lookup, evaluate;
//   predict.cpp        predict.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "modula/composition/apply_spec.h"
#include "modula/io/hf_config.h"
#include "modula/text/tokenizer.h"
#include "modula/train/evaluate.h"
#include "run_modules.h"
#include "task_runtime.h"

namespace modula::train {

struct Evaluator::State {
  std::string source;  // the run, or the model folder (messages)
  torch::Device device{torch::kCPU};
  io::ModelConfig model_config;
  std::unique_ptr<text::Tokenizer> tokenizer;
  std::shared_ptr<Backbone> model;
  std::shared_ptr<RoutingContext> routing = std::make_shared<RoutingContext>();
  std::vector<Adapter> adapters;  // reserved up front: compositions point at their members
  std::set<std::string> composed, fused;
  std::optional<Composition> composition;              // a spec applied over module folders (no run)
  std::vector<detail::TaskRuntime> tasks;              // encodings and heads; `eval` holds the records of a call
  std::map<size_t, std::vector<std::string>> enabled;  // task -> its modules (empty = all)
  std::vector<MetadataField> metadata;
  uint64_t seed = 0;
  int64_t batch_size = 16;

  void load_run(const EvalSetup& setup);
  void load_parts(const EvalSetup& setup);
  // The backbone (fp32, eval mode) and its tokenizer.
  void load_model(const std::string& dir, const std::string& tokenizer_path, const std::string& device_name);
  // A task with its encoding and, for classification, its head from `heads_file`
  // (load_heads): the head of the task's name or, with `by_type`, the only one of its type.
  void add_task(TaskConfig t, const std::string& heads_file, bool by_type);

  size_t find(const std::string& name_or_type) const;
  detail::InputModules activate(size_t ti);
  void route(size_t ti, const Batch& b);
};

}  // namespace modula::train
