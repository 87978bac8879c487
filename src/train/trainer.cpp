// The trainer: stages (main / continual / full fine-tuning baseline) made of phases; each
// phase runs the training loop (loop.h) over sampled single-task batches, with periodic
// evaluation, early stopping and checkpoints (trainer_phase.cpp).
//
// Every random choice is a function of (seed, phase, step): task sampling, data order
// (per task and epoch), MLM masking. With the optimizer state, data positions and torch's
// CPU RNG in the checkpoint, a resumed run repeats the uninterrupted one exactly.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

#include "modula/backbone/registry.h"
#include "modula/composition/composition_module.h"
#include "modula/train/run_output.h"
#include "trainer_state.h"

namespace modula::train {
namespace {

using detail::kTag;
using detail::mean_of;
using json = nlohmann::json;

json default_continual_module() {
  return {{"peft_type", "LORA"}, {"r", 8}, {"lora_alpha", 16}, {"target_modules", "all-linear"}};
}

// Forgetting of task j (Chaudhry et al. 2018): its best accuracy before the last task
// minus its final accuracy; averaged over j < T−1.
void summarize(ContinualResult& cr) {
  const size_t T = cr.accuracy.size();
  if (T == 0) return;
  std::vector<double> forgetting;
  for (size_t j = 0; j + 1 < T; ++j) {
    double best = -INFINITY;
    for (size_t t = j; t + 1 < T; ++t) best = std::max(best, cr.accuracy[t][j]);
    forgetting.push_back(best - cr.accuracy[T - 1][j]);
  }
  cr.average_forgetting = mean_of(forgetting);
  cr.average_accuracy = mean_of(cr.accuracy.back());
}

}  // namespace

void Trainer::State::save_heads() {
  if (!writes()) return;
  io::NamedTensors heads;
  json meta = json::object();
  for (auto& t : tasks) {
    meta[t.cfg.name] = {{"type", to_string(t.cfg.type)}, {"labels", t.enc.labels()}};
    if (t.head)
      for (auto& p : t.head->named_parameters())
        heads.emplace_back(t.cfg.name + "." + p.key(), p.value().detach().cpu());
  }
  if (!heads.empty()) io::save_safetensors(out("heads.safetensors"), heads, {{"format", "pt"}});
  std::ofstream(out("heads.json")) << meta.dump(2) << "\n";
}

// PEFT's task_type for the tasks a module served (a task naming no modules runs them all):
// one type, or FEATURE_EXTRACTION (masked LM, several types, none).
std::string Trainer::State::peft_task_type(const std::string& adapter) const {
  std::set<std::string> types;
  for (const auto& [task, names] : enabled) {
    if (!names.empty() && std::find(names.begin(), names.end(), adapter) == names.end()) continue;
    const auto type = tasks[task].cfg.type;
    types.insert(type == TaskType::CausalLM                 ? "CAUSAL_LM"
                 : type == TaskType::SequenceClassification ? "SEQ_CLS"
                 : type == TaskType::TokenClassification    ? "TOKEN_CLS"
                                                            : "FEATURE_EXTRACTION");  // masked LM
  }
  return types.size() == 1 ? *types.begin() : "FEATURE_EXTRACTION";
}

void Trainer::State::save_modules(const std::function<bool(size_t)>& which) {
  if (!writes()) return;
  // What PEFT's AutoPeftModel* needs to rebuild the model: the base model and the task.
  const std::string base = fs::is_file(cfg.model) ? fs::parent(cfg.model) : cfg.model;
  for (size_t i = 0; i < adapters.size(); ++i) {
    if (!which(i)) continue;
    auto& c = adapters[i].config;
    if (c.is_object()) {
      if (c.value("base_model_name_or_path", json()).is_null()) c["base_model_name_or_path"] = base;
      if (c.value("task_type", json()).is_null()) c["task_type"] = peft_task_type(adapters[i].name);
      if (!c.contains("revision")) c["revision"] = nullptr;
      c["inference_mode"] = true;
    }
    save_adapter(adapters[i], out("modules/" + adapters[i].name));
  }
}

// ---- stages ------------------------------------------------------------------------
void Trainer::State::main_stage(TrainResult& r) {
  build(cfg.train_backbone, cfg.modules, /*compose=*/true);
  for (size_t i = 0; i < tasks.size(); ++i) enabled[i] = tasks[i].cfg.modules;
  Phase ph{"main", 0, {}, {}, cfg.train_backbone, 0};
  for (size_t i = 0; i < tasks.size(); ++i) ph.tasks.push_back(i);
  for (size_t i = 0; i < adapters.size(); ++i)
    if (adapter_trainable[i] && !fused.count(adapters[i].name)) ph.train_adapters.insert(adapters[i].name);
  r.total_parameters = 0;
  for (auto& p : model->parameters()) r.total_parameters += p.numel();
  for (auto& t : tasks)
    if (t.head) r.total_parameters += t.head->weight.numel() + t.head->bias.numel();
  ph.global_offset = dense_phase(ph);
  auto outcome = run_phase(ph);
  for (auto& p : model->parameters())
    if (p.requires_grad()) r.trainable_parameters += p.numel();
  for (auto& t : tasks)
    if (t.head && t.head->weight.requires_grad())
      r.trainable_parameters += t.head->weight.numel() + t.head->bias.numel();
  for (auto& a : adapters)
    if (a.input)
      for (auto& p : a.input->parameters())
        if (p.requires_grad()) r.trainable_parameters += p.numel();
  r.steps = outcome.steps, r.final_loss = outcome.last_loss, r.stopped_early = outcome.stopped_early;
  for (size_t i = 0; i < tasks.size(); ++i)
    if (!tasks[i].eval.empty()) {
      r.eval[tasks[i].cfg.name] = evaluate(i);
      EvalInfo e{outcome.steps, "final", tasks[i].cfg.name, r.eval[tasks[i].cfg.name]};
      if (cb.on_eval) cb.on_eval(e);
    }
  save_modules([&](size_t i) { return adapter_trainable[i]; });
  save_heads();
  if (composition && writes()) {
    for (const auto& f : composition->fusions) save_fusion(f, out("compose/" + f.name));
    fs::make_dirs(out("compose"));
    std::ofstream(out("compose/spec.txt")) << cfg.compose << "\n";
    save_composition(*composition, out("compose"));  // a MODULA_COMPOSITION folder over the run's modules
  }
  if ((cfg.train_backbone || cfg.save_model) && writes()) {
    if (composition) remove_composition(*composition);
    for (auto& a : adapters) remove_adapter(a);
    save_backbone(*model, out("model"));
    note("model written to " + out("model"));
  }
}

// LT-SFT (Ansell et al. 2022) as a stage of the run: modules with a dense phase (a
// MODULA_SPARSE_FT with mask: lottery_ticket) first fine-tune their chosen weights densely on
// the run's tasks; each then keeps the top-K |θ₁ − θ₀| as its mask, the weights and heads go
// back to θ₀, and the main phase trains the sparse values. Returns the steps it ran.
int64_t Trainer::State::dense_phase(const Phase& main) {
  Phase ph{"lt_sft", 0, main.tasks, {}, false, main.global_offset};
  for (auto& a : adapters)
    if (a.state && a.state->dense_phase_steps() > 0 && main.train_adapters.count(a.name)) {
      ph.train_adapters.insert(a.name);
      ph.max_steps = std::max(ph.max_steps, a.state->dense_phase_steps());
    }
  if (ph.train_adapters.empty()) return 0;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> heads;  // θ₀ of the heads
  for (auto& t : tasks)
    if (t.head)
      for (auto& p : t.head->parameters()) heads.emplace_back(p, p.detach().clone());
  run_phase(ph);
  torch::NoGradGuard no_grad;
  for (auto& [p, theta0] : heads) p.copy_(theta0), p.mutable_grad() = torch::Tensor();
  for (auto& a : adapters)
    if (ph.train_adapters.count(a.name)) a.state->end_dense_phase();
  note("lt_sft: masks selected after " + std::to_string(ph.max_steps) + " dense steps");
  return main.global_offset + ph.max_steps;
}

// Tasks in sequence (survey §6.3): one new module per task ("continual"), or the whole
// backbone ("baseline") or one module ("shared") trained on each task in turn; after each
// task every task is evaluated.
ContinualResult Trainer::State::sequence_stage(const std::string& stage, int64_t stage_offset) {
  std::vector<ModuleSpec> specs;
  const bool baseline = stage == "baseline", shared = stage == "shared";
  const json module = cfg.continual.module.is_null() ? default_continual_module() : cfg.continual.module;
  if (shared) specs.push_back({continual_module_name("shared"), module, "", true});
  if (!baseline && !shared)
    for (auto& t : cfg.tasks) specs.push_back({continual_module_name(t.name), module, "", true});
  build(baseline, specs);
  if (shared)
    for (size_t j = 0; j < tasks.size(); ++j) enabled[j] = {specs[0].name};
  for (auto& a : adapters)
    if (a.state && a.state->dense_phase_steps() > 0)
      throw_error<ConfigError>(kTag, cfg.source +
                                         ": 'continual.module': mask: lottery_ticket (LT-SFT) is not "
                                         "supported in continual learning; use mask: random");
  ContinualResult cr;
  for (auto& t : tasks) cr.tasks.push_back(t.cfg.name);
  const json& saved = results.contains(stage + "_rows") ? results[stage + "_rows"] : json::array();
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (!baseline && !shared) enabled[i] = {specs[i].name};
    if (i < saved.size() &&
        !(resume_from && resume_from->data.state.value("phase", int64_t{-1}) == static_cast<int64_t>(i) &&
          resume_from->data.state.value("stage", "") == stage)) {
      cr.accuracy.push_back(saved[i].get<std::vector<double>>());  // finished before the resume
      continue;
    }
    Phase ph{stage,    static_cast<int64_t>(i),
             {i},      {},
             baseline, stage_offset + static_cast<int64_t>(i) * cfg.optim.max_steps};
    if (!baseline) ph.train_adapters = {specs[shared ? 0 : i].name};
    if (resume_from && resume_from->data.state.value("stage", "") == stage &&
        resume_from->data.state.value("phase", int64_t{0}) > static_cast<int64_t>(i))
      continue;
    run_phase(ph);
    std::vector<double> row;
    for (size_t j = 0; j < tasks.size(); ++j) {
      auto m = evaluate(j);
      row.push_back(m["accuracy"]);
      EvalInfo e{cfg.optim.max_steps, ph.label(), tasks[j].cfg.name, m};
      if (cb.on_eval) cb.on_eval(e);
    }
    log_line({{"type", "continual"}, {"stage", stage}, {"after_task", tasks[i].cfg.name}, {"accuracy", row}});
    cr.accuracy.push_back(row);
    results[stage + "_rows"] = cr.accuracy;
  }
  summarize(cr);
  for (auto& p : model->parameters())
    if (baseline) cr.trainable_parameters += p.numel();
  for (auto& a : adapters)
    for (auto& p : a.parameters()) cr.trainable_parameters += p.numel();
  for (auto& t : tasks)
    if (t.head) cr.trainable_parameters += t.head->weight.numel() + t.head->bias.numel();
  if (!baseline && !shared) {
    save_modules([](size_t) { return true; });
    save_heads();
  }
  return cr;
}

Trainer::Trainer(TrainConfig config, Datasets data, std::shared_ptr<Distributed> dist)
    : state_(std::make_unique<State>()) {
  auto& s = *state_;
  s.cfg = std::move(config);
  s.dist = std::move(dist);
  try {
    s.device = torch::Device(s.cfg.device);
  } catch (const std::exception&) {
    throw_error<ConfigError>("train",
                             s.cfg.source + ": 'device' must be cpu, cuda or cuda:N, got '" + s.cfg.device + "'");
  }
  if (s.device.is_cuda() && !torch::cuda::is_available())
    throw_error<TrainError>(kTag, "device '" + s.cfg.device + "' requested but CUDA is not available");
  s.autocast = s.device.is_cuda() && s.cfg.optim.bf16 != "false";
  if (s.cfg.optim.bf16 == "true" && !s.device.is_cuda())
    throw_error<TrainError>(kTag, "optim.bf16 = true needs a CUDA device (bf16 autocast)");
  try {
    s.model_config = io::load_hf_config(s.cfg.model);
  } catch (const std::exception& e) {
    throw_error<ConfigError>("train", s.cfg.source + ": 'model': " + e.what());
  }
  s.load_data(data);
}

Trainer::~Trainer() = default;

const TrainConfig& Trainer::config() const { return state_->cfg; }

TrainResult Trainer::run(const Callbacks& callbacks, bool resume) {
  auto& s = *state_;
  s.cb = callbacks;
  fs::make_dirs(s.cfg.output);
  // A fresh run into a folder that held another (--overwrite): the old run's outputs go
  // first, so a kill before this run finishes never leaves them beside this run's config
  // (eval would take the old modules for this run's). model/ keeps what the CLI put there
  // before the run (pretrain's tokenizer); its config.json marks a written backbone.
  if (!resume && s.writes())
    for (const char* f :
         {"result.json", "report.html", "modules", "compose", "heads.safetensors", "heads.json", "model/config.json",
          "model/model.safetensors", "checkpoints", "metrics.jsonl", "metrics.csv"})
      fs::remove_tree(s.out(f));
  // The resolved config: what load_run (run_output.h) and `modula eval --run` read back.
  if (s.writes()) fs::write_file(s.out(kRunConfigFile), to_json(s.cfg).dump(2) + "\n");
  TrainResult r;
  r.output = s.cfg.output;
  if (resume) {
    s.resume_from = load_latest_checkpoint(s.out("checkpoints"));
    if (s.resume_from) {
      for (const auto& why : s.resume_from->skipped) s.note("skipped incomplete checkpoint " + why);
      s.results = s.resume_from->data.state.value("results", json::object());
      r.resumed = true;
    }
  }
  if (s.parallel()) {  // every rank must continue from the same checkpoint
    auto at = torch::tensor({s.resume_from ? s.resume_from->step : int64_t{-1}}, torch::kInt64).to(s.comm_device());
    auto lo = at.clone(), hi = at.clone();
    s.dist->all_reduce(lo, Distributed::Op::Min);
    s.dist->all_reduce(hi, Distributed::Op::Max);
    if (lo.item<int64_t>() != hi.item<int64_t>())
      throw_error<TrainError>(kTag, "rank " + std::to_string(s.dist->rank()) + " resumes from " +
                                        (s.resume_from ? "step " + std::to_string(s.resume_from->step) : "scratch") +
                                        " but another rank does not: every rank must see the same " +
                                        s.out("checkpoints") + " (a shared file system)");
  }
  // After the ranks agree: resuming with nothing to resume is a mistake, not a fresh start.
  if (resume && !s.resume_from)
    throw_error<TrainError>(kTag, "resume: no complete checkpoint in " + s.out("checkpoints") +
                                      " to resume from; run without resume to start afresh");
  if (!s.resume_from && s.writes()) fs::remove_tree(s.out("checkpoints"));
  // Metrics: keep the lines up to the checkpoint on resume (later ones are repeated).
  std::vector<std::string> kept;
  if (s.resume_from && s.writes()) {
    std::ifstream in(s.out("metrics.jsonl"));
    int64_t limit = s.resume_from->step;
    for (std::string line; std::getline(in, line);) {
      auto j = json::parse(line, nullptr, false);
      if (!j.is_discarded() && j.value("global_step", int64_t{0}) <= limit) kept.push_back(line);
    }
  }
  if (s.writes()) s.metrics.open(s.cfg.output, kept);  // metrics.jsonl + metrics.csv

  std::string resume_stage = s.resume_from ? s.resume_from->data.state.value("stage", "main") : "";
  if (!s.cfg.continual.enabled) {
    s.main_stage(r);
  } else {
    const int64_t T = static_cast<int64_t>(s.cfg.tasks.size());
    std::vector<std::pair<std::string, std::optional<ContinualResult>*>> stages = {{"continual", &r.continual}};
    if (s.cfg.continual.full_finetune_baseline) stages.push_back({"baseline", &r.baseline});
    if (s.cfg.continual.shared_module_baseline) stages.push_back({"shared", &r.shared});
    size_t resume_at = 0;  // stages before the checkpoint's finished: their rows are in the results
    for (size_t k = 0; k < stages.size(); ++k)
      if (stages[k].first == resume_stage) resume_at = k;
    for (size_t k = 0; k < stages.size(); ++k) {
      if (k < resume_at) {
        ContinualResult c;
        for (auto& t : s.cfg.tasks) c.tasks.push_back(t.name);
        c.accuracy = s.results.at(stages[k].first + "_rows").get<std::vector<std::vector<double>>>();
        summarize(c);
        *stages[k].second = c;
      } else {
        *stages[k].second = s.sequence_stage(stages[k].first, static_cast<int64_t>(k) * T * s.cfg.optim.max_steps);
      }
    }
    r.steps = s.cfg.optim.max_steps * T;
  }
  json res = {{"steps", r.steps},
              {"final_loss", r.final_loss},
              {"stopped_early", r.stopped_early},
              {"resumed", r.resumed},
              {"trainable_parameters", r.trainable_parameters},
              {"total_parameters", r.total_parameters},
              {"eval", r.eval}};
  auto cont = [](const ContinualResult& c) {
    return json{{"tasks", c.tasks},
                {"accuracy", c.accuracy},
                {"average_forgetting", c.average_forgetting},
                {"average_accuracy", c.average_accuracy},
                {"trainable_parameters", c.trainable_parameters}};
  };
  if (r.continual) res["continual"] = cont(*r.continual);
  if (r.baseline) res["baseline"] = cont(*r.baseline);
  if (r.shared) res["shared"] = cont(*r.shared);
  if (s.writes()) {
    fs::write_file(s.out("result.json"), res.dump(2) + "\n");
  }
  s.metrics.close();
  return r;
}

TrainResult train(const TrainConfig& config, const Datasets& data, const Callbacks& callbacks, bool resume) {
  return Trainer(config, data).run(callbacks, resume);
}

}  // namespace modula::train
