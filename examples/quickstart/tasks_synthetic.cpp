// Compositional sequence tasks: skills, their composition, sampling with a held-out split.
#include "quickstart/tasks_synthetic.h"

#include <algorithm>
#include <stdexcept>

namespace modula::train {
namespace {

[[noreturn]] void bad_task(const std::string& msg) { throw std::invalid_argument("[tasks] " + msg); }

// FNV-1a over the symbols: a fixed, seed-independent partition of the input space.
uint64_t input_hash(const std::vector<int64_t>& x) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t s : x) h = (h ^ static_cast<uint64_t>(s + 1)) * 1099511628211ull;
  return h ^ (h >> 29);
}

}  // namespace

std::vector<Skill> all_skills() { return {Skill::Reverse, Skill::Sort, Skill::Shift, Skill::Duplicate}; }

std::string to_string(Skill s) {
  switch (s) {
    case Skill::Reverse:
      return "reverse";
    case Skill::Sort:
      return "sort";
    case Skill::Shift:
      return "shift";
    case Skill::Duplicate:
      return "duplicate";
  }
  return "?";
}

Skill parse_skill(const std::string& name) {
  for (Skill s : all_skills())
    if (to_string(s) == name) return s;
  bad_task("unknown skill '" + name + "' (skills: reverse, sort, shift, duplicate)");
}

Task parse_task(const std::string& name) {
  if (name.empty()) bad_task("empty task name");
  Task t{name, {}};
  size_t start = 0;
  while (true) {
    size_t plus = name.find('+', start);
    std::string part = name.substr(start, plus == std::string::npos ? std::string::npos : plus - start);
    if (part.empty()) bad_task("task '" + name + "' has an empty skill (write e.g. \"sort+shift\")");
    t.skills.push_back(parse_skill(part));
    if (plus == std::string::npos) break;
    start = plus + 1;
  }
  return t;
}

std::vector<Task> parse_tasks(const std::vector<std::string>& names) {
  std::vector<Task> tasks;
  for (const auto& n : names) tasks.push_back(parse_task(n));
  return tasks;
}

void SequenceTaskOptions::validate() const {
  if (num_symbols_ < 2) bad_task("num_symbols must be >= 2, got " + std::to_string(num_symbols_));
  if (min_length_ < 1) bad_task("min_length must be >= 1, got " + std::to_string(min_length_));
  if (max_length_ < min_length_)
    bad_task("max_length (" + std::to_string(max_length_) + ") must be >= min_length (" + std::to_string(min_length_) +
             ")");
  if (heldout_every_ < 2) bad_task("heldout_every must be >= 2, got " + std::to_string(heldout_every_));
}

std::vector<int64_t> apply_skill(Skill s, std::vector<int64_t> x, int64_t num_symbols) {
  switch (s) {
    case Skill::Reverse:
      std::reverse(x.begin(), x.end());
      return x;
    case Skill::Sort:
      std::sort(x.begin(), x.end());
      return x;
    case Skill::Shift:
      for (auto& v : x) v = (v + 1) % num_symbols;  // each symbol to its successor, cyclic
      return x;
    case Skill::Duplicate: {
      std::vector<int64_t> y;
      for (auto v : x) y.insert(y.end(), {v, v});
      return y;
    }
  }
  return x;
}

std::vector<int64_t> apply_task(const Task& t, std::vector<int64_t> x, int64_t num_symbols) {
  for (Skill s : t.skills) x = apply_skill(s, std::move(x), num_symbols);
  return x;
}

int64_t max_sequence_length(const std::vector<Task>& tasks, const SequenceTaskOptions& o, bool with_marker) {
  int64_t longest = 0;
  for (const auto& t : tasks) {
    int64_t out = o.max_length();
    for (Skill s : t.skills)
      if (s == Skill::Duplicate) out *= 2;
    int64_t markers = with_marker ? static_cast<int64_t>(t.skills.size()) : 0;
    longest = std::max(longest, 1 + markers + o.max_length() + 1 + out + 1);
  }
  return longest;
}

TaskSampler::TaskSampler(SequenceTaskOptions options, uint64_t seed) : options_(options), rng_(seed) {
  options_.validate();
  vocab_.num_symbols = options_.num_symbols();
}

std::vector<int64_t> TaskSampler::draw_input(Split split) {
  std::uniform_int_distribution<int64_t> len(options_.min_length(), options_.max_length());
  std::uniform_int_distribution<int64_t> sym(0, options_.num_symbols() - 1);
  while (true) {  // rejection: about one draw in heldout_every lands in the held-out part
    std::vector<int64_t> x(len(rng_));
    for (auto& v : x) v = sym(rng_);
    bool heldout = input_hash(x) % static_cast<uint64_t>(options_.heldout_every()) == 0;
    if (heldout == (split == Split::Heldout)) return x;
  }
}

TaskBatch TaskSampler::sample(const std::vector<Task>& tasks, const std::vector<int64_t>& task_ids, int64_t batch,
                              Split split, bool with_marker) {
  if (tasks.empty() || task_ids.empty()) bad_task("sample needs at least one task");
  if (batch < 1) bad_task("batch must be >= 1, got " + std::to_string(batch));
  for (auto id : task_ids)
    if (id < 0 || id >= static_cast<int64_t>(tasks.size()))
      bad_task("task id " + std::to_string(id) + " out of range [0, " + std::to_string(tasks.size()) + ")");
  int64_t T = max_sequence_length(tasks, options_, with_marker);
  auto ids = torch::full({batch, T}, SymbolVocab::pad, torch::kLong);
  auto labels = torch::full({batch, T}, -100, torch::kLong);
  auto tids = torch::empty({batch}, torch::kLong);
  auto id_a = ids.accessor<int64_t, 2>();
  auto label_a = labels.accessor<int64_t, 2>();
  for (int64_t b = 0; b < batch; ++b) {
    int64_t k = task_ids[static_cast<size_t>(b) % task_ids.size()];
    const Task& task = tasks[static_cast<size_t>(k)];
    tids[b] = k;
    auto x = draw_input(split);
    auto y = apply_task(task, x, options_.num_symbols());
    std::vector<int64_t> seq{SymbolVocab::bos};
    if (with_marker)
      for (Skill s : task.skills) seq.push_back(vocab_.marker(s));
    for (auto v : x) seq.push_back(vocab_.symbol(v));
    seq.push_back(SymbolVocab::sep);
    size_t answer = seq.size();
    for (auto v : y) seq.push_back(vocab_.symbol(v));
    seq.push_back(SymbolVocab::eos);
    for (size_t t = 0; t < seq.size(); ++t) id_a[b][static_cast<int64_t>(t)] = seq[t];
    // Position t predicts token t+1: targets are the answer tokens and EOS.
    for (size_t t = answer; t < seq.size(); ++t) label_a[b][static_cast<int64_t>(t) - 1] = seq[t];
  }
  return {ids, labels, tids};
}

torch::Tensor answer_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), labels.reshape({-1}),
                                              torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
}

torch::Tensor exact_match(const torch::Tensor& logits, const torch::Tensor& labels) {
  auto answer = labels.ne(-100);
  auto wrong = logits.argmax(-1).ne(labels).logical_and(answer);
  return wrong.any(1).logical_not();
}

}  // namespace modula::train
