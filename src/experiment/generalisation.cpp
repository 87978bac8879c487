// `modula experiment generalisation`: skills learned on many training tasks, recombined for
// held-out tasks from a few examples (Ponti et al. 2022; Caccia et al. 2023; survey §4, §6.2).
#include <chrono>
#include <cmath>
#include <random>
#include <set>

#include "experiment/internal.h"
#include "modula/backbone/registry.h"
#include "modula/composition/poly_lora.h"
#include "modula/composition/registry.h"
#include "modula/io/safetensors.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"

namespace modula::experiment::detail {
namespace {

constexpr std::string_view kGenTag = "experiment";
constexpr uint64_t kPairSeed = 4321;      // topic pools, held-out pairs, per-task samples: fixed
const char* const kRouteField = "ptask";  // each record's task name: Polytropon's routing row

struct PairTasks {
  std::vector<Task> train, held;  // held: train = the few-shot examples
  std::vector<std::string> topics;
};

// Every pair of topics is a binary task "which of the two files is this fortune from". Each
// topic's fortunes are split once into an eval pool and a train pool, so no eval text is seen
// in training by any task; held-out pairs are chosen so that every topic stays in training.
PairTasks pair_tasks(const ExperimentOptions& o, const Sizes& z, int64_t shots) {
  PairTasks p;
  p.topics = o.quick ? std::vector<std::string>{"computers", "politics", "science", "men-women", "people"}
                     : std::vector<std::string>{"computers", "politics",    "science",     "men-women",
                                                "people",    "definitions", "songs-poems", "work"};
  const size_t H = o.quick ? 3 : 6;
  std::mt19937_64 rng(kPairSeed);
  std::map<std::string, std::vector<std::string>> train_pool, eval_pool;
  std::set<std::string> seen;
  for (const auto& t : p.topics) {
    std::vector<std::string> unique;
    for (auto& s : fortunes_of_topic(o.data, t))
      if (seen.insert(s).second) unique.push_back(std::move(s));
    std::shuffle(unique.begin(), unique.end(), rng);
    const auto need = static_cast<size_t>(z.train_per_class + z.eval_per_class);
    check(unique.size() >= need, kGenTag,
          "topic '" + t + "' has " + std::to_string(unique.size()) + " distinct fortunes, needs " +
              std::to_string(need) + " (Debian fortunes)");
    eval_pool[t].assign(unique.begin(), unique.begin() + z.eval_per_class);
    train_pool[t].assign(unique.begin() + z.eval_per_class, unique.end());
  }
  std::vector<std::pair<size_t, size_t>> pairs;
  for (size_t a = 0; a < p.topics.size(); ++a)
    for (size_t b = a + 1; b < p.topics.size(); ++b) pairs.emplace_back(a, b);
  std::vector<bool> held(pairs.size(), false);
  std::vector<size_t> uses(p.topics.size(), p.topics.size() - 1);  // training pairs per topic
  std::vector<size_t> order(pairs.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  size_t n_held = 0;
  for (size_t i : order) {  // hold out a pair only while both topics keep >= 2 training pairs
    if (n_held == H) break;
    auto [a, b] = pairs[i];
    if (uses[a] <= 2 || uses[b] <= 2) continue;
    held[i] = true, --uses[a], --uses[b], ++n_held;
  }
  for (size_t i = 0; i < pairs.size(); ++i) {
    const auto& ta = p.topics[pairs[i].first];
    const auto& tb = p.topics[pairs[i].second];
    Task t;
    t.name = ta + "|" + tb;
    t.labels = {ta, tb};
    const auto n = static_cast<size_t>(held[i] ? shots : z.train_per_class);
    for (const auto& topic : t.labels) {
      auto pool = train_pool[topic];
      std::shuffle(pool.begin(), pool.end(), rng);
      for (size_t k = 0; k < n; ++k) t.train.push_back({{"text", pool[k]}, {"label", topic}, {kRouteField, t.name}});
      for (const auto& s : eval_pool[topic]) t.eval.push_back({{"text", s}, {"label", topic}, {kRouteField, t.name}});
    }
    std::shuffle(t.train.begin(), t.train.end(), rng);
    t.chance = 0.5;
    t.note = std::string(held[i] ? "held out: " : "training: ") + std::to_string(t.train.size()) + " train / " +
             std::to_string(t.eval.size()) + " eval, chance 0.50";
    (held[i] ? p.held : p.train).push_back(std::move(t));
  }
  return p;
}

// Mean normalised entropy (1 = uniform, 0 = one skill) of the training tasks' allocations
// σ(Z)/Σσ(Z) over the encoder's sites of a saved POLY folder.
double routing_entropy(const std::string& folder, int64_t tasks) {
  auto f = io::SafetensorsFile::open(fs::join(folder, "adapter_model.safetensors"));
  double sum = 0;
  int64_t n = 0;
  for (const auto& key : f.keys()) {
    if (key.find(".encoder.") == std::string::npos || key.find("module_logits") == std::string::npos) continue;
    auto w = torch::sigmoid(f.get(key).slice(0, 0, tasks).to(torch::kDouble));
    w = w / w.sum(-1, true);
    auto h = -(w * w.log()).sum(-1) / std::log(static_cast<double>(w.size(-1)));
    sum += h.sum().item<double>(), n += h.numel();
  }
  return n ? sum / static_cast<double>(n) : NAN;
}

// One classification task config per task; Polytropon reads the routing field.
train::TrainConfig stage_config(const Sizes& z, const std::string& model, const std::vector<Task>& tasks,
                                const std::vector<std::string>& route_values, const std::string& output, uint64_t seed,
                                int64_t steps) {
  auto c = run_config(z, model, tasks, output, seed, steps);
  c.metadata = {{kRouteField, route_values}};
  c.optim.lr_routers = 0.1;  // Polytropon's task-to-skill logits (as in interference)
  c.eval.batch_size = 128;
  return c;
}

// Copies of one module folder (or fresh configs), one per task, each enabled only for its task.
void per_task_modules(train::TrainConfig& c, const std::vector<Task>& tasks, const json& config,
                      const std::string& path) {
  for (size_t i = 0; i < tasks.size(); ++i) {
    const std::string name = "m" + std::to_string(i);
    c.modules.push_back({name, path.empty() ? config : json(), path, true});
    c.tasks[i].modules = {name};
  }
}

double average_accuracy(const train::TrainResult& res, const std::vector<Task>& tasks, MethodResult* m) {
  std::vector<double> acc;
  for (const auto& t : tasks) {
    acc.push_back(res.eval.at(t.name).at("accuracy"));
    if (m) m->task_accuracy[t.name].push_back(acc.back());
  }
  return mean_of(acc);
}

}  // namespace

ExperimentResult generalisation(const ExperimentOptions& o, const Progress& progress) {
  const Sizes z = Sizes::of(o);
  const std::string model = pretrained_backbone(o, z, classification_tasks(o, z), progress);
  const int64_t shots = o.quick ? 8 : 16, skills = o.quick ? 4 : 8, r0 = z.lora_r;
  const auto p = pair_tasks(o, z, shots);
  const int64_t K = static_cast<int64_t>(p.train.size()), H = static_cast<int64_t>(p.held.size());
  const int64_t train_steps = 5 * z.steps_per_task, adapt_steps = std::max<int64_t>(10, z.steps_per_task / 4);
  std::vector<std::string> names;
  for (const auto& t : p.train) names.push_back(t.name);
  for (const auto& t : p.held) names.push_back(t.name);
  const auto train_data = datasets(p.train), held_data = datasets(p.held);
  // Every module scales its update by α / r with one α = 2·r0 (Hu et al. 2021 fix α across
  // ranks): rank-r0 LoRAs and Polytropon by 2; PEFT's Polytropon by 1 / r0.
  const double alpha = 2.0 * static_cast<double>(r0);
  auto poly = [&](bool peft_scale, bool noise) {
    json c = {{"peft_type", "POLY"},       {"r", r0},       {"n_tasks", K + H},
              {"n_skills", skills},        {"n_splits", 1}, {"target_modules", "all-linear"},
              {"routing_key", kRouteField}};
    if (!peft_scale) c["lora_alpha"] = alpha;
    if (!noise) c["routing_noise"] = false;
    return c;
  };

  ExperimentResult r;
  r.name = "generalisation";
  r.title = "Generalisation: skills from many tasks, recombined for held-out tasks from a few examples";
  r.claim =
      "An inventory of skills with a learned task-to-skill allocation (Polytropon) trained on many tasks adapts to "
      "a held-out task from a few examples better than a shared module or a module learned from scratch, because "
      "a new task is a new combination of known skills (Ponti et al. 2022; Caccia et al. 2023).";
  const std::string Ks = std::to_string(K), Hs = std::to_string(H), Ss = std::to_string(skills);
  r.design = {
      "Tasks: every pair of " + std::to_string(p.topics.size()) +
          " English fortune files is a binary task (which file a fortune comes from). " + Ks +
          " pairs are training tasks, " + Hs +
          " held out; every topic of a held-out pair appears in at least two training pairs, so a held-out task is "
          "a new combination of seen skills. Each topic's fortunes are split once into train and eval pools, so "
          "no eval text is seen in training by any task.",
      "Stage 1: every method trains on the " + Ks + " tasks jointly for " + std::to_string(train_steps) +
          " steps (uniform task sampling, a head per task). Polytropon: " + Ss + " LoRA skills of rank " +
          std::to_string(r0) + " on every linear layer, routing logits lr 0.1; shared LoRA of rank " +
          std::to_string(skills * r0) + " (the same parameters); per-task LoRA: one rank-" + std::to_string(r0) +
          " LoRA per task (" + Ks + "× the parameters of one). Every module uses α = " + fmt(alpha, 0) +
          " (scale α/r; α fixed across ranks as Hu et al. 2021 do: with α = 2r the rank-" +
          std::to_string(skills * r0) +
          " LoRA's update is 8× larger per step and it collapsed to chance in a trial "
          "run).",
      "Stage 2: each held-out task gets a new head and " + std::to_string(shots) +
          " examples per class, trained for about " + std::to_string(adapt_steps) +
          " steps per task: the shared LoRA fine-tuned (a copy per task), a fresh rank-" + std::to_string(r0) +
          " LoRA (per-task, no transfer), MHR-z (Polytropon's skills frozen, only the new task's routing row "
          "trains) and MHR-μ (the skills averaged into one LoRA, which is fine-tuned), and the head alone over the "
          "bare backbone (the floor).",
      "Why Polytropon underfitted (quickstart (c)): PEFT's POLY scales its update by 1/r, the LoRAs beside it by "
      "α/r = 2 (8× at r = 4); under Adam a parameter moves by about the learning rate per step whatever the "
      "scale, so Polytropon's update grew 8× slower. Second, PEFT trains with routing weights sampled from a "
      "RelaxedBernoulli (temperature 1) around σ(Z) and evaluates with σ(Z). The Polytropon rows isolate each: "
      "PEFT's defaults; the LoRAs' scale (POLY lora_alpha " +
          fmt(alpha, 0) +
          ", a modula key) with sampled routing; "
          "and with σ routing in training too (routing_noise false). Training-task accuracy says what each costs.",
      "The papers pretrain on 100+ real NLP tasks with T5 backbones; this is a 3-layer BERT pretrained here, " + Ks +
          " topic-pair tasks and a few hundred steps, so it tests the mechanism, not the papers' numbers.",
  };
  for (const auto& t : p.held) {
    r.tasks.push_back(t.name);
    r.task_notes[t.name] = t.note;
  }
  std::string trained;
  for (const auto& t : p.train) trained += (trained.empty() ? "" : ", ") + t.name;
  r.design.push_back("Training tasks: " + trained + ".");
  r.metrics = {"training-task accuracy", "held-out accuracy", "routing entropy"};
  enum Row { Shared, PerTask, PeftZ, ScaledZ, QuietZ, QuietMu, HeadOnly };
  for (const char* m : {"shared LoRA → fine-tuned", "per-task LoRA → fresh LoRA",
                        "Polytropon, PEFT defaults (1/r, sampled routing) → MHR-z",
                        "Polytropon, LoRA scale (sampled routing) → MHR-z", "Polytropon, LoRA scale, σ routing → MHR-z",
                        "Polytropon, LoRA scale, σ routing → MHR-μ", "head only (no module)"})
    r.methods.push_back(method_named(m));

  for (int64_t seed = 0; seed < o.seeds; ++seed) {
    const std::string dir = fs::join(o.output, "generalisation/runs/seed" + std::to_string(seed));
    const auto s = static_cast<uint64_t>(seed);
    const std::string tag = "seed " + std::to_string(seed) + " ";
    auto stage1 = [&](const std::string& name, const std::function<void(train::TrainConfig&)>& setup) {
      auto c = stage_config(z, model, p.train, names, fs::join(dir, name), s, train_steps);
      setup(c);
      return run(c, train_data, progress, tag + name);
    };
    auto stage2 = [&](const std::string& name, const std::function<void(train::TrainConfig&)>& setup, MethodResult& m) {
      auto c = stage_config(z, model, p.held, names, fs::join(dir, name), s, adapt_steps * H);
      setup(c);
      m.metrics["held-out accuracy"].push_back(average_accuracy(run(c, held_data, progress, tag + name), p.held, &m));
    };
    auto t0 = std::chrono::steady_clock::now();
    {  // shared LoRA
      auto& m = r.methods[Shared];
      auto res = stage1("shared", [&](auto& c) { c.modules = {{"shared", lora(skills * r0, alpha), "", true}}; });
      m.trainable_parameters = res.trainable_parameters;
      m.metrics["training-task accuracy"].push_back(average_accuracy(res, p.train, nullptr));
      m.metrics["routing entropy"].push_back(NAN);
      const std::string folder = fs::join(res.output, "modules/shared");
      stage2(
          "shared-ft", [&](auto& c) { per_task_modules(c, p.held, {}, folder); }, m);
      m.seconds += seconds_since(t0);
    }
    t0 = std::chrono::steady_clock::now();
    {  // per-task LoRA; held-out tasks from scratch
      auto& m = r.methods[PerTask];
      auto res = stage1("per-task", [&](auto& c) { per_task_modules(c, p.train, lora(r0, alpha), ""); });
      m.trainable_parameters = res.trainable_parameters;
      m.metrics["training-task accuracy"].push_back(average_accuracy(res, p.train, nullptr));
      m.metrics["routing entropy"].push_back(NAN);
      stage2(
          "fresh", [&](auto& c) { per_task_modules(c, p.held, lora(r0, alpha), ""); }, m);
      m.seconds += seconds_since(t0);
    }
    struct PolyRun {
      const char* name;
      bool peft_scale, noise;
      Row z;
      bool mu;
    };
    for (const PolyRun& v :
         {PolyRun{"poly-peft", true, true, PeftZ, false}, PolyRun{"poly-scaled", false, true, ScaledZ, false},
          PolyRun{"poly-sigma", false, false, QuietZ, true}}) {
      // Polytropon, then MHR-z (and MHR-μ) on its skills
      t0 = std::chrono::steady_clock::now();
      auto& mz = r.methods[v.z];
      const std::string name = v.name;
      auto res = stage1(name, [&](auto& c) { c.modules = {{"poly", poly(v.peft_scale, v.noise), "", true}}; });
      const std::string folder = fs::join(res.output, "modules/poly");
      std::vector<MethodResult*> rows = {&mz};
      if (v.mu) rows.push_back(&r.methods[QuietMu]);
      for (auto* m : rows) {
        m->trainable_parameters = res.trainable_parameters;
        m->metrics["training-task accuracy"].push_back(average_accuracy(res, p.train, nullptr));
        m->metrics["routing entropy"].push_back(routing_entropy(folder, K));
      }
      stage2(
          name + "-mhr-z",
          [&](auto& c) {
            c.modules = {{"poly", json(), folder, true}};
            c.optim.lr_modules = 0.0;  // skills frozen: only the routing rows (and heads) train
          },
          mz);
      mz.seconds += seconds_since(t0);
      if (!v.mu) continue;
      t0 = std::chrono::steady_clock::now();
      auto& mu = r.methods[QuietMu];
      const std::string mu_folder = fs::join(dir, name + "-mu-init");
      {
        auto backbone = load_backbone(model);
        auto ctx = std::make_shared<RoutingContext>();
        auto loaded = load_poly_adapter(*backbone, folder, ctx, "poly");
        save_adapter(mhr_mu(*backbone, loaded, "mu"), mu_folder);
      }
      stage2(
          name + "-mhr-mu", [&](auto& c) { per_task_modules(c, p.held, {}, mu_folder); }, mu);
      mu.seconds += seconds_since(t0);
    }
    t0 = std::chrono::steady_clock::now();
    auto& head = r.methods[HeadOnly];
    head.metrics["training-task accuracy"].push_back(NAN);
    head.metrics["routing entropy"].push_back(NAN);
    stage2(
        "head-only", [](auto&) {}, head);
    head.seconds += seconds_since(t0);
  }

  auto mean = [&](Row k, const char* metric) { return mean_of(r.methods[k].metrics.at(metric)); };
  auto sd = [&](Row k, const char* metric) { return std_of(r.methods[k].metrics.at(metric)); };
  const char* fit = "training-task accuracy";
  const char* held = "held-out accuracy";
  {
    auto step = [&](Row a, Row b, const std::string& what) {
      const double gap = mean(b, fit) - mean(a, fit), noise = std::max(sd(a, fit), sd(b, fit));
      return fmt(mean(a, fit)) + " → " + fmt(mean(b, fit)) + " with " + what + " (" +
             verdict(gap, noise, "fits better", "fits worse") + ", seed std up to " + fmt(noise) + ")";
    };
    r.findings.push_back("Fit of the training tasks, Polytropon: " + step(PeftZ, ScaledZ, "the LoRAs' scale") + "; " +
                         step(ScaledZ, QuietZ, "σ routing in training") + ". Shared LoRA " + fmt(mean(Shared, fit)) +
                         ", per-task LoRA " + fmt(mean(PerTask, fit)) +
                         ". Routing entropy (1 = uniform): " + fmt(mean(PeftZ, "routing entropy")) + ", " +
                         fmt(mean(ScaledZ, "routing entropy")) + ", " + fmt(mean(QuietZ, "routing entropy")) + ".");
  }
  Row best_poly = PeftZ;
  for (Row k : {ScaledZ, QuietZ, QuietMu})
    if (mean(k, held) > mean(best_poly, held)) best_poly = k;
  for (Row other : {Shared, PerTask}) {
    const double gap = mean(best_poly, held) - mean(other, held);
    const double noise = std::max(sd(best_poly, held), sd(other, held));
    r.findings.push_back(
        "Held-out tasks: best Polytropon adaptation (" + r.methods[best_poly].method + ") " +
        fmt(mean(best_poly, held)) + " vs " + r.methods[other].method + " " + fmt(mean(other, held)) + " (difference " +
        fmt(gap) + ", seed std up to " + fmt(noise) + "): " +
        verdict(gap, noise, "skills transfer better, as the papers report", "against the claim at this scale") + ".");
  }
  r.findings.push_back("MHR-z vs MHR-μ on the σ-routed skills: " + fmt(mean(QuietZ, held)) + " vs " +
                       fmt(mean(QuietMu, held)) + "; the head alone over the bare backbone " +
                       fmt(mean(HeadOnly, held)) + ".");
  return r;
}

}  // namespace modula::experiment::detail
