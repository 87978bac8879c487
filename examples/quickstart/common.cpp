// The quickstart's shared parts: the tiny backbone, fit() over the one training loop,
// held-out accuracy, naming helpers.
#include "quickstart/common.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <stdexcept>

#include "modula/backbone/registry.h"

namespace modula::train::quickstart_detail {
namespace {

torch::Tensor logits_of(Backbone& model, const torch::Tensor& input_ids) {
  BackboneInput in;
  in.input_ids = input_ids;
  return model.forward(in).logits;
}

// Mean loss of each log_every window into the curves, progress every 8 windows.
struct CurveWindow {
  int64_t log_every, steps, base;
  LossCurve& curve;
  LossCurve* aux_curve;
  const std::string& phase;
  const Progress& progress;
  double loss = 0, aux = 0;
  int64_t n = 0;

  void add(const StepStats& s) {
    loss += s.loss, aux += s.aux_loss;
    if (++n < log_every && s.step < steps) return;
    curve.step.push_back(static_cast<double>(base + s.step));
    curve.loss.push_back(loss / static_cast<double>(n));
    if (aux_curve) {
      aux_curve->step.push_back(curve.step.back());
      aux_curve->loss.push_back(aux / static_cast<double>(n));
    }
    if (progress && s.step % (log_every * 8) == 0)
      progress("  " + phase + " step " + std::to_string(s.step) + "/" + std::to_string(steps) + " loss " +
               fmt(curve.loss.back(), 4));
    loss = aux = 0, n = 0;
  }
};

}  // namespace

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("[quickstart] " + msg); }

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string fmt(double v, int precision) {
  if (std::isnan(v)) return "–";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

// The tiny Llama: HF config built in code, random init.
std::shared_ptr<Backbone> build_backbone(const QuickstartOptions& o, const SymbolVocab& vocab, int64_t max_len) {
  json c = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"vocab_size", vocab.size()},
            {"hidden_size", o.hidden_size()},
            {"intermediate_size", o.intermediate_size()},
            {"num_hidden_layers", o.num_layers()},
            {"num_attention_heads", o.num_heads()},
            {"num_key_value_heads", o.num_heads()},
            {"hidden_act", "silu"},
            {"max_position_embeddings", std::max<int64_t>(64, max_len)},
            {"rms_norm_eps", 1e-6},
            {"rope_theta", 10000.0},
            {"tie_word_embeddings", false},
            {"initializer_range", 0.02},
            {"pad_token_id", SymbolVocab::pad},
            {"bos_token_id", SymbolVocab::bos},
            {"eos_token_id", SymbolVocab::eos}};
  auto config = io::parse_hf_config(c, "quickstart backbone");
  auto model = create_backbone(config);
  init_weights(*model, 0.02, o.seed());
  return model;
}

// A fresh backbone with the weights of `src` (each method starts from the same pretrained one).
std::shared_ptr<Backbone> copy_backbone(Backbone& src) {
  auto dst = create_backbone(src.config());
  torch::NoGradGuard no_grad;
  auto from = src.named_parameters();
  for (auto& p : dst->named_parameters()) p.value().copy_(from[p.key()]);
  auto from_buffers = src.named_buffers();
  for (auto& b : dst->named_buffers()) b.value().copy_(from_buffers[b.key()]);
  return dst;
}

int64_t count(const std::vector<torch::Tensor>& params) {
  int64_t n = 0;
  for (const auto& p : params) n += p.numel();
  return n;
}

std::vector<torch::Tensor> backbone_parameters(Backbone& model) {
  std::vector<torch::Tensor> ps;
  for (auto& p : model.named_parameters())
    if (p.key().find(".adapters.") == std::string::npos) ps.push_back(p.value());
  return ps;
}

void fit(Backbone& model, const std::vector<ParamGroup>& groups, const std::function<TaskBatch()>& draw, int64_t steps,
         int64_t log_every, LossCurve& curve, const std::string& phase, const Progress& progress,
         LossCurve* aux_curve) {
  LoopOptions lo;
  lo.schedule = Schedule::Cosine;
  lo.warmup_steps = std::max<int64_t>(1, steps / 20);
  lo.total_steps = steps;
  lo.min_lr_ratio = 0.1;
  lo.max_grad_norm = 1.0;
  lo.label = "[quickstart] " + phase;
  for (const auto& g : groups)
    for (const auto& p : g.params) p.set_requires_grad(true);
  TrainLoop loop(groups, lo, &model);
  model.train();
  const int64_t base = curve.step.empty() ? 0 : static_cast<int64_t>(curve.step.back());
  CurveWindow window{log_every, steps, base, curve, aux_curve, phase, progress};
  loop.run(
      [&](int64_t) {
        auto batch = draw();
        return answer_loss(logits_of(model, batch.input_ids), batch.labels);
      },
      [&](const StepStats& s) { window.add(s); });
  for (const auto& g : groups)
    for (const auto& p : g.params) p.set_requires_grad(false);
  model.eval();
}

void fit(Backbone& model, std::vector<torch::Tensor> params, const std::function<TaskBatch()>& draw, int64_t steps,
         double lr, int64_t log_every, LossCurve& curve, const std::string& phase, const Progress& progress) {
  fit(model, {ParamGroup{std::move(params), lr}}, draw, steps, log_every, curve, phase, progress);
}

// Held-out exact-match accuracy of the model as it is (its enabled modules) on one batch.
double accuracy(Backbone& model, const TaskBatch& eval) {
  torch::NoGradGuard no_grad;
  model.eval();
  auto logits = logits_of(model, eval.input_ids);
  return exact_match(logits, eval.labels).to(torch::kDouble).mean().item<double>();
}

json lora_config(const QuickstartOptions& o) {
  return {{"peft_type", "LORA"}, {"r", o.lora_r()}, {"lora_alpha", o.lora_alpha()}, {"target_modules", "all-linear"}};
}

// Module names cannot contain dots; task names may contain '+'.
std::string module_name(const std::string& task) {
  std::string n = task;
  for (auto& ch : n)
    if (ch == '+' || ch == '.') ch = '_';
  return n;
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

std::vector<int64_t> iota_ids(size_t n) {
  std::vector<int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

// Parameter values, to restore a module before adapting it to another task.
std::vector<torch::Tensor> snapshot(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> copy;
  for (const auto& p : params) copy.push_back(p.detach().clone());
  return copy;
}
void restore(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& values) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(values[i]);
}

// Per-task evaluation sets (held-out inputs), the same for every method.
std::vector<TaskBatch> eval_sets(const QuickstartOptions& o, const std::vector<Task>& tasks, bool with_marker) {
  TaskSampler s(o.data(), o.seed() + 7919);
  std::vector<TaskBatch> sets;
  for (size_t k = 0; k < tasks.size(); ++k)
    sets.push_back(s.sample(tasks, {static_cast<int64_t>(k)}, o.eval_examples(), Split::Heldout, with_marker));
  return sets;
}

}  // namespace modula::train::quickstart_detail
