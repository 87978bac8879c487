// `modula experiment merging`: per-task LoRAs trained separately, merged post hoc (survey
// §5.1, parameter aggregation) vs each alone vs multi-task training.
#include <chrono>

#include "experiment/internal.h"
#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/merge/lora_merge.h"
#include "modula/train/evaluate.h"
#include "modula/train/run_output.h"
#include "modula/util/fs.h"

namespace modula::experiment::detail {
namespace {

struct MergeMethod {
  std::string label;
  std::string combination_type;  // lora_merge.h; the *_svd / cat types combine in ΔW space
  double weight;                 // per adapter
  std::optional<double> density;
};

// ΔW-space rules (A and B merged separately would not be ΔW's average): cat is exact.
std::vector<MergeMethod> merge_methods(size_t T) {
  const double avg = 1.0 / static_cast<double>(T);
  return {{"average (ΔW / T)", "cat", avg, std::nullopt},
          {"task arithmetic (λ = 1)", "cat", 1.0, std::nullopt},
          {"TIES (density 0.5, λ = 1)", "ties_svd", 1.0, 0.5},
          {"DARE (density 0.5, λ = 1)", "dare_linear_svd", 1.0, 0.5}};
}

// Accuracy of each task's head over the backbone with `adapter_dirs` on.
std::map<std::string, double> evaluate(const std::string& model, const std::vector<std::string>& adapter_dirs,
                                       const std::string& heads, const std::vector<Task>& tasks, const Sizes& z) {
  train::EvalSetup s;
  s.model = model;
  s.adapters = adapter_dirs;
  s.heads = heads;
  for (const auto& t : tasks) {
    train::TaskConfig c;
    c.name = t.name;
    c.type = train::TaskType::SequenceClassification;
    c.labels = t.labels;
    c.max_length = z.max_length;
    s.tasks.push_back(c);
  }
  s.batch_size = 64;
  train::Evaluator ev(s);
  std::map<std::string, double> out;
  for (const auto& t : tasks)
    out[t.name] = ev.evaluate(t.name, t.eval, "task '" + t.name + "' eval").metrics.at("accuracy");
  return out;
}

void add(MethodResult& m, const std::map<std::string, double>& acc) {
  std::vector<double> v;
  for (const auto& [task, a] : acc) m.task_accuracy[task].push_back(a), v.push_back(a);
  m.metrics["average accuracy"].push_back(mean_of(v));
}

}  // namespace

ExperimentResult merging(const ExperimentOptions& o, const Progress& progress) {
  const Sizes z = Sizes::of(o);
  const auto tasks = classification_tasks(o, z);
  const std::string model = pretrained_backbone(o, z, tasks, progress);
  const auto methods = merge_methods(tasks.size());
  ExperimentResult r;
  r.name = "merging";
  r.title = "Merging: task LoRAs trained separately, merged post hoc";
  r.claim =
      "Modules trained separately can be aggregated in parameter space (averaging, task arithmetic, TIES, DARE) "
      "into one module that serves every task, with TIES/DARE reducing the interference of plain averaging "
      "(survey §5.1).";
  r.design = {
      "Each task's LoRA (rank " + std::to_string(z.lora_r) + ", all linear layers) and head are trained alone for " +
          std::to_string(z.steps_per_task) +
          " steps on the frozen backbone, then merged into one LoRA; every "
          "task is evaluated with its own head over the merged LoRA.",
      "Merges are done on the update ΔW = s·B·A (cat is exact for averaging and task arithmetic; TIES and DARE "
      "trim ΔW and keep its rank-" +
          std::to_string(z.lora_r * static_cast<int64_t>(tasks.size())) +
          " SVD). λ and density are the papers' defaults, not tuned on validation data (the papers tune them), so "
          "this is the untuned case.",
      "References: each adapter alone on its own task (the ceiling a merge aims for), the heads alone on the bare "
      "backbone (what is left when a merge cancels the adapters), and one LoRA trained on all tasks jointly for "
      "the same total steps (multi-task training).",
  };
  for (const auto& t : tasks) {
    r.tasks.push_back(t.name);
    r.task_notes[t.name] = t.note;
  }
  r.metrics = {"average accuracy"};
  r.methods.push_back(method_named("each adapter alone (own task)"));
  for (const auto& m : methods) r.methods.push_back(method_named("merged: " + m.label));
  r.methods.push_back(method_named("heads only (no adapter)"));
  r.methods.push_back(method_named("multi-task LoRA (joint training)"));
  const auto data = datasets(tasks);
  const int64_t T = static_cast<int64_t>(tasks.size());
  for (int64_t seed = 0; seed < o.seeds; ++seed) {
    const std::string dir = fs::join(o.output, "merging/runs/seed" + std::to_string(seed));
    auto t0 = std::chrono::steady_clock::now();
    // Per-task LoRAs: the continual stage trains each alone on the frozen backbone.
    auto c = run_config(z, model, tasks, fs::join(dir, "separate"), static_cast<uint64_t>(seed), z.steps_per_task);
    c.continual.enabled = true;
    c.continual.module = lora(z.lora_r);
    auto sep = run(c, data, progress, "seed " + std::to_string(seed) + " separate");
    auto& alone = r.methods[0];
    alone.trainable_parameters = sep.continual->trainable_parameters;
    std::map<std::string, double> own;
    for (size_t j = 0; j < tasks.size(); ++j) own[tasks[j].name] = sep.continual->accuracy.back()[j];
    add(alone, own);
    alone.seconds += seconds_since(t0);
    const std::string heads = fs::join(c.output, "heads.safetensors");

    // Merge on a loaded backbone, write each merged LoRA, evaluate it with the heads.
    auto backbone = load_backbone(model);
    std::vector<Adapter> inputs;
    for (const auto& t : tasks)
      inputs.push_back(load_adapter(*backbone, fs::join(c.output, "modules/" + train::continual_module_name(t.name)),
                                    "in_" + train::continual_module_name(t.name)));
    for (size_t k = 0; k < methods.size(); ++k) {
      t0 = std::chrono::steady_clock::now();
      const auto& mm = methods[k];
      LoraMergeOptions opts(std::vector<double>(tasks.size(), mm.weight));
      opts.combination_type(mm.combination_type).density(mm.density).seed(static_cast<uint64_t>(seed));
      opts.svd_rank(z.lora_r * T);
      auto merged = merge_lora_adapters(*backbone, inputs, opts, "merged" + std::to_string(k));
      const std::string out = fs::join(dir, "merged/" + std::to_string(k));
      save_adapter(merged, out);
      merged.remove();
      if (progress) progress("seed " + std::to_string(seed) + " merged: " + mm.label);
      auto& m = r.methods[1 + k];
      m.trainable_parameters = alone.trainable_parameters;
      add(m, evaluate(model, {out}, heads, tasks, z));
      m.seconds += seconds_since(t0);
    }
    auto& bare = r.methods[1 + methods.size()];
    bare.trainable_parameters = 0;
    add(bare, evaluate(model, {}, heads, tasks, z));

    t0 = std::chrono::steady_clock::now();
    auto j = run_config(z, model, tasks, fs::join(dir, "joint"), static_cast<uint64_t>(seed), z.steps_per_task * T);
    j.modules = {{"joint", lora(z.lora_r), "", true}};
    auto joint = run(j, data, progress, "seed " + std::to_string(seed) + " joint");
    auto& mt = r.methods.back();
    mt.trainable_parameters = joint.trainable_parameters;
    std::map<std::string, double> acc;
    for (const auto& t : tasks) acc[t.name] = joint.eval.at(t.name).at("accuracy");
    add(mt, acc);
    mt.seconds += seconds_since(t0);
  }

  auto avg = [&](const std::string& method) { return mean_of(r.method(method).metrics.at("average accuracy")); };
  const double ceiling = avg("each adapter alone (own task)"), floor = avg("heads only (no adapter)");
  std::string best;
  double best_acc = -1;
  for (const auto& m : methods)
    if (avg("merged: " + m.label) > best_acc) best_acc = avg("merged: " + m.label), best = m.label;
  r.findings.push_back("Each adapter alone reaches " + fmt(ceiling) +
                       " on its own task; the heads over the bare backbone " + fmt(floor) +
                       "; joint multi-task training " + fmt(avg("multi-task LoRA (joint training)")) + ".");
  r.findings.push_back("The best merge is " + best + " at " + fmt(best_acc) + ": it keeps " +
                       fmt(ceiling > floor ? (best_acc - floor) / (ceiling - floor) : NAN, 2) +
                       " of what the adapters add over the bare backbone.");
  // Trimming vs plain averaging, against the seeds' spread (one seed: any difference counts).
  const auto& plain = r.method("merged: " + methods[0].label).metrics.at("average accuracy");
  for (size_t k : {size_t{2}, size_t{3}}) {
    const auto& v = r.method("merged: " + methods[k].label).metrics.at("average accuracy");
    const double gap = mean_of(v) - mean_of(plain), noise = std::max(std_of(v), std_of(plain));
    r.findings.push_back(methods[k].label + " " + fmt(mean_of(v)) + " vs plain averaging " + fmt(mean_of(plain)) +
                         " (difference " + fmt(gap) + ", seed std up to " + fmt(noise) + "): " +
                         verdict(gap, noise, "trimming helps here, as the papers report.",
                                 "trimming hurts here (untuned λ and density).", 0.01, "."));
  }
  return r;
}

}  // namespace modula::experiment::detail
