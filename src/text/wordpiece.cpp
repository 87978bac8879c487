// WordPiece: greedy longest-match-first over a word (HF models::wordpiece).
#include "text/models.h"
#include "text/unicode.h"

namespace modula::text {
namespace {

class WordPiece : public Model {
 public:
  WordPiece(const json& j, const std::string& where)
      : vocab_(parse_vocab_object(j, where)),
        unk_(get_string_or(j, where, "unk_token", "[UNK]")),
        prefix_(get_string_or(j, where, "continuing_subword_prefix", "##")),
        max_chars_(get_int_or(j, where, "max_input_chars_per_word", 100)) {
    // Checked here, not at the first unknown word: a vocab without its unk token is a broken file.
    if (!vocab_.find(unk_)) config_fail(where + ".unk_token", "'" + unk_ + "' is not in the vocab");
  }

  void tokenize(const std::string& word, std::vector<int64_t>& ids) const override {
    if (static_cast<int64_t>(unicode::code_point_count(word)) > max_chars_) return push_unk(ids);
    std::vector<int64_t> pieces;
    for (size_t start = 0; start < word.size();) {
      size_t end = word.size();
      std::optional<int64_t> found;
      while (start < end) {
        std::string candidate = (start > 0 ? prefix_ : std::string()) + word.substr(start, end - start);
        if ((found = vocab_.find(candidate))) break;
        end = previous_boundary(word, end);
      }
      if (!found) return push_unk(ids);  // HF: any unmatched remainder makes the whole word unk
      pieces.push_back(*found);
      start = end;
    }
    ids.insert(ids.end(), pieces.begin(), pieces.end());
  }

  std::optional<int64_t> token_to_id(const std::string& t) const override { return vocab_.find(t); }
  std::optional<std::string> id_to_token(int64_t id) const override { return vocab_.token(id); }
  int64_t vocab_size() const override { return vocab_.size(); }

 private:
  // Start of the code point that ends at byte `end`.
  static size_t previous_boundary(const std::string& s, size_t end) {
    size_t i = end - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    return i;
  }

  void push_unk(std::vector<int64_t>& ids) const {
    auto unk = vocab_.find(unk_);
    if (!unk) throw TokenizerError("[tokenizer] WordPiece: unk token '" + unk_ + "' not in vocab");
    ids.push_back(*unk);
  }

  Vocab vocab_;
  std::string unk_, prefix_;
  int64_t max_chars_;
};

}  // namespace

std::unique_ptr<Model> make_wordpiece(const json& j, const std::string& where) {
  return std::make_unique<WordPiece>(j, where);
}

}  // namespace modula::text
