// TokenizerTrainer: options, word counting through the written pipeline, dispatch per model.
#include <algorithm>
#include <fstream>
#include <unordered_map>
#include <unordered_set>

#include "modula/util/error.h"
#include "text/normalizers.h"
#include "text/pre_tokenizers.h"
#include "text/trainers.h"
#include "text/unicode.h"

namespace modula::text {
namespace {

void option_check(bool ok, const std::string& msg) { check<ConfigError>(ok, kTrainerTag, msg); }

}  // namespace

TrainerModel parse_trainer_model(const std::string& name) {
  if (name == "bpe") return TrainerModel::Bpe;
  if (name == "wordpiece") return TrainerModel::WordPiece;
  if (name == "unigram") return TrainerModel::Unigram;
  throw_error<ConfigError>(kTrainerTag, "model '" + name + "' is unknown (valid: bpe, wordpiece, unigram)");
}

const char* trainer_model_name(TrainerModel model) {
  switch (model) {
    case TrainerModel::Bpe:
      return "bpe";
    case TrainerModel::WordPiece:
      return "wordpiece";
    case TrainerModel::Unigram:
      return "unigram";
  }
  return "?";
}

std::vector<std::string> default_special_tokens(TrainerModel model) {
  switch (model) {
    case TrainerModel::Bpe:
      return {"<|endoftext|>"};
    case TrainerModel::WordPiece:
      return {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
    case TrainerModel::Unigram:
      return {"<unk>", "<s>", "</s>"};
  }
  return {};
}

std::string TrainerOptions::resolved_unk_token() const {
  if (model == TrainerModel::Bpe) return "";
  if (!unk_token.empty()) return unk_token;
  return model == TrainerModel::WordPiece ? "[UNK]" : "<unk>";
}

std::vector<std::string> TrainerOptions::resolved_special_tokens() const {
  std::vector<std::string> specials = special_tokens.empty() ? default_special_tokens(model) : special_tokens;
  std::string unk = resolved_unk_token();
  if (!unk.empty() && std::find(specials.begin(), specials.end(), unk) == specials.end())
    specials.insert(specials.begin(), unk);
  return specials;
}

void TrainerOptions::validate() const {
  option_check(min_frequency >= 1, "min_frequency must be >= 1, got " + std::to_string(min_frequency));
  option_check(limit_alphabet >= 0, "limit_alphabet must be >= 0, got " + std::to_string(limit_alphabet));
  option_check(max_piece_length >= 1, "max_piece_length must be >= 1, got " + std::to_string(max_piece_length));
  option_check(seed_size >= 1, "seed_size must be >= 1, got " + std::to_string(seed_size));
  option_check(n_sub_iterations >= 1, "n_sub_iterations must be >= 1, got " + std::to_string(n_sub_iterations));
  option_check(shrinking_factor > 0 && shrinking_factor < 1,
               "shrinking_factor must be in (0, 1), got " + std::to_string(shrinking_factor));
  option_check(model != TrainerModel::Bpe || unk_token.empty(),
               "unk_token is for wordpiece and unigram (byte-level bpe covers every byte)");
  std::unordered_set<std::string> seen;
  for (const std::string& t : special_tokens) {
    option_check(!t.empty(), "special_tokens holds an empty token");
    option_check(seen.insert(t).second, "special_tokens lists '" + t + "' twice");
  }
  int64_t specials = static_cast<int64_t>(resolved_special_tokens().size());
  if (model == TrainerModel::Bpe)
    option_check(vocab_size > 256 + specials, "vocab_size " + std::to_string(vocab_size) +
                                                  " must exceed the byte alphabet (256) plus " +
                                                  std::to_string(specials) + " special token(s)");
  else
    option_check(vocab_size > specials, "vocab_size " + std::to_string(vocab_size) + " must exceed the " +
                                            std::to_string(specials) + " special token(s)");
}

ojson trainer_normalizer(const TrainerOptions& o) {
  switch (o.model) {
    case TrainerModel::Bpe:
      return o.lowercase ? ojson{{"type", "Lowercase"}} : ojson(nullptr);
    case TrainerModel::WordPiece:
      return {{"type", "BertNormalizer"},
              {"clean_text", true},
              {"handle_chinese_chars", true},
              {"strip_accents", nullptr},
              {"lowercase", o.lowercase}};
    case TrainerModel::Unigram: {
      ojson steps = ojson::array({{{"type", "NFKC"}}});
      if (o.lowercase) steps.push_back({{"type", "Lowercase"}});
      return {{"type", "Sequence"}, {"normalizers", steps}};
    }
  }
  return nullptr;
}

ojson trainer_pre_tokenizer(const TrainerOptions& o) {
  switch (o.model) {
    case TrainerModel::Bpe:
      return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
    case TrainerModel::WordPiece:
      return {{"type", "BertPreTokenizer"}};
    case TrainerModel::Unigram:
      return {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}, {"split", true}};
  }
  return nullptr;
}

ojson special_added_tokens(const std::vector<std::string>& specials) {
  ojson list = ojson::array();
  for (size_t i = 0; i < specials.size(); ++i)
    list.push_back({{"id", i},
                    {"content", specials[i]},
                    {"single_word", false},
                    {"lstrip", false},
                    {"rstrip", false},
                    {"normalized", false},
                    {"special", true}});
  return list;
}

ojson tokenizer_skeleton(const std::vector<std::string>& specials, const TrainerOptions& o) {
  ojson doc;
  doc["version"] = "1.0";
  doc["truncation"] = nullptr;
  doc["padding"] = nullptr;
  doc["added_tokens"] = special_added_tokens(specials);
  doc["normalizer"] = trainer_normalizer(o);
  doc["pre_tokenizer"] = trainer_pre_tokenizer(o);
  doc["post_processor"] = nullptr;
  doc["decoder"] = nullptr;
  doc["model"] = nullptr;
  return doc;
}

ojson vocab_object(const std::vector<std::string>& tokens) {
  ojson vocab = ojson::object();
  auto& entries = static_cast<std::vector<std::pair<const std::string, ojson>>&>(vocab.get_ref<ojson::object_t&>());
  entries.reserve(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) entries.emplace_back(tokens[id], id);
  return vocab;
}

int64_t alphabet_size(const std::vector<WordCount>& words) {
  std::unordered_set<char32_t> chars;
  for (const WordCount& w : words)
    for (size_t i = 0; i < w.first.size();) chars.insert(unicode::next_code_point(w.first, i));
  return static_cast<int64_t>(chars.size());
}

void TrainedTokenizer::save(const std::string& path) const {
  std::ofstream out(path, std::ios::binary);
  out << json;
  out.flush();
  if (!out) throw_error<std::runtime_error>(kTrainerTag, "cannot write " + path);
}

struct TokenizerTrainer::Impl {
  TrainerOptions options;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unordered_map<std::string, int64_t> counts;
  int64_t lines = 0;
};

TokenizerTrainer::TokenizerTrainer(TrainerOptions options) : impl_(std::make_unique<Impl>()) {
  options.validate();
  impl_->options = std::move(options);
  // The counting pipeline is built from the very JSON that is written, so training and
  // loading cut words the same way.
  json norm = json::parse(trainer_normalizer(impl_->options).dump());
  json pre = json::parse(trainer_pre_tokenizer(impl_->options).dump());
  impl_->normalizer = make_normalizer(norm, "normalizer");
  impl_->pre_tokenizer = make_pre_tokenizer(pre, "pre_tokenizer");
}

TokenizerTrainer::~TokenizerTrainer() = default;

void TokenizerTrainer::feed(std::string_view text) {
  ++impl_->lines;
  Piece piece{unicode::to_valid_utf8(text), true};
  if (impl_->normalizer) impl_->normalizer->normalize(piece.text);
  if (piece.text.empty()) return;
  for (Piece& word : impl_->pre_tokenizer->pre_tokenize(piece))
    if (!word.text.empty()) ++impl_->counts[word.text];
}

void TokenizerTrainer::feed_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error<std::runtime_error>(kTrainerTag, "cannot open " + path);
  bool keep_newline = impl_->options.model == TrainerModel::Bpe;
  for (std::string line; std::getline(in, line);) {
    if (keep_newline && !in.eof()) line += '\n';
    feed(line);
  }
  if (in.bad()) throw_error<std::runtime_error>(kTrainerTag, "error reading " + path);
}

void TokenizerTrainer::add_word(const std::string& word, int64_t count) {
  check<ConfigError>(count >= 1, kTrainerTag, "add_word count must be >= 1");
  if (!word.empty()) impl_->counts[unicode::to_valid_utf8(word)] += count;
}

int64_t TokenizerTrainer::lines() const { return impl_->lines; }
int64_t TokenizerTrainer::unique_words() const { return static_cast<int64_t>(impl_->counts.size()); }

TrainedTokenizer TokenizerTrainer::train() const {
  const TrainerOptions& o = impl_->options;
  check<ConfigError>(!impl_->counts.empty(), kTrainerTag, "no words to train on (empty input)");
  std::vector<WordCount> words(impl_->counts.begin(), impl_->counts.end());
  std::sort(words.begin(), words.end());
  if (o.model != TrainerModel::Bpe) {
    int64_t alphabet = alphabet_size(words);
    if (o.model == TrainerModel::WordPiece && o.limit_alphabet > 0) alphabet = std::min(alphabet, o.limit_alphabet);
    int64_t specials = static_cast<int64_t>(o.resolved_special_tokens().size());
    check<ConfigError>(o.vocab_size > alphabet + specials, kTrainerTag,
                       "vocab_size " + std::to_string(o.vocab_size) + " must exceed the corpus alphabet (" +
                           std::to_string(alphabet) + " characters) plus " + std::to_string(specials) +
                           " special token(s)");
  }
  TrainedTokenizer out;
  ojson doc;
  switch (o.model) {
    case TrainerModel::Bpe:
      doc = bpe_tokenizer_json(words, o, out.merges);
      break;
    case TrainerModel::WordPiece:
      doc = wordpiece_tokenizer_json(words, o, out.merges);
      break;
    case TrainerModel::Unigram:
      doc = unigram_tokenizer_json(words, o);
      break;
  }
  const ojson& vocab = doc["model"]["vocab"];
  out.vocab_size = static_cast<int64_t>(vocab.size());
  out.json = doc.dump(2);
  return out;
}

}  // namespace modula::text
