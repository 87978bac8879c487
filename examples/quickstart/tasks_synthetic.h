// Procedurally generated compositional sequence tasks: primitive skills on strings of
// symbols (reverse, sort, shift, duplicate) and tasks composing them ("reverse+shift"
// applies reverse, then shift). The benchmark behind `modula quickstart`, in the spirit
// of the survey's compositional tasks (§7: systematic generalisation, Ponti et al. 2022).
//
// A sequence is  [BOS] (marker) x_1 .. x_n [SEP] y_1 .. y_m [EOS] [PAD]...
// The marker token names the task in the text (pretraining); fine-tuning tasks leave it
// out: their identity is metadata (TaskBatch::task_ids), which selects a module.
//
//   auto tasks = parse_tasks({"reverse", "sort+shift"});
//   TaskSampler sampler(SequenceTaskOptions(), seed);
//   auto batch = sampler.sample(tasks, {0, 1}, 64, Split::Train, /*with_marker=*/false);
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace modula::train {

enum class Skill { Reverse, Sort, Shift, Duplicate };
std::string to_string(Skill s);
// Throws std::invalid_argument listing the skills for an unknown name.
Skill parse_skill(const std::string& name);
std::vector<Skill> all_skills();

// A task applies its skills left to right: "sort+shift"(x) = shift(sort(x)).
struct Task {
  std::string name;
  std::vector<Skill> skills;
};
// "reverse", "sort+shift", ...; throws std::invalid_argument naming the bad part.
Task parse_task(const std::string& name);
std::vector<Task> parse_tasks(const std::vector<std::string>& names);

struct SequenceTaskOptions {
  TORCH_ARG(int64_t, num_symbols) = 8;  // alphabet size
  TORCH_ARG(int64_t, min_length) = 3;   // input length range (inclusive)
  TORCH_ARG(int64_t, max_length) = 6;
  // One input in `heldout_every` (by a hash of its symbols) is reserved for evaluation,
  // so evaluation inputs never occur in training.
  TORCH_ARG(int64_t, heldout_every) = 8;

 public:
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

// Token ids: PAD 0, BOS 1, SEP 2, EOS 3, one marker per skill, then the symbols.
struct SymbolVocab {
  static constexpr int64_t pad = 0, bos = 1, sep = 2, eos = 3;
  int64_t num_symbols = 8;
  int64_t marker(Skill s) const { return 4 + static_cast<int64_t>(s); }
  int64_t symbol(int64_t s) const { return 4 + static_cast<int64_t>(all_skills().size()) + s; }
  int64_t size() const { return symbol(num_symbols); }
};

// The task's answer for input symbols x (values in [0, num_symbols)).
std::vector<int64_t> apply_skill(Skill s, std::vector<int64_t> x, int64_t num_symbols);
std::vector<int64_t> apply_task(const Task& t, std::vector<int64_t> x, int64_t num_symbols);
// Longest sequence (BOS .. EOS) the options can produce for these tasks.
int64_t max_sequence_length(const std::vector<Task>& tasks, const SequenceTaskOptions& o, bool with_marker);

enum class Split { Train, Heldout };

struct TaskBatch {
  torch::Tensor input_ids;  // [B,T] int64, right-padded with PAD
  torch::Tensor labels;     // [B,T] next-token targets on the answer (y and EOS), -100 elsewhere
  torch::Tensor task_ids;   // [B] index into the task list (the metadata that routes)
};

class TaskSampler {
 public:
  TaskSampler(SequenceTaskOptions options, uint64_t seed);
  // `batch` examples; row i is task task_ids[i % task_ids.size()] of `tasks`. With a
  // marker, a task's skills are written as marker tokens after BOS.
  TaskBatch sample(const std::vector<Task>& tasks, const std::vector<int64_t>& task_ids, int64_t batch, Split split,
                   bool with_marker);
  const SymbolVocab& vocab() const { return vocab_; }
  const SequenceTaskOptions& options() const { return options_; }

 private:
  std::vector<int64_t> draw_input(Split split);
  SequenceTaskOptions options_;
  SymbolVocab vocab_;
  std::mt19937_64 rng_;
};

// Teacher-forced next-token cross entropy over the answer tokens, logits [B,T,V].
torch::Tensor answer_loss(const torch::Tensor& logits, const torch::Tensor& labels);
// Per-row exact match [B] bool: every answer token (and EOS) is the argmax. Equal to greedy
// decoding's exact match for a causal model: greedy decoding reproduces the answer iff each
// step's argmax given the correct prefix is correct.
torch::Tensor exact_match(const torch::Tensor& logits, const torch::Tensor& labels);

}  // namespace modula::train
