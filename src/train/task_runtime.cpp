// Losses per task type: causal LM (next-token CE on scored labels), masked LM (CE at masked
// positions), sequence classification (pooled hidden -> head), token classification.
#include "task_runtime.h"

#include <algorithm>

#include "modula/composition/input_bank.h"
#include "modula/modules/prompt.h"
#include "modula/train/metrics.h"

namespace modula::train::detail {

Batch TaskRuntime::next_batch(int64_t batch_size) {
  auto shuffle = [&] {
    std::vector<int64_t> lengths(train.size());
    for (size_t i = 0; i < train.size(); ++i) lengths[i] = train[i].length();
    order = bucketed_batches(lengths, batch_size, data_seed + 1000003ULL * static_cast<uint64_t>(epoch));
    order_epoch = epoch;
  };
  if (order_epoch != epoch) shuffle();
  if (cursor >= static_cast<int64_t>(order.size())) {
    ++epoch, cursor = 0;
    shuffle();
  }
  std::vector<const Example*> rows;
  for (int64_t i : order[cursor]) rows.push_back(&train[i]);
  ++cursor;
  return collate(rows, enc.pad_id(), cfg.type == TaskType::SequenceClassification);
}

BackboneOutput forward_batch(Backbone& model, const InputModules& modules, const Batch& b) {
  BackboneInput in;
  in.input_ids = b.input_ids;
  in.attention_mask = b.attention_mask;
  if (!model.causal()) in.token_type_ids = b.token_type_ids;
  BackboneOutput out = modules.empty() ? model.forward(in) : forward_with(model, modules, in);
  // Prompt tuning returns the virtual positions too: keep the batch's own T (an input bank
  // knows where each row's real tokens are; a single prompt puts them last).
  const int64_t T = b.input_ids.size(1);
  std::shared_ptr<InputBankImpl> bank;
  for (const auto& m : modules)
    if (auto ib = std::dynamic_pointer_cast<InputBankImpl>(m)) bank = ib;
  auto own = [&](torch::Tensor t) {
    if (!t.defined() || t.dim() != 3 || t.size(1) <= T) return t;
    return bank ? bank->real_tokens(model, t) : t.narrow(1, t.size(1) - T, T);
  };
  out.last_hidden_state = own(out.last_hidden_state);
  out.logits = own(out.logits);
  return out;
}

namespace {

// Per-position CE summed over scored positions; collects predictions for metrics.
torch::Tensor token_ce(const torch::Tensor& logits, const torch::Tensor& labels, EvalSums* sums) {
  auto flat = logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32);
  auto y = labels.reshape({-1});
  auto count = y.ne(kIgnoreIndex).sum();
  auto total = torch::nn::functional::cross_entropy(
      flat, y, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex).reduction(torch::kSum));
  if (sums) {
    auto keep = y.ne(kIgnoreIndex);
    sums->nll += total.item<double>();
    sums->count += count.item<int64_t>();
    sums->preds.push_back(flat.argmax(-1).masked_select(keep).cpu());
    sums->targets.push_back(y.masked_select(keep).cpu());
  }
  return total / count.clamp_min(1).to(total.dtype());
}

}  // namespace

TaskLogits task_logits(Backbone& model, TaskRuntime& task, const InputModules& inputs, const Batch& b) {
  auto out = forward_batch(model, inputs, b);
  switch (task.cfg.type) {
    case TaskType::CausalLM: {
      if (!out.logits.defined() || out.logits.dim() != 3)
        throw_error<TrainError>("train", "task '" + task.cfg.name +
                                             "': causal_lm needs a model with a language-model head (" +
                                             model.config().architecture() + " has none)");
      // Position t predicts token t+1.
      const int64_t T = b.input_ids.size(1);
      auto labels = b.labels.masked_fill(b.attention_mask.eq(0), kIgnoreIndex);
      return {out.logits.narrow(1, 0, T - 1), labels.narrow(1, 1, T - 1)};
    }
    case TaskType::MaskedLM:
      if (!out.logits.defined() || out.logits.dim() != 3)
        throw_error<TrainError>("train", "task '" + task.cfg.name +
                                             "': masked_lm needs a model with a masked-LM head (" +
                                             model.config().architecture() + " has none)");
      return {out.logits, b.labels};
    case TaskType::TokenClassification:
      return {task.head(out.last_hidden_state.to(task.head->weight.scalar_type())), b.labels};
    case TaskType::SequenceClassification: {
      // Pool: the first token ([CLS]) for encoders, the last real token for decoders.
      const auto& h = out.last_hidden_state;
      torch::Tensor pooled;
      if (model.causal()) {
        auto last = (b.attention_mask.sum(1) - 1).clamp_min(0);
        pooled = h.index({torch::arange(h.size(0), last.options()), last});
      } else {
        pooled = h.select(1, 0);
      }
      return {task.head(pooled.to(task.head->weight.scalar_type())).unsqueeze(1), b.labels.unsqueeze(1)};
    }
  }
  throw_error<TrainError>("train", "unknown task type");
}

torch::Tensor batch_loss(Backbone& model, TaskRuntime& task, const InputModules& inputs, const Batch& b,
                         EvalSums* sums) {
  auto scored = task_logits(model, task, inputs, b);
  return token_ce(scored.logits, scored.labels, sums);
}

EvalSums eval_pass(Backbone& model, TaskRuntime& t, const InputModules& inputs, const EvalPass& p,
                   const std::function<void(const Batch&)>& route) {
  EvalSums sums;
  int64_t n = static_cast<int64_t>(t.eval.size());
  if (p.max_examples > 0) n = std::min(n, p.max_examples);
  for (int64_t s = 0, k = 0; s < n; s += p.batch_size, ++k) {
    if (k % p.world != p.rank) continue;
    std::vector<const Example*> rows;
    for (int64_t i = s; i < std::min(n, s + p.batch_size); ++i) rows.push_back(&t.eval[i]);
    Batch b = collate(rows, t.enc.pad_id(), t.cfg.type == TaskType::SequenceClassification);
    if (t.cfg.type == TaskType::MaskedLM)
      mask_tokens(b, t.cfg.mlm_probability, t.enc.mask_id(), p.vocab_size, t.enc.special_ids(),
                  mix({p.seed, 0xe7a1ULL, p.task_index, static_cast<uint64_t>(k)}));
    if (route) route(b);
    batch_loss(model, t, inputs, b.to(p.device), &sums);
  }
  return sums;
}

std::map<std::string, double> finish_eval(const TaskRuntime& task, const EvalSums& sums) {
  std::map<std::string, double> m;
  m["loss"] = sums.count ? sums.nll / static_cast<double>(sums.count) : 0.0;
  auto preds = sums.preds.empty() ? torch::empty({0}, torch::kInt64) : torch::cat(sums.preds);
  auto targets = sums.targets.empty() ? torch::empty({0}, torch::kInt64) : torch::cat(sums.targets);
  m["accuracy"] = accuracy(preds, targets);
  if (task.classification())
    m["macro_f1"] = macro_f1(preds, targets, task.num_labels());
  else
    m["perplexity"] = perplexity(sums.nll, sums.count);
  m["examples"] = static_cast<double>(task.eval.size());
  return m;
}

void check_vocabulary(const std::string& task, const std::vector<Example>& examples, int64_t vocab_size) {
  for (const auto& ex : examples)
    for (int64_t id : ex.input_ids)
      if (id < 0 || id >= vocab_size)
        throw_error<TrainError>("train", "task '" + task + "': token id " + std::to_string(id) +
                                             " is outside the model's vocabulary (" + std::to_string(vocab_size) +
                                             "): the tokenizer does not belong to the model");
}

}  // namespace modula::train::detail
