// WordPiece training (HF WordPieceTrainer): BPE merges with the "##" continuing prefix, the
// vocabulary kept as a WordPiece model with bert-base's pipeline.
#include <algorithm>

#include "text/trainers.h"

namespace modula::text {
namespace {

constexpr const char* kPrefix = "##";

// bert-base's "[CLS] $A [SEP]" / "[CLS] $A [SEP] $B:1 [SEP]:1".
ojson bert_template(int64_t cls, int64_t sep) {
  auto special = [](const char* id, int type) { return ojson{{"SpecialToken", {{"id", id}, {"type_id", type}}}}; };
  auto sequence = [](const char* id, int type) { return ojson{{"Sequence", {{"id", id}, {"type_id", type}}}}; };
  ojson single = ojson::array({special("[CLS]", 0), sequence("A", 0), special("[SEP]", 0)});
  ojson pair = single;
  pair.push_back(sequence("B", 1));
  pair.push_back(special("[SEP]", 1));
  ojson specials = {{"[CLS]", {{"id", "[CLS]"}, {"ids", {cls}}, {"tokens", {"[CLS]"}}}},
                    {"[SEP]", {{"id", "[SEP]"}, {"ids", {sep}}, {"tokens", {"[SEP]"}}}}};
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
}

}  // namespace

ojson wordpiece_tokenizer_json(const std::vector<WordCount>& words, const TrainerOptions& options, int64_t& merges) {
  BpeLearnConfig config;
  config.vocab_size = options.vocab_size;
  config.min_frequency = options.min_frequency;
  config.special_tokens = options.resolved_special_tokens();
  config.limit_alphabet = options.limit_alphabet;
  config.prefix = kPrefix;
  BpeLearned learned = learn_bpe(words, config);
  merges = static_cast<int64_t>(learned.merges.size());

  const std::vector<std::string>& specials = config.special_tokens;
  auto id_of = [&](const char* token) -> int64_t {
    auto it = std::find(specials.begin(), specials.end(), token);
    return it == specials.end() ? -1 : it - specials.begin();
  };
  ojson doc = tokenizer_skeleton(specials, options);
  int64_t cls = id_of("[CLS]"), sep = id_of("[SEP]");
  if (cls >= 0 && sep >= 0) doc["post_processor"] = bert_template(cls, sep);
  doc["decoder"] = {{"type", "WordPiece"}, {"prefix", kPrefix}, {"cleanup", true}};
  doc["model"] = {{"type", "WordPiece"},
                  {"unk_token", options.resolved_unk_token()},
                  {"continuing_subword_prefix", kPrefix},
                  {"max_input_chars_per_word", 100},
                  {"vocab", vocab_object(learned.vocab)}};
  return doc;
}

}  // namespace modula::text
