// Tokenizers: Hugging Face tokenizer.json (byte-level BPE, WordPiece, Unigram) and
// SentencePiece .model files, with ids and decoded text identical to the reference.
//
//   auto tok = modula::text::Tokenizer::from_file("tokenizer.json");
//   std::vector<int64_t> ids = tok->encode("Hello world");   // post-processor applied
//   std::string text = tok->decode(ids);                     // special tokens skipped
//
// tokenizer.json support: normalizers NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents,
// Replace, Prepend, BertNormalizer, ByteLevel, Sequence; pre-tokenizers ByteLevel,
// BertPreTokenizer, Whitespace, WhitespaceSplit, Metaspace, Split, Digits, Punctuation,
// CharDelimiterSplit, Sequence; models BPE, WordPiece, WordLevel, Unigram; post-processors
// TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence; decoders
// ByteLevel, WordPiece, Metaspace, BPEDecoder, ByteFallback, Fuse, Strip, Replace, CTC,
// Sequence. Other component types (e.g. the Precompiled normalizer) are rejected at load.
// Instances are immutable after loading; encode/decode may be called from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace modula::text {

// Thrown for malformed/unsupported tokenizer files (what() names the file and the offending
// JSON key, e.g. 'model.type') and for out-of-range ids; what() starts with "[tokenizer] ".
struct TokenizerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // path: a tokenizer.json, a SentencePiece .model, or a folder holding one of them
  // (tokenizer.json preferred, then tokenizer.model). Throws TokenizerError when the path is
  // missing, the JSON is invalid, or a component is unknown or malformed.
  static std::unique_ptr<Tokenizer> from_file(const std::string& path);

  // add_special_tokens: apply the post-processor template (e.g. [CLS] ... [SEP]),
  // as HF tokenizers' encode(text) does by default. Added tokens written in the text
  // (e.g. "<|endoftext|>") always map to their ids. Invalid UTF-8 in text is read as U+FFFD.
  // A SentencePiece .model never adds BOS/EOS (libsentencepiece's plain Encode).
  virtual std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = true) const = 0;
  // skip_special_tokens defaults to true, like HF's tokenizer.decode. Throws TokenizerError
  // for an id outside the vocabulary (HF silently drops such ids). For a SentencePiece
  // .model, control pieces (<s>, </s>) always decode to nothing, whatever the flag.
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const = 0;

  virtual int64_t vocab_size() const = 0;  // including added tokens
  virtual std::optional<int64_t> token_to_id(const std::string& token) const = 0;
  virtual std::string id_to_token(int64_t id) const = 0;  // throws on out-of-range id
};

// Whether SentencePiece .model files can be loaded: false in AddressSanitizer builds (the
// shim that keeps libsentencepiece's protobuf apart from libtorch's needs RTLD_DEEPBIND).
bool sentencepiece_available();

}  // namespace modula::text
