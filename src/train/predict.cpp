// Predictions of a task for records: labels / tags with probabilities from the task's head
// (the same forward pass as evaluation: task_logits), completions for causal LMs.
#include <algorithm>

#include "evaluator_state.h"
#include "modula/backbone/generate.h"
#include "modula/modules/prompt.h"

namespace modula::train {
namespace {

using json = nlohmann::json;

constexpr std::string_view kPredictTag = "eval";

}  // namespace

std::vector<json> Evaluator::predict(const std::string& task, const std::vector<json>& records,
                                     const std::string& where, const PredictOptions& options) {
  auto& s = *state_;
  const size_t ti = s.find(task);
  auto& t = s.tasks[ti];
  if (t.cfg.type == TaskType::MaskedLM)
    throw_error<TrainError>(kPredictTag, "task '" + t.cfg.name + "' is masked_lm: it has no prediction (use evaluate)");
  options.generate.validate();
  const auto examples = t.enc.encode(records, where, /*for_prediction=*/true);
  detail::check_vocabulary(t.cfg.name, examples, s.model_config.vocab_size);
  torch::NoGradGuard g;
  auto inputs = s.activate(ti);
  std::vector<json> out;
  out.reserve(records.size());

  if (t.cfg.type == TaskType::CausalLM) {
    GenerateOptions o = options.generate;
    if (o.stop_ids.empty()) o.stop_ids = s.model_config.eos_token_ids;
    PrepareInput prepare = [&](BackboneInput& in) {
      KVCache scratch;  // generate() supplies the cache
      for (const auto& m : inputs) m->prepare(*s.model, in, scratch);
    };
    for (size_t i = 0; i < examples.size(); ++i) {
      s.route(ti, collate({&examples[i]}, t.enc.pad_id(), false));  // the row's task and metadata ids
      auto ids = generate(*s.model, examples[i].input_ids, o, {}, prepare);
      if (!ids.empty() && std::find(o.stop_ids.begin(), o.stop_ids.end(), ids.back()) != o.stop_ids.end())
        ids.pop_back();  // the end-of-sequence token is no text
      json r = records[i];
      r["completion"] = s.tokenizer->decode(ids);
      out.push_back(std::move(r));
    }
    return out;
  }

  const bool sequence = t.cfg.type == TaskType::SequenceClassification;
  const auto n = static_cast<int64_t>(examples.size());
  const auto& labels = t.enc.labels();
  for (int64_t start = 0; start < n; start += s.batch_size) {
    std::vector<const Example*> rows;
    for (int64_t i = start; i < std::min(n, start + s.batch_size); ++i) rows.push_back(&examples[i]);
    Batch b = collate(rows, t.enc.pad_id(), sequence);
    s.route(ti, b);
    auto scored = detail::task_logits(*s.model, t, inputs, b.to(s.device));
    auto logits = scored.logits.to(torch::kFloat32).cpu();  // [B,S,C]
    auto pred_t = logits.argmax(-1).contiguous();           // as evaluation scores it
    auto prob_t = torch::softmax(logits, -1).to(torch::kFloat64).contiguous();
    auto targets_t = scored.labels.cpu().contiguous();  // [B,S]: kIgnoreIndex where nothing is predicted
    auto pred = pred_t.accessor<int64_t, 2>();
    auto prob = prob_t.accessor<double, 3>();
    auto targets = targets_t.accessor<int64_t, 2>();
    for (int64_t i = 0; i < b.input_ids.size(0); ++i) {
      json r = records[static_cast<size_t>(start + i)];
      if (sequence) {
        json p = json::object();
        for (size_t c = 0; c < labels.size(); ++c) p[labels[c]] = prob[i][0][static_cast<int64_t>(c)];
        r["prediction"] = labels[static_cast<size_t>(pred[i][0])];
        r["probabilities"] = p;
      } else {
        json tags = json::array(), p = json::array();
        for (int64_t k = 0; k < targets_t.size(1); ++k) {
          if (targets[i][k] == kIgnoreIndex) continue;  // not a word's first sub-word
          const int64_t c = pred[i][k];
          tags.push_back(labels[static_cast<size_t>(c)]);
          p.push_back(prob[i][k][c]);
        }
        r["prediction"] = tags;
        r["probabilities"] = p;
      }
      out.push_back(std::move(r));
    }
  }
  return out;
}

}  // namespace modula::train
