// The quickstart main job: options, the result table and report, and the run (pretraining,
// then the experiments in quickstart/{continual,interference,generalisation,moe}.cpp).
#include "quickstart/quickstart.h"

#include "modula/backbone/registry.h"
#include "modula/composition/registry.h"
#include "modula/util/fs.h"
#include "quickstart/common.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>

namespace modula::train {

using namespace quickstart_detail;

QuickstartOptions QuickstartOptions::tiny() {
  return QuickstartOptions()
      .pretrain_steps(150)
      .finetune_steps(40)
      .batch_size(32)
      .eval_examples(64)
      .log_every(10)
      .hidden_size(32)
      .intermediate_size(64)
      .num_heads(2)
      .module_lr(1e-2)
      .data(SequenceTaskOptions().num_symbols(4).min_length(1).max_length(3))
      .pretrain_tasks({"reverse", "shift"})
      .continual_tasks({"reverse", "shift"})
      .interference_tasks({"reverse", "shift"})
      .generalisation_tasks({"reverse+shift", "sort"})
      .heldout_tasks({"sort+reverse"})
      .generalisation_steps(40)
      .few_shot_examples(16)
      .adapt_steps(10)
      .moe_tasks({"reverse+shift", "sort"})
      .moe_steps(30);
}

QuickstartOptions QuickstartOptions::full() {
  return QuickstartOptions()
      .pretrain_steps(3000)
      .finetune_steps(400)
      .hidden_size(128)
      .intermediate_size(256)
      .eval_examples(1024)
      .continual_tasks({"shift+duplicate", "reverse+shift", "sort", "duplicate+reverse", "sort+shift"})
      .interference_tasks({"reverse", "shift", "sort", "reverse+shift"})
      .generalisation_steps(800)
      .adapt_steps(100)
      .moe_steps(800);
}

void QuickstartOptions::validate() const {
  data_.validate();
  auto positive = [](int64_t v, const char* name) {
    if (v < 1) bad(std::string(name) + " must be >= 1, got " + std::to_string(v));
  };
  positive(hidden_size_, "hidden_size");
  positive(num_layers_, "num_layers");
  positive(num_heads_, "num_heads");
  positive(intermediate_size_, "intermediate_size");
  positive(pretrain_steps_, "pretrain_steps");
  positive(finetune_steps_, "finetune_steps");
  positive(lora_r_, "lora_r");
  positive(batch_size_, "batch_size");
  positive(eval_examples_, "eval_examples");
  positive(log_every_, "log_every");
  if (hidden_size_ % num_heads_ != 0)
    bad("hidden_size (" + std::to_string(hidden_size_) + ") must be divisible by num_heads (" +
        std::to_string(num_heads_) + ")");
  if (!(pretrain_lr_ > 0) || !(module_lr_ > 0) || !(full_lr_ > 0)) bad("learning rates must be > 0");
  if (pretrain_tasks_.empty()) bad("pretrain_tasks is empty");
  for (const auto& t : parse_tasks(pretrain_tasks_))
    if (t.skills.size() != 1) bad("pretrain_tasks are primitive skills; '" + t.name + "' composes several");
  positive(generalisation_steps_, "generalisation_steps");
  positive(few_shot_examples_, "few_shot_examples");
  positive(adapt_steps_, "adapt_steps");
  positive(poly_skills_, "poly_skills");
  positive(moe_experts_, "moe_experts");
  positive(moe_steps_, "moe_steps");
  if (moe_k_ < 1 || moe_k_ > moe_experts_)
    bad("moe_k must be in [1, moe_experts = " + std::to_string(moe_experts_) + "], got " + std::to_string(moe_k_));
  if (!(routing_lr_ > 0)) bad("routing_lr must be > 0");
  if (load_balance_coef_ < 0) bad("load_balance_coef must be >= 0");
  const std::vector<std::string> known{"continual", "interference", "generalisation", "moe"};
  const std::string choices = "(choose from: continual, interference, generalisation, moe)";
  if (experiments_.empty()) bad("experiments is empty " + choices);
  for (const auto& x : experiments_)
    if (std::find(known.begin(), known.end(), x) == known.end()) bad("unknown experiment '" + x + "' " + choices);
  if (continual_tasks_.size() < 2) bad("continual_tasks needs at least 2 tasks");
  if (interference_tasks_.size() < 2) bad("interference_tasks needs at least 2 tasks");
  if (generalisation_tasks_.empty()) bad("generalisation_tasks is empty");
  if (heldout_tasks_.empty()) bad("heldout_tasks is empty");
  if (moe_tasks_.size() < 2) bad("moe_tasks needs at least 2 tasks");
  for (const auto* list :
       {&continual_tasks_, &interference_tasks_, &generalisation_tasks_, &heldout_tasks_, &moe_tasks_})
    for (size_t i = 0; i < list->size(); ++i) {
      parse_task((*list)[i]);
      for (size_t j = 0; j < i; ++j)
        if ((*list)[j] == (*list)[i]) bad("task '" + (*list)[i] + "' is listed twice");
    }
  // Held-out tasks: new compositions of seen skills, and not a training task in disguise
  // (shift commutes with every skill: "duplicate+shift" computes "shift+duplicate").
  auto train = parse_tasks(generalisation_tasks_);
  for (const auto& h : parse_tasks(heldout_tasks_)) {
    for (Skill s : h.skills) {
      bool seen = false;
      for (const auto& t : train) seen = seen || std::find(t.skills.begin(), t.skills.end(), s) != t.skills.end();
      if (!seen)
        bad("held-out task '" + h.name + "' uses skill '" + to_string(s) +
            "', which no generalisation_tasks entry trains");
    }
    for (const auto& t : train) {
      bool same = true;
      for (const std::vector<int64_t>& x : {std::vector<int64_t>{0, 2, 1}, {3, 1, 1, 0}, {1, 0, 2, 3, 1}})
        same = same && apply_task(h, x, 4) == apply_task(t, x, 4);
      if (same) bad("held-out task '" + h.name + "' computes the same function as training task '" + t.name + "'");
    }
  }
}

const MethodResult& ExperimentResult::method(const std::string& name) const {
  for (const auto& m : methods)
    if (m.method == name) return m;
  bad("experiment '" + key + "' has no method '" + name + "'");
}

double average_forgetting(const std::vector<std::vector<double>>& a) {
  if (a.size() < 2) return 0.0;
  size_t T = a.size() - 1;
  double sum = 0;
  for (size_t j = 0; j < T; ++j) {
    double best = -INFINITY;
    for (size_t t = j; t < T; ++t) best = std::max(best, a[t][j]);
    sum += best - a[T][j];  // max_{t<T} a[t][j] - a[T][j]
  }
  return sum / static_cast<double>(T);
}

Table QuickstartResult::summary_table() const {
  Table t{"modula quickstart: exact-match accuracy on held-out inputs",
          {"experiment", "method", "trainable params", "active params", "final accuracy", "held-out tasks",
           "forgetting", "seconds"},
          {},
          "final accuracy: mean over the (training) tasks at the end; held-out tasks: (c)'s compositions never trained "
          "on, learned from a few examples; forgetting: mean over earlier tasks of (best - final) accuracy; active "
          "params: the trained parameters one token's forward uses."};
  for (const auto& e : experiments)
    for (const auto& m : e.methods)
      t.rows.push_back({e.title, m.method, std::to_string(m.trainable_parameters), std::to_string(m.active_parameters),
                        fmt(m.final_accuracy), fmt(m.heldout_accuracy), fmt(m.forgetting), fmt(m.seconds, 1)});
  return t;
}

std::vector<Matrix> QuickstartResult::accuracy_matrices(const ExperimentResult& e) const {
  std::vector<Matrix> ms;
  for (const auto& m : e.methods) {
    Matrix x;
    x.title = e.title + ": " + m.method;
    x.row_labels = m.stages;
    x.col_labels = e.tasks;
    for (auto& label : x.col_labels)
      if (std::find(e.heldout_tasks.begin(), e.heldout_tasks.end(), label) != e.heldout_tasks.end())
        label += " (held out)";
    x.values = m.accuracy;
    x.caption = "rows: training stage; columns: task; cells: held-out exact-match accuracy";
    ms.push_back(std::move(x));
  }
  return ms;
}

Report QuickstartResult::report() const {
  Report r("modula quickstart");
  r.paragraph("A tiny Llama (" + std::to_string(backbone_parameters) + " parameters, " +
              std::to_string(options.num_layers()) + " layers, hidden " + std::to_string(options.hidden_size()) +
              ") pretrained on compositional sequence tasks with a task marker, then fine-tuned on tasks whose "
              "identity is metadata only. Accuracy: exact match of the whole answer on held-out generated inputs. "
              "Seed " +
              std::to_string(options.seed()) + "; total " + fmt(seconds, 1) + " s.");
  r.add(summary_table());
  r.heading("Pretraining");
  r.add(LineChart{"pretraining loss (answer tokens)",
                  "step",
                  "loss",
                  {{"pretraining", pretrain_loss.step, pretrain_loss.loss}},
                  true});
  Table pre{"held-out accuracy after pretraining (marker in the text)", {"task", "accuracy"}, {}, ""};
  for (const auto& [task, acc] : pretrain_accuracy) pre.rows.push_back({task, fmt(acc)});
  r.add(pre);
  for (const auto& e : experiments) {
    r.heading(e.title);
    r.paragraph(e.claim + " Tasks: " + [&] {
      std::string s;
      for (const auto& t : e.tasks) s += (s.empty() ? "" : ", ") + t;
      return s;
    }() + ".");
    LineChart chart{e.title + ": fine-tuning loss", "step", "loss", {}, true};
    for (const auto& m : e.methods) chart.series.push_back({m.method, m.loss.step, m.loss.loss});
    for (const auto& note : e.notes) r.paragraph(note);
    r.add(chart);
    LineChart aux{e.title + ": router loss (load balancing + z-loss)", "step", "loss", {}, false};
    for (const auto& m : e.methods)
      if (!m.aux.loss.empty()) aux.series.push_back({m.method, m.aux.step, m.aux.loss});
    if (!aux.series.empty()) r.add(aux);
    Table params{e.title + ": parameters and accuracy",
                 {"method", "trainable params", "active params", "final accuracy", "held-out tasks"},
                 {},
                 ""};
    for (const auto& m : e.methods)
      params.rows.push_back({m.method, std::to_string(m.trainable_parameters), std::to_string(m.active_parameters),
                             fmt(m.final_accuracy), fmt(m.heldout_accuracy)});
    r.add(params);
    for (auto& m : accuracy_matrices(e)) r.add(m);
  }
  return r;
}

QuickstartResult run_quickstart(const QuickstartOptions& o, const Progress& progress) {
  o.validate();
#if defined(__GLIBC__)
  // Many small models' activations sit just above glibc's mmap threshold: every step would
  // map, fault in and unmap them. Keeping them on the heap makes the run 2-3x faster.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
  auto t0 = Clock::now();
  torch::manual_seed(o.seed());  // LoRA A init draws from the global generator
  QuickstartResult result;
  result.options = o;
  TaskSampler sampler(o.data(), o.seed());
  auto pre_tasks = parse_tasks(o.pretrain_tasks());
  std::vector<Task> every = pre_tasks;
  for (auto& t : parse_tasks(o.continual_tasks())) every.push_back(t);
  for (const auto* list : {&o.interference_tasks(), &o.generalisation_tasks(), &o.heldout_tasks(), &o.moe_tasks()})
    for (auto& t : parse_tasks(*list)) every.push_back(t);
  auto model = build_backbone(o, sampler.vocab(), max_sequence_length(every, o.data(), true));
  result.backbone_parameters = count(model->parameters());
  Context c{o, progress, sampler, model};

  c.say("pretraining a tiny Llama (" + std::to_string(result.backbone_parameters) + " parameters) on " +
        std::to_string(pre_tasks.size()) + " skills with task markers, " + std::to_string(o.pretrain_steps()) +
        " steps");
  auto pre_ids = iota_ids(pre_tasks.size());
  result.pretrain_loss.name = "pretraining";
  fit(
      *model, model->parameters(),
      [&] { return sampler.sample(pre_tasks, pre_ids, o.batch_size(), Split::Train, true); }, o.pretrain_steps(),
      o.pretrain_lr(), o.log_every(), result.pretrain_loss, "pretraining", progress);
  auto pre_evals = eval_sets(o, pre_tasks, true);
  std::string line;
  for (size_t k = 0; k < pre_tasks.size(); ++k) {
    double acc = accuracy(*model, pre_evals[k]);
    result.pretrain_accuracy[pre_tasks[k].name] = acc;
    line += " " + pre_tasks[k].name + " " + fmt(acc);
  }
  c.say(" held-out accuracy with marker:" + line);
  if (!o.output().empty()) save_backbone(*model, fs::join(o.output(), "backbone"));
  for (const auto& x : o.experiments()) {
    if (x == "continual") {
      c.say("(a) continual learning on " + std::to_string(o.continual_tasks().size()) + " tasks, markers in the text");
      result.experiments.push_back(continual(c));
    } else if (x == "interference") {
      c.say("(b) multi-task interference on " + std::to_string(o.interference_tasks().size()) +
            " tasks, markers in the text");
      result.experiments.push_back(interference(c));
    } else if (x == "generalisation") {
      c.say("(c) systematic generalisation: " + std::to_string(o.generalisation_tasks().size()) +
            " training compositions, " + std::to_string(o.heldout_tasks().size()) + " held out");
      result.experiments.push_back(generalisation(c));
    } else if (x == "moe") {
      c.say("(d) mixture of LoRA experts on " + std::to_string(o.moe_tasks().size()) + " tasks, no task id");
      result.experiments.push_back(moe(c));
    }
  }
  result.seconds = since(t0);
  if (!o.output().empty()) {
    result.output = o.output();
    result.report().write_html(fs::join(o.output(), "report.html"));
  }
  return result;
}

}  // namespace modula::train
