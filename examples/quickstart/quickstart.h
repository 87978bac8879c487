// The main job (`modula quickstart`): pretrain a tiny Llama on compositional sequence
// tasks (tasks_synthetic.h), then test two of the survey's claims end to end:
//
//  (a) continual learning (§6.4): tasks arrive one after another. Per-task modules on a
//      frozen backbone keep every earlier task's accuracy (forgetting exactly 0, by
//      construction: what it can show is at which accuracy); full fine-tuning and one shared
//      module may forget. Every method sees the task's markers in the text, so the tasks are
//      compatible and a shared model is able to keep them all: their forgetting is measured,
//      not forced by conflicting answers.
//  (b) multi-task interference (§6.3): the same kind of tasks (markers in the text) learned
//      jointly by one shared module of twice the rank vs one module per task, same steps.
//      Interference can come out either way; with tiny models and few steps the shared
//      module's extra capacity may win.
//  (c) systematic generalisation (§7, Ponti et al. 2022): Polytropon learns skills shared
//      across training compositions and a task-to-skill routing; a held-out composition of
//      seen skills is learned from a few examples by adapting only its routing (MHR-z,
//      Caccia et al. 2022), against one shared LoRA fine-tuned on the same few examples and
//      a new per-task LoRA trained on them.
//  (d) mixture of LoRA experts (§4.2.2): M experts of rank r with token-level top-k routing
//      and the load-balancing loss, multi-task without task ids (the task's markers are in
//      the text), vs one LoRA of rank r (same active compute) and of rank M·r (same
//      parameters).
//
// Accuracy is exact match over the whole answer on held-out generated inputs (teacher-
// forced argmax, equal to greedy decoding's exact match). Forgetting of task j is
// max_{t<T} a[t][j] - a[T][j] (Chaudhry et al. 2018), averaged over all but the last task.
// Every experiment appends an ExperimentResult to the same table and report.
//
//   auto result = modula::train::run_quickstart(QuickstartOptions());
//   std::cout << format_table(result.summary_table());
//   result.report().write_html("build/quickstart/report.html");
#pragma once

#include <functional>
#include <map>

#include "modula/train/report.h"
#include "quickstart/tasks_synthetic.h"

namespace modula::train {

struct QuickstartOptions {
  TORCH_ARG(uint64_t, seed) = 0;
  TORCH_ARG(SequenceTaskOptions, data) = SequenceTaskOptions();
  // The tiny Llama built in code.
  TORCH_ARG(int64_t, hidden_size) = 64;
  TORCH_ARG(int64_t, num_layers) = 2;
  TORCH_ARG(int64_t, num_heads) = 4;
  TORCH_ARG(int64_t, intermediate_size) = 128;
  // Pretraining: the primitive skills, task marker in the text.
  TORCH_ARG(std::vector<std::string>, pretrain_tasks) = std::vector<std::string>{"reverse", "sort", "shift",
                                                                                 "duplicate"};
  TORCH_ARG(int64_t, pretrain_steps) = 1200;
  TORCH_ARG(double, pretrain_lr) = 3e-3;
  // Fine-tuning tasks (no marker): (a) in this order, (b) jointly.
  TORCH_ARG(std::vector<std::string>, continual_tasks) = std::vector<std::string>{"shift+duplicate", "reverse+shift",
                                                                                  "sort"};
  TORCH_ARG(std::vector<std::string>, interference_tasks) = std::vector<std::string>{"reverse", "shift", "sort+shift"};
  TORCH_ARG(int64_t, finetune_steps) = 150;  // per task (joint training: per task × tasks)
  // (c) training compositions (no marker, task id as metadata) and held-out compositions
  // of the same skills, each learned from `few_shot_examples` for `adapt_steps` full-batch steps.
  TORCH_ARG(std::vector<std::string>, generalisation_tasks) = std::vector<std::string>{
      "reverse+shift", "sort+duplicate", "shift+duplicate", "sort+reverse"};
  TORCH_ARG(std::vector<std::string>, heldout_tasks) = std::vector<std::string>{"reverse+duplicate", "sort+shift"};
  TORCH_ARG(int64_t, generalisation_steps) = 240;  // multi-task steps per method (per-task: split evenly)
  TORCH_ARG(int64_t, few_shot_examples) = 32;
  TORCH_ARG(int64_t, adapt_steps) = 40;
  TORCH_ARG(int64_t, poly_skills) = 4;
  // Adam moves a parameter by about lr per step: routing logits need lr ~0.1 to reach
  // allocations of order 1 within a few dozen steps (skills keep module_lr).
  TORCH_ARG(double, routing_lr) = 0.1;
  // (d) tasks (markers in the text, no task id), experts, top-k, steps per method.
  TORCH_ARG(std::vector<std::string>, moe_tasks) = std::vector<std::string>{"reverse+shift", "sort+duplicate",
                                                                            "shift+duplicate", "sort+reverse"};
  TORCH_ARG(int64_t, moe_experts) = 4;
  TORCH_ARG(int64_t, moe_k) = 1;
  TORCH_ARG(int64_t, moe_steps) = 240;
  TORCH_ARG(double, load_balance_coef) = 0.01;
  TORCH_ARG(double, module_lr) = 3e-3;
  TORCH_ARG(double, full_lr) = 1e-3;
  // The modules: LoRA on every linear site of the backbone.
  TORCH_ARG(int64_t, lora_r) = 4;
  TORCH_ARG(double, lora_alpha) = 8.0;
  TORCH_ARG(int64_t, batch_size) = 64;
  TORCH_ARG(int64_t, eval_examples) = 256;  // held-out, per task
  TORCH_ARG(int64_t, log_every) = 25;       // loss curve resolution and progress lines
  // Which experiments: "continual", "interference", "generalisation", "moe".
  TORCH_ARG(std::vector<std::string>, experiments) = std::vector<std::string>{"continual", "interference",
                                                                              "generalisation", "moe"};
  // Where the backbone, the per-task modules and report.html go ("" = nothing written).
  TORCH_ARG(std::string, output) = "build/quickstart";

 public:
  // The CTest variant: a few steps of everything (seconds).
  static QuickstartOptions tiny();
  // `--full`: longer, stronger run.
  static QuickstartOptions full();
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

struct LossCurve {
  std::string name;
  std::vector<double> step, loss;  // mean loss over each log_every window
};

// One method in one experiment.
struct MethodResult {
  std::string method;                         // "per-task LoRA", "full fine-tuning", ...
  int64_t trainable_parameters = 0;           // all the method trains (over every task)
  int64_t active_parameters = 0;              // of those, the ones one token's forward uses
  std::vector<std::string> stages;            // row labels of `accuracy`
  std::vector<std::vector<double>> accuracy;  // [stage][task], NaN = task not seen yet
  double final_accuracy = 0;                  // mean over tasks of the last row
  double forgetting = NAN;                    // continual only
  double heldout_accuracy = NAN;              // generalisation only: mean over held-out tasks
  double aux_loss = NAN;                      // moe only: router loss, mean of the last window
  LossCurve aux;                              // moe only: router loss curve
  LossCurve loss;
  double seconds = 0;
};

struct ExperimentResult {
  std::string key;                         // "continual", "interference"
  std::string title;                       // "(a) continual learning"
  std::string claim;                       // the survey's claim this tests, one sentence
  std::vector<std::string> tasks;          // columns of the accuracy matrices
  std::vector<std::string> heldout_tasks;  // generalisation: the tasks never trained on (a suffix of tasks)
  std::vector<std::string> notes;          // extra paragraphs for the report
  std::vector<MethodResult> methods;
  const MethodResult& method(const std::string& name) const;  // throws naming it
};

struct QuickstartResult {
  QuickstartOptions options;
  int64_t backbone_parameters = 0;
  LossCurve pretrain_loss;
  std::map<std::string, double> pretrain_accuracy;  // held-out, with the marker, per task
  std::vector<ExperimentResult> experiments;
  double seconds = 0;
  std::string output;  // folder written ("" if none)

  // Experiment | Method | Trainable params | Active params | Final accuracy | Held-out
  // accuracy | Forgetting | Seconds.
  Table summary_table() const;
  // Accuracy matrices (stage × task) of one experiment, one per method.
  std::vector<Matrix> accuracy_matrices(const ExperimentResult& e) const;
  Report report() const;
};

// Forgetting (Chaudhry et al. 2018): mean over j < T of max_{t<T} a[t][j] - a[T][j]
// for a [T+1 stages][tasks] accuracy matrix with stage t training task t.
double average_forgetting(const std::vector<std::vector<double>>& accuracy);

// Progress lines for the CLI (the library never prints).
using Progress = std::function<void(const std::string&)>;
QuickstartResult run_quickstart(const QuickstartOptions& options, const Progress& progress = {});

}  // namespace modula::train
