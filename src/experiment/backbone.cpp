// The experiments' backbone (a BERT pretrained by MLM on the tasks' training text, built
// once per sizes and data) and the classification runs on it.
#include <functional>
#include <sstream>

#include "experiment/internal.h"
#include "modula/text/trainer.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"

namespace modula::experiment::detail {
namespace {

constexpr std::string_view kBackboneTag = "experiment";

json bert_config(const Sizes& z, int64_t vocab) {
  return {{"model_type", "bert"},
          {"architectures", {"BertForMaskedLM"}},
          {"vocab_size", vocab},
          {"hidden_size", z.hidden},
          {"num_hidden_layers", z.layers},
          {"num_attention_heads", z.heads},
          {"intermediate_size", z.intermediate},
          {"max_position_embeddings", std::max<int64_t>(128, z.max_length)},
          {"type_vocab_size", 2},
          {"pad_token_id", 0},
          {"layer_norm_eps", 1e-12},
          {"hidden_act", "gelu"}};
}

// What decides the backbone: its sizes, its pretraining and its corpus.
json stamp_of(const Sizes& z, const std::vector<Task>& tasks) {
  size_t h = 0;
  for (const auto& t : tasks)
    for (const auto& r : t.train) h = h * 1000003u ^ std::hash<std::string>()(r["text"].get<std::string>());
  return {{"config", bert_config(z, z.vocab_size)}, {"pretrain_steps", z.pretrain_steps},
          {"pretrain_batch", z.pretrain_batch},     {"max_length", z.max_length},
          {"corpus_hash", std::to_string(h)},       {"version", 1}};
}

}  // namespace

std::string pretrained_backbone(const ExperimentOptions& o, const Sizes& z, const std::vector<Task>& tasks,
                                const Progress& progress, const std::string& name) {
  const json stamp = stamp_of(z, tasks);
  const std::string dir = fs::join(o.output, "backbone-" + name + (o.quick ? "-quick" : "-full"));
  const std::string model = fs::join(dir, "pretrain/model");
  const std::string stamp_file = fs::join(dir, "stamp.json");
  if (fs::is_file(stamp_file) && fs::is_file(fs::join(model, "model.safetensors"))) {
    try {
      if (parse_json(fs::read_file(stamp_file)) == stamp) {
        if (progress) progress("backbone: reusing " + model);
        return model;
      }
    } catch (const std::exception&) {  // unreadable: rebuilt below
    }
  }
  fs::remove_tree(dir);
  fs::make_dirs(fs::join(dir, "pretrain/model"));
  // A WordPiece tokenizer for every language of the tasks (cased: the languages differ in case use).
  text::TrainerOptions to;
  to.model = text::TrainerModel::WordPiece;
  to.vocab_size = z.vocab_size;
  to.limit_alphabet = 300;
  text::TokenizerTrainer trainer(to);
  train::TaskData mlm;
  for (const auto& t : tasks) {
    for (const auto& r : t.train) {
      trainer.feed(r["text"].get<std::string>());
      mlm.train.push_back({{"text", r["text"]}});
    }
    for (size_t i = 0; i < t.eval.size(); i += 4) mlm.eval.push_back({{"text", t.eval[i]["text"]}});  // monitoring only
  }
  const auto tok = trainer.train();
  tok.save(fs::join(model, "tokenizer.json"));
  fs::write_file(fs::join(dir, "config.json"), bert_config(z, tok.vocab_size).dump(2) + "\n");

  train::TrainConfig c;
  c.source = "experiment backbone";
  c.model = fs::join(dir, "config.json");
  c.tokenizer = fs::join(model, "tokenizer.json");
  c.init = "random";
  c.train_backbone = true;
  c.save_model = true;
  c.output = fs::join(dir, "pretrain");
  c.seed = 0;
  train::TaskConfig t;
  t.name = "mlm";
  t.type = train::TaskType::MaskedLM;
  t.max_length = z.max_length;
  c.tasks = {t};
  c.optim.lr = o.quick ? 3e-3 : 1e-3;
  c.optim.schedule = "cosine";
  c.optim.warmup_steps = z.pretrain_steps / 20;
  c.optim.min_lr_ratio = 0.1;
  c.optim.max_steps = z.pretrain_steps;
  c.optim.batch_size = z.pretrain_batch;
  c.optim.max_grad_norm = 1.0;
  c.optim.weight_decay = 0.01;
  c.log_every = std::max<int64_t>(1, z.pretrain_steps / 10);
  auto r = run(c, {{"mlm", mlm}}, progress, "backbone: MLM pretraining");
  if (progress && r.eval.count("mlm"))
    progress("backbone: eval perplexity " +
             fmt(r.eval.at("mlm").count("perplexity") ? r.eval.at("mlm").at("perplexity") : NAN, 1) + ", accuracy " +
             fmt(r.eval.at("mlm").count("accuracy") ? r.eval.at("mlm").at("accuracy") : NAN));
  fs::write_file(stamp_file, stamp.dump(2) + "\n");
  return model;
}

train::TrainConfig run_config(const Sizes& z, const std::string& model, const std::vector<Task>& tasks,
                              const std::string& output, uint64_t seed, int64_t steps) {
  train::TrainConfig c;
  c.source = "experiment run " + output;
  c.model = model;
  c.output = output;
  c.seed = seed;
  for (const auto& task : tasks) {
    train::TaskConfig t;
    t.name = task.name;
    t.type = train::TaskType::SequenceClassification;
    t.labels = task.labels;
    t.max_length = z.max_length;
    c.tasks.push_back(t);
  }
  c.optim.lr = z.lr_modules;
  c.optim.lr_heads = z.lr_heads;
  c.optim.lr_backbone = z.lr_full;
  c.optim.schedule = "cosine";
  c.optim.warmup_steps = std::max<int64_t>(1, steps / 10);
  c.optim.min_lr_ratio = 0.1;
  c.optim.max_steps = steps;
  c.optim.batch_size = z.batch_size;
  c.optim.max_grad_norm = 1.0;
  c.eval.batch_size = 64;
  c.multitask.sampling = "uniform";
  c.log_every = std::max<int64_t>(1, steps / 5);
  return c;
}

train::Datasets datasets(const std::vector<Task>& tasks) {
  train::Datasets d;
  for (const auto& t : tasks) d[t.name] = {t.train, t.eval};
  return d;
}

json lora(int64_t r, double alpha) {
  return {
      {"peft_type", "LORA"}, {"r", r}, {"lora_alpha", alpha > 0 ? alpha : 2.0 * r}, {"target_modules", "all-linear"}};
}

train::TrainResult run(const train::TrainConfig& c, const train::Datasets& d, const Progress& progress,
                       const std::string& label) {
  train::Callbacks cb;
  std::string phase;
  cb.on_step = [&](const train::StepInfo& s) {
    if (!progress) return;
    if (s.phase != phase || s.step == s.total_steps) {
      std::ostringstream line;
      line << label << " [" << s.phase << "] step " << s.step << "/" << s.total_steps << " loss " << fmt(s.loss);
      progress(line.str());
      phase = s.phase;
    }
  };
  return train::train(c, d, cb);
}

}  // namespace modula::experiment::detail
