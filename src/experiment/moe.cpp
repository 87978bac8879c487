// `modula experiment moe`: language-model pretraining on real text with a dense FFN vs
// Switch-style top-1 / top-2 mixtures of 4 and 8 experts (Fedus et al. 2022; survey §4.2),
// at equal active parameters and at equal total parameters.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <set>

#include "experiment/internal.h"
#include "modula/text/trainer.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"

namespace modula::experiment::detail {
namespace {

constexpr uint64_t kLmSeed = 777;  // the held-out split and the tokenizer: fixed

struct LmSizes {
  int64_t vocab = 2000, hidden = 128, layers = 2, heads = 4, intermediate = 512;
  int64_t max_length = 64, batch = 16, steps = 500, eval_every = 50, eval_texts = 300;
  double lr = 3e-3;
  static LmSizes of(const ExperimentOptions& o) {
    LmSizes s;
    if (o.quick) {
      s.vocab = 400, s.hidden = 32, s.layers = 1, s.heads = 2, s.intermediate = 64;
      s.max_length = 32, s.batch = 8, s.steps = 30, s.eval_every = 10, s.eval_texts = 40;
    }
    if (o.steps > 0) s.steps = o.steps, s.eval_every = std::max<int64_t>(1, o.steps / 6);
    return s;
  }
};

// One FFN variant: dense (experts 0) or E experts of `size` neurons, top-k per token.
struct Variant {
  std::string label;
  int64_t experts = 0, k = 0, size = 0;
  std::string group;  // "dense", "equal active", "equal total"
};

std::vector<Variant> variants(const LmSizes& s) {
  const int64_t I = s.intermediate;
  std::vector<Variant> v = {{"dense FFN (" + std::to_string(I) + " neurons)", 0, 0, I, "dense"}};
  for (int64_t E : {4, 8})
    for (int64_t k : {1, 2}) {
      const int64_t size = I / k;  // k experts of I/k neurons: the dense FFN's compute per token
      v.push_back(
          {"top-" + std::to_string(k) + " of " + std::to_string(E) + " × " + std::to_string(size) + " (equal active)",
           E, k, size, "equal active"});
    }
  for (int64_t E : {4, 8})
    for (int64_t k : {1, 2}) {
      const int64_t size = I / E;  // E experts of I/E neurons: the dense FFN's parameters
      v.push_back(
          {"top-" + std::to_string(k) + " of " + std::to_string(E) + " × " + std::to_string(size) + " (equal total)", E,
           k, size, "equal total"});
    }
  return v;
}

// Parameters of the FFNs (gated SwiGLU, no biases) plus the rest of the model: total and per token.
std::pair<int64_t, int64_t> parameters(const LmSizes& s, int64_t vocab, const Variant& v) {
  const int64_t H = s.hidden;
  const int64_t rest = vocab * H + s.layers * (4 * H * H + 2 * H) + H;  // tied embedding, attention, norms
  if (v.experts == 0) {
    const int64_t ffn = s.layers * 3 * H * v.size;
    return {rest + ffn, rest + ffn};
  }
  const int64_t expert = 3 * H * v.size, router = H * v.experts;
  return {rest + s.layers * (v.experts * expert + router), rest + s.layers * (v.k * expert + router)};
}

nlohmann::json llama_config(const LmSizes& s, int64_t vocab) {
  return {{"model_type", "llama"},
          {"architectures", {"LlamaForCausalLM"}},
          {"vocab_size", vocab},
          {"hidden_size", s.hidden},
          {"intermediate_size", s.intermediate},
          {"num_hidden_layers", s.layers},
          {"num_attention_heads", s.heads},
          {"num_key_value_heads", s.heads},
          {"max_position_embeddings", std::max<int64_t>(128, s.max_length)},
          {"rms_norm_eps", 1e-6},
          {"tie_word_embeddings", true},
          {"hidden_act", "silu"},
          {"pad_token_id", 0}};
}

struct Curve {
  std::vector<double> steps, seconds, perplexity;  // at each evaluation; seconds: training only
};

double at_time(const Curve& c, double t) {  // perplexity interpolated at training second t
  if (c.seconds.empty() || t < c.seconds.front()) return NAN;
  for (size_t i = 1; i < c.seconds.size(); ++i)
    if (t <= c.seconds[i]) {
      const double f = (t - c.seconds[i - 1]) / std::max(1e-9, c.seconds[i] - c.seconds[i - 1]);
      return c.perplexity[i - 1] + f * (c.perplexity[i] - c.perplexity[i - 1]);
    }
  return c.perplexity.back();
}

}  // namespace

ExperimentResult moe(const ExperimentOptions& o, const Progress& progress) {
  const LmSizes s = LmSizes::of(o);
  // English fortunes, one text each; a fixed held-out set of fortunes.
  auto texts = fortunes_of_language(o.data, "en");
  std::sort(texts.begin(), texts.end());
  texts.erase(std::unique(texts.begin(), texts.end()), texts.end());
  std::shuffle(texts.begin(), texts.end(), std::mt19937_64(kLmSeed));
  if (o.quick) texts.resize(std::min<size_t>(texts.size(), 600));
  check(texts.size() > static_cast<size_t>(2 * s.eval_texts), "experiment",
        "the English fortunes have " + std::to_string(texts.size()) + " distinct texts, need more than " +
            std::to_string(2 * s.eval_texts) + " (Debian fortunes)");
  train::TaskData lm;
  for (size_t i = 0; i < texts.size(); ++i)
    (i < static_cast<size_t>(s.eval_texts) ? lm.eval : lm.train).push_back({{"text", texts[i]}});

  const std::string dir = fs::join(o.output, "moe");
  fs::make_dirs(dir);
  text::TrainerOptions to;
  to.model = text::TrainerModel::WordPiece;
  to.vocab_size = s.vocab;
  to.limit_alphabet = 200;
  text::TokenizerTrainer trainer(to);
  for (const auto& r : lm.train) trainer.feed(r["text"].get<std::string>());
  const auto tok = trainer.train();
  const std::string tokenizer = fs::join(dir, "tokenizer.json"), config = fs::join(dir, "config.json");
  tok.save(tokenizer);
  fs::write_file(config, llama_config(s, tok.vocab_size).dump(2) + "\n");

  const auto vs = variants(s);
  ExperimentResult r;
  r.name = "moe";
  r.title = "Mixture of experts: language-model pretraining, dense FFN vs top-k experts";
  r.claim =
      "Replacing the dense FFN by sparsely routed experts adds parameters without adding compute per token, so at "
      "equal active parameters a top-k mixture reaches a lower perplexity than the dense model, per step and per "
      "unit of wall time (Switch Transformer; survey §4.2).";
  r.design = {
      "A Llama-architecture causal LM (" + std::to_string(s.layers) + " layers, hidden " + std::to_string(s.hidden) +
          ", SwiGLU FFN of " + std::to_string(s.intermediate) + " neurons, WordPiece vocabulary " +
          std::to_string(tok.vocab_size) + ") pretrained from random init on " + std::to_string(lm.train.size()) +
          " English fortunes (Debian fortunes) for " + std::to_string(s.steps) + " steps of " +
          std::to_string(s.batch) + " texts (≤ " + std::to_string(s.max_length) + " tokens); held-out perplexity on " +
          std::to_string(lm.eval.size()) + " other fortunes every " + std::to_string(s.eval_every) + " steps.",
      "Every FFN of the model is the variant: dense, or E experts trained from scratch (MODULA_MOE_FFN init "
      "random: N(0, 0.02²) like the dense weights) behind a top-k router with the Switch load-balancing loss "
      "(0.01) and the router z-loss (0.001), dropless. Equal active: k experts of 1/k the dense size (the same "
      "compute per token, E/k× the FFN parameters); equal total: E experts of 1/E the dense size (the same "
      "parameters, k/E of the compute).",
      "Same data order, steps, learning rate (" + fmt(s.lr, 4) +
          ", cosine, 5% warmup) and seeds for every variant; seeds change initialisation and data order. Wall "
          "time counts training steps only (evaluations excluded), on this machine's CPU threads.",
      "Switch's gains appear at far larger scale (experts of thousands of neurons, billions of tokens). Here a "
      "few hundred thousand tokens: the comparison says what happens early in training at small width, where "
      "the dispatch overhead on a CPU is a larger share of the step.",
  };
  r.metrics = {"held-out perplexity", "perplexity at half the steps", "train seconds"};
  std::vector<std::vector<Curve>> curves(vs.size());
  std::string sizes;
  for (const auto& v : vs) {
    auto m = method_named(v.label);
    m.trainable_parameters = parameters(s, tok.vocab_size, v).first;
    r.methods.push_back(m);
    sizes += (sizes.empty() ? "" : "; ") + v.label + ": " + std::to_string(m.trainable_parameters) + " total, " +
             std::to_string(parameters(s, tok.vocab_size, v).second) + " active per token";
  }
  r.design.push_back("Parameters (the model's, counting only the FFN that runs): " + sizes + ".");
  for (int64_t seed = 0; seed < o.seeds; ++seed)
    for (size_t k = 0; k < vs.size(); ++k) {  // variants alternate within a seed
      const auto& v = vs[k];
      train::TrainConfig c;
      c.source = "experiment moe";
      c.model = config;
      c.tokenizer = tokenizer;
      c.init = "random";
      c.train_backbone = true;
      c.output = fs::join(dir, "runs/seed" + std::to_string(seed) + "/" + std::to_string(k));
      c.seed = static_cast<uint64_t>(seed);
      train::TaskConfig t;
      t.name = "lm";
      t.type = train::TaskType::CausalLM;
      t.max_length = s.max_length;
      c.tasks = {t};
      if (v.experts > 0)
        c.modules = {{"moe",
                      {{"peft_type", "MODULA_MOE_FFN"},
                       {"init", "random"},
                       {"num_experts", v.experts},
                       {"num_experts_per_tok", v.k},
                       {"expert_size", v.size},
                       {"router_aux_loss_coef", 0.01},
                       {"router_z_loss_coef", 0.001}},
                      "",
                      true}};
      c.optim.lr = s.lr;
      c.optim.schedule = "cosine";
      c.optim.warmup_steps = std::max<int64_t>(1, s.steps / 20);
      c.optim.min_lr_ratio = 0.1;
      c.optim.max_steps = s.steps;
      c.optim.batch_size = s.batch;
      c.optim.max_grad_norm = 1.0;
      c.eval.every = s.eval_every;
      c.eval.batch_size = 64;
      c.log_every = 1;  // on_step every step: the clock below needs each step's time
      const int64_t print_every = std::max<int64_t>(1, s.steps / 5);
      Curve curve;
      double eval_seconds = 0, last_elapsed = 0;
      auto last_step = std::chrono::steady_clock::now();
      train::Callbacks cb;
      cb.on_step = [&](const train::StepInfo& i) {
        last_elapsed = i.elapsed_s;
        last_step = std::chrono::steady_clock::now();
        if (progress && (i.step % print_every == 0 || i.step == i.total_steps))
          progress("seed " + std::to_string(seed) + " " + v.label + " step " + std::to_string(i.step) + "/" +
                   std::to_string(i.total_steps) + " loss " + fmt(i.loss));
      };
      cb.on_eval = [&](const train::EvalInfo& e) {
        curve.steps.push_back(static_cast<double>(e.step));
        curve.seconds.push_back(last_elapsed - eval_seconds);
        curve.perplexity.push_back(e.metrics.count("perplexity") ? e.metrics.at("perplexity") : NAN);
        eval_seconds += seconds_since(last_step);
      };
      const auto t0 = std::chrono::steady_clock::now();
      train::train(c, {{"lm", lm}}, cb);
      auto& m = r.methods[k];
      m.metrics["held-out perplexity"].push_back(curve.perplexity.empty() ? NAN : curve.perplexity.back());
      double half = NAN;
      for (size_t i = 0; i < curve.steps.size(); ++i)
        if (curve.steps[i] <= static_cast<double>(s.steps) / 2) half = curve.perplexity[i];
      m.metrics["perplexity at half the steps"].push_back(half);
      m.metrics["train seconds"].push_back(curve.seconds.empty() ? NAN : curve.seconds.back());
      m.seconds += seconds_since(t0);
      curves[k].push_back(std::move(curve));
    }

  // Curves: mean over seeds at each evaluation.
  train::LineChart by_step{"held-out perplexity by step (mean over seeds)", "step", "perplexity", {}, true};
  train::LineChart by_time{
      "held-out perplexity by training wall time (mean over seeds)", "seconds", "perplexity", {}, true};
  for (size_t k = 0; k < vs.size(); ++k) {
    train::LineSeries a{vs[k].label, {}, {}}, b{vs[k].label, {}, {}};
    const size_t n = curves[k].front().steps.size();
    for (size_t i = 0; i < n; ++i) {
      std::vector<double> p, t;
      for (const auto& c : curves[k])
        if (i < c.steps.size()) p.push_back(c.perplexity[i]), t.push_back(c.seconds[i]);
      a.x.push_back(curves[k].front().steps[i]), a.y.push_back(mean_of(p));
      b.x.push_back(mean_of(t)), b.y.push_back(mean_of(p));
    }
    by_step.series.push_back(a), by_time.series.push_back(b);
  }
  by_step.markers = by_time.markers = true;
  r.charts = {by_step, by_time};

  const char* ppl = "held-out perplexity";
  auto mean = [&](size_t k) { return mean_of(r.methods[k].metrics.at(ppl)); };
  auto sd = [&](size_t k) { return std_of(r.methods[k].metrics.at(ppl)); };
  auto seconds = [&](size_t k) { return mean_of(r.methods[k].metrics.at("train seconds")); };
  for (const char* group : {"equal active", "equal total"}) {
    size_t best = 0;
    for (size_t k = 1; k < vs.size(); ++k)
      if (vs[k].group == group && (best == 0 || mean(k) < mean(best))) best = k;
    const double gap = mean(0) - mean(best), noise = std::max(sd(0), sd(best));
    const std::string outcome = verdict(gap, noise, "the mixture is better", "the dense FFN is better", 0.01 * mean(0));
    r.findings.push_back(std::string("At ") + group + " parameters the best mixture, " + vs[best].label + ", reaches " +
                         fmt(mean(best), 2) + " vs the dense FFN's " + fmt(mean(0), 2) + " (seed std up to " +
                         fmt(noise, 2) + "): " + outcome + "; it trains in " + fmt(seconds(best), 1) + " s vs " +
                         fmt(seconds(0), 1) + " s for the dense model.");
  }
  // Equal wall time: each mixture's perplexity when the dense model finished.
  std::string at_dense;
  size_t best_time = 0;
  double best_ppl = INFINITY;
  for (size_t k = 1; k < vs.size(); ++k) {
    std::vector<double> p;
    for (const auto& c : curves[k]) p.push_back(at_time(c, seconds(0)));
    const double v = mean_of(p);
    if (std::isfinite(v) && v < best_ppl) best_ppl = v, best_time = k;
  }
  r.findings.push_back(
      "At the dense model's training time (" + fmt(seconds(0), 1) + " s) the dense FFN is at " + fmt(mean(0), 2) +
      (best_time ? "; the best mixture by then is " + vs[best_time].label + " at " + fmt(best_ppl, 2) + "."
                 : "; no mixture had evaluated by then."));
  return r;
}

}  // namespace modula::experiment::detail
