// Records (JSONL/CSV/TSV) -> examples of one task type -> padded, bucketed batches.
#include "modula/train/data.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"
#include "modula/util/strings.h"

namespace modula::train {
namespace {

using json = nlohmann::json;

constexpr std::string_view kDataTag = "train";

std::string at_line(const std::string& where, size_t line) { return where + ":" + std::to_string(line); }

// One CSV record starting at `pos` (RFC 4180: quoted fields, "" escapes, newlines in quotes).
std::vector<std::string> csv_record(const std::string& text, size_t& pos, char sep, size_t& line,
                                    const std::string& path) {
  std::vector<std::string> fields;
  std::string cur;
  bool quoted = false, was_quoted = false;
  size_t start_line = line;
  while (pos < text.size()) {
    char c = text[pos++];
    if (quoted) {
      if (c == '"' && pos < text.size() && text[pos] == '"')
        cur += '"', ++pos;
      else if (c == '"')
        quoted = false;
      else {
        if (c == '\n') ++line;
        cur += c;
      }
    } else if (c == '"' && sep == ',' && cur.empty() && !was_quoted) {
      quoted = was_quoted = true;
    } else if (c == sep) {
      fields.push_back(cur), cur.clear(), was_quoted = false;
    } else if (c == '\n') {
      ++line;
      break;
    } else if (c != '\r') {
      cur += c;
    }
  }
  if (quoted) throw_error<TrainError>(kDataTag, at_line(path, start_line) + ": unterminated quoted field");
  fields.push_back(cur);
  return fields;
}

std::vector<json> load_delimited(const std::string& path, const std::string& text, char sep) {
  size_t pos = 0, line = 1;
  auto header = csv_record(text, pos, sep, line, path);
  if (header.size() == 1 && header[0].empty())
    throw_error<TrainError>(kDataTag, path + ": empty file (expected a header row)");
  std::vector<json> out;
  while (pos < text.size()) {
    size_t here = line;
    auto fields = csv_record(text, pos, sep, line, path);
    if (fields.size() == 1 && fields[0].empty()) continue;  // blank line
    if (fields.size() != header.size())
      throw_error<TrainError>(kDataTag, at_line(path, here) + ": " + std::to_string(fields.size()) +
                                            " fields, the header has " + std::to_string(header.size()));
    json r = json::object();
    for (size_t i = 0; i < header.size(); ++i) r[header[i]] = fields[i];
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<json> load_jsonl(const std::string& path, const std::string& text) {
  std::vector<json> out;
  std::istringstream in(text);
  std::string s;
  for (size_t line = 1; std::getline(in, s); ++line) {
    if (s.find_first_not_of(" \t\r") == std::string::npos) continue;
    json r;
    try {
      r = parse_json(s);
    } catch (const JsonTextError& e) {
      throw_error<TrainError>(kDataTag, at_line(path, line) + ": invalid JSON (" + e.what() + ")");
    }
    if (!r.is_object())
      throw_error<TrainError>(kDataTag,
                              at_line(path, line) + ": each line must be a JSON object, got " + r.type_name());
    out.push_back(std::move(r));
  }
  return out;
}

bool all_integers(const std::vector<std::string>& v) {
  for (const auto& s : v)
    if (s.empty() || s.find_first_not_of("-0123456789") != std::string::npos || s.size() > 18) return false;
  return true;
}

std::string label_string(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer() || v.is_boolean()) return v.dump();
  return "";
}

const json& field(const json& r, const std::string& key, const std::string& where, size_t line) {
  if (!r.contains(key) || r[key].is_null()) {
    std::string keys;
    for (const auto& kv : r.items()) keys += (keys.empty() ? "" : ", ") + kv.key();
    throw_error<TrainError>(kDataTag,
                            at_line(where, line) + ": missing field '" + key + "' (record has: " + keys + ")");
  }
  return r[key];
}

std::string text_field(const json& r, const std::string& key, const std::string& where, size_t line) {
  const json& v = field(r, key, where, line);
  if (!v.is_string())
    throw_error<TrainError>(kDataTag,
                            at_line(where, line) + ": field '" + key + "' must be a string, got " + v.type_name());
  return v.get<std::string>();
}

// Words of token classification: a JSON list of strings, or a whitespace-separated string.
std::vector<std::string> word_list(const json& v, const std::string& key, const std::string& where, size_t line) {
  std::vector<std::string> out;
  if (v.is_string()) {
    std::istringstream in(v.get<std::string>());
    for (std::string w; in >> w;) out.push_back(w);
    return out;
  }
  if (!v.is_array())
    throw_error<TrainError>(kDataTag,
                            at_line(where, line) + ": field '" + key + "' must be a list, got " + v.type_name());
  for (const auto& e : v) {
    std::string s = label_string(e);
    if (s.empty() && !e.is_string())
      throw_error<TrainError>(kDataTag,
                              at_line(where, line) + ": field '" + key + "' has a non-string entry " + e.dump());
    out.push_back(s);
  }
  return out;
}

// A record's value of metadata field `f` in its string form (integers in decimal).
std::string metadata_value(const json& r, const MetadataField& f, const std::string& where, size_t line) {
  const std::string known = f.values.empty() ? "" : "; values: " + joined(f.values);
  if (!r.contains(f.name) || r[f.name].is_null()) {
    std::string keys;
    for (const auto& kv : r.items()) keys += (keys.empty() ? "" : ", ") + kv.key();
    throw_error<TrainError>(kDataTag, at_line(where, line) + ": missing metadata field '" + f.name +
                                          "' (record has: " + keys + known + ")");
  }
  const json& v = r[f.name];
  if (!v.is_string() && !v.is_number_integer())
    throw_error<TrainError>(kDataTag, at_line(where, line) + ": metadata field '" + f.name +
                                          "' must be a string or an integer, got " + v.dump());
  return v.is_string() ? v.get<std::string>() : v.dump();
}

}  // namespace

std::vector<MetadataField> resolve_metadata(std::vector<MetadataField> fields, const std::vector<NamedRecords>& train) {
  for (auto& f : fields) {
    if (!f.values.empty()) continue;
    std::set<std::string> seen;
    for (const auto& [where, records] : train)
      for (size_t i = 0; i < records->size(); ++i) seen.insert(metadata_value((*records)[i], f, where, i + 1));
    f.values.assign(seen.begin(), seen.end());
    if (all_integers(f.values))
      std::sort(f.values.begin(), f.values.end(),
                [](const auto& a, const auto& b) { return std::stoll(a) < std::stoll(b); });
  }
  return fields;
}

std::vector<json> load_records(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error<TrainError>(kDataTag, "cannot open data file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  std::string ext = fs::extension(path);
  std::vector<json> out;
  if (ext == ".csv")
    out = load_delimited(path, text, ',');
  else if (ext == ".tsv")
    out = load_delimited(path, text, '\t');
  else if (ext == ".jsonl" || ext == ".json")
    out = load_jsonl(path, text);
  else
    throw_error<TrainError>(kDataTag,
                            "data file " + path + ": unknown extension '" + ext + "' (.jsonl, .json, .csv, .tsv)");
  if (out.empty()) throw_error<TrainError>(kDataTag, "data file " + path + " has no records");
  return out;
}

Encoding Encoding::build(const TaskConfig& task, const std::vector<json>& train, const text::Tokenizer& tokenizer,
                         const io::ModelConfig& model, const std::vector<MetadataField>& metadata) {
  // Longer sequences index past the position table (libtorch: "index out of range in self").
  int64_t positions = model.max_position_embeddings;
  if ((model.model_type == "roberta" || model.model_type == "xlm-roberta") && model.pad_token_id)
    positions -= *model.pad_token_id + 1;  // RoBERTa positions start at padding_idx + 1
  if (task.max_length > positions)
    throw_error<ConfigError>(kDataTag, "max_length " + std::to_string(task.max_length) +
                                           " is above the model's position limit (max_position_embeddings " +
                                           std::to_string(model.max_position_embeddings) +
                                           (positions != model.max_position_embeddings
                                                ? ", " + std::to_string(positions) + " usable positions"
                                                : std::string()) +
                                           "): lower max_length");
  Encoding e;
  e.task_ = task;
  e.tokenizer_ = &tokenizer;
  e.metadata_ = metadata;
  for (const auto& f : metadata) {
    auto& ids = e.metadata_ids_.emplace_back();
    for (size_t i = 0; i < f.values.size(); ++i) ids[f.values[i]] = static_cast<int64_t>(i);
  }
  // Special tokens around a text: what the post-processor adds to an empty string.
  auto empty = tokenizer.encode("", true);
  if (empty.size() >= 2)
    e.prefix_ = {empty.front()}, e.suffix_ = {empty.back()};
  else if (empty.size() == 1) {
    bool is_eos =
        std::find(model.eos_token_ids.begin(), model.eos_token_ids.end(), empty[0]) != model.eos_token_ids.end();
    (is_eos ? e.suffix_ : e.prefix_) = {empty[0]};
  }
  e.special_ids_ = empty;
  e.eos_ = model.eos_token_ids.empty() ? std::vector<int64_t>{} : std::vector<int64_t>{model.eos_token_ids.front()};
  if (model.pad_token_id)
    e.pad_id_ = *model.pad_token_id;
  else if (!model.eos_token_ids.empty())
    e.pad_id_ = model.eos_token_ids.front();
  for (const char* t : {"[MASK]", "<mask>"})
    if (auto id = tokenizer.token_to_id(t)) e.mask_id_ = *id;
  for (const char* t : {"[PAD]", "<pad>"})
    if (auto id = tokenizer.token_to_id(t); id && !model.pad_token_id) e.pad_id_ = *id;
  e.special_ids_.push_back(e.pad_id_);

  if (task.type == TaskType::MaskedLM && e.mask_id_ < 0)
    throw_error<TrainError>(kDataTag,
                            "task '" + task.name + "': masked_lm needs a [MASK] or <mask> token in the tokenizer");
  bool classification = task.type == TaskType::SequenceClassification || task.type == TaskType::TokenClassification;
  if (classification) {
    e.labels_ = task.labels;
    if (e.labels_.empty()) {
      std::set<std::string> seen;
      for (size_t i = 0; i < train.size(); ++i) {
        if (task.type == TaskType::SequenceClassification) {
          const json& v = field(train[i], task.label_field, "task '" + task.name + "' train", i + 1);
          std::string s = label_string(v);
          if (s.empty() && !v.is_string())
            throw_error<TrainError>(kDataTag, "task '" + task.name + "' train record " + std::to_string(i + 1) +
                                                  ": label '" + task.label_field +
                                                  "' must be a string or integer, got " + v.dump());
          seen.insert(s);
        } else {
          for (auto& t : word_list(field(train[i], task.tags_field, "task '" + task.name + "' train", i + 1),
                                   task.tags_field, "task '" + task.name + "' train", i + 1))
            seen.insert(t);
        }
      }
      e.labels_.assign(seen.begin(), seen.end());
      if (all_integers(e.labels_))
        std::sort(e.labels_.begin(), e.labels_.end(),
                  [](const auto& a, const auto& b) { return std::stoll(a) < std::stoll(b); });
    }
    if (e.labels_.size() < 2)
      throw_error<TrainError>(
          kDataTag, "task '" + task.name + "' needs at least 2 labels, found " + std::to_string(e.labels_.size()));
    for (size_t i = 0; i < e.labels_.size(); ++i) e.label_ids_[e.labels_[i]] = static_cast<int64_t>(i);
  }
  return e;
}

int64_t Encoding::label_index(const json& v, const std::string& where, size_t line) const {
  std::string s = label_string(v);
  auto it = label_ids_.find(s);
  if (it == label_ids_.end()) {
    std::string known;
    for (const auto& l : labels_) known += (known.empty() ? "" : ", ") + l;
    throw_error<TrainError>(kDataTag,
                            at_line(where, line) + ": unknown label " + v.dump() + " (labels: " + known + ")");
  }
  return it->second;
}

Example Encoding::encode_one(const json& r, const std::string& where, size_t line, bool for_prediction) const {
  Example ex;
  for (size_t f = 0; f < metadata_.size(); ++f) {
    const std::string v = metadata_value(r, metadata_[f], where, line);
    auto it = metadata_ids_[f].find(v);
    if (it == metadata_ids_[f].end())
      throw_error<TrainError>(kDataTag, at_line(where, line) + ": unknown value " + r[metadata_[f].name].dump() +
                                            " of metadata field '" + metadata_[f].name +
                                            "' (values: " + joined(metadata_[f].values) + ")");
    ex.metadata.push_back(it->second);
  }
  const auto max_len = static_cast<size_t>(task_.max_length);
  auto truncate = [&](std::vector<int64_t>& v) {
    if (v.size() > max_len) v.resize(max_len);
  };
  switch (task_.type) {
    case TaskType::CausalLM: {
      bool prompted = !r.contains(task_.text_field) && r.contains(task_.completion_field);
      if (for_prediction) {  // the prompt to continue
        const bool has_prompt = r.contains(task_.prompt_field) && !r[task_.prompt_field].is_null();
        ex.input_ids =
            tokenizer_->encode(text_field(r, has_prompt ? task_.prompt_field : task_.text_field, where, line), true);
        truncate(ex.input_ids);
        ex.labels.assign(ex.input_ids.size(), kIgnoreIndex);
      } else if (!prompted) {
        ex.input_ids = tokenizer_->encode(text_field(r, task_.text_field, where, line), true);
        ex.input_ids.insert(ex.input_ids.end(), eos_.begin(), eos_.end());
        truncate(ex.input_ids);
        ex.labels = ex.input_ids;
      } else {
        // Loss on the completion only (prompt tokens are context).
        auto prompt = r.contains(task_.prompt_field)
                          ? tokenizer_->encode(text_field(r, task_.prompt_field, where, line), true)
                          : prefix_;
        auto completion = tokenizer_->encode(text_field(r, task_.completion_field, where, line), false);
        completion.insert(completion.end(), eos_.begin(), eos_.end());
        ex.input_ids = prompt;
        ex.input_ids.insert(ex.input_ids.end(), completion.begin(), completion.end());
        ex.labels.assign(prompt.size(), kIgnoreIndex);
        ex.labels.insert(ex.labels.end(), completion.begin(), completion.end());
        truncate(ex.input_ids);
        truncate(ex.labels);
      }
      break;
    }
    case TaskType::MaskedLM:
      ex.input_ids = tokenizer_->encode(text_field(r, task_.text_field, where, line), true);
      truncate(ex.input_ids);
      break;
    case TaskType::SequenceClassification: {
      ex.input_ids = tokenizer_->encode(text_field(r, task_.text_field, where, line), true);
      ex.token_type_ids.assign(ex.input_ids.size(), 0);
      if (!task_.text_pair_field.empty()) {
        auto b = tokenizer_->encode(text_field(r, task_.text_pair_field, where, line), false);
        b.insert(b.end(), suffix_.begin(), suffix_.end());
        ex.input_ids.insert(ex.input_ids.end(), b.begin(), b.end());
        ex.token_type_ids.resize(ex.input_ids.size(), 1);
      }
      truncate(ex.input_ids);
      truncate(ex.token_type_ids);
      const bool unlabeled = for_prediction && (!r.contains(task_.label_field) || r[task_.label_field].is_null());
      ex.label = unlabeled ? kNoLabel : label_index(field(r, task_.label_field, where, line), where, line);
      break;
    }
    case TaskType::TokenClassification: {
      auto words = word_list(field(r, task_.tokens_field, where, line), task_.tokens_field, where, line);
      const bool unlabeled = for_prediction && (!r.contains(task_.tags_field) || r[task_.tags_field].is_null());
      auto tags = unlabeled ? std::vector<std::string>(words.size())
                            : word_list(field(r, task_.tags_field, where, line), task_.tags_field, where, line);
      if (words.size() != tags.size())
        throw_error<TrainError>(kDataTag, at_line(where, line) + ": " + std::to_string(words.size()) + " tokens but " +
                                              std::to_string(tags.size()) + " tags");
      ex.input_ids = prefix_;
      ex.labels.assign(prefix_.size(), kIgnoreIndex);
      for (size_t w = 0; w < words.size(); ++w) {
        // The first sub-word carries the word's tag; the rest are unscored.
        auto pieces = tokenizer_->encode((w == 0 ? "" : " ") + words[w], false);
        if (pieces.empty()) continue;
        int64_t tag = unlabeled ? kNoLabel : label_index(tags[w], where, line);
        for (size_t k = 0; k < pieces.size(); ++k) {
          ex.input_ids.push_back(pieces[k]);
          ex.labels.push_back(k == 0 ? tag : kIgnoreIndex);
        }
      }
      ex.input_ids.insert(ex.input_ids.end(), suffix_.begin(), suffix_.end());
      ex.labels.resize(ex.input_ids.size(), kIgnoreIndex);
      truncate(ex.input_ids);
      truncate(ex.labels);
      break;
    }
  }
  if (ex.input_ids.empty())
    throw_error<TrainError>(kDataTag, at_line(where, line) + ": the record encodes to no tokens");
  return ex;
}

std::vector<Example> Encoding::encode(const std::vector<json>& records, const std::string& where,
                                      bool for_prediction) const {
  std::vector<Example> out;
  out.reserve(records.size());
  for (size_t i = 0; i < records.size(); ++i) out.push_back(encode_one(records[i], where, i + 1, for_prediction));
  return out;
}

Batch Batch::to(const torch::Device& d) const {
  return {input_ids.to(d),
          attention_mask.to(d),
          token_type_ids.to(d),
          labels.defined() ? labels.to(d) : labels,
          tokens,
          metadata.defined() ? metadata.to(d) : metadata};
}

Batch collate(const std::vector<const Example*>& examples, int64_t pad_id, bool sequence_labels) {
  const auto B = static_cast<int64_t>(examples.size());
  int64_t T = 0;
  for (const auto* e : examples) T = std::max(T, e->length());
  auto ids = torch::full({B, T}, pad_id, torch::kInt64);
  auto mask = torch::zeros({B, T}, torch::kInt64);
  auto types = torch::zeros({B, T}, torch::kInt64);
  auto labels = sequence_labels ? torch::empty({B}, torch::kInt64) : torch::full({B, T}, kIgnoreIndex, torch::kInt64);
  const auto F = B > 0 ? static_cast<int64_t>(examples[0]->metadata.size()) : 0;
  auto meta = torch::empty({B, F}, torch::kInt64);
  auto ids_a = ids.accessor<int64_t, 2>(), mask_a = mask.accessor<int64_t, 2>(), types_a = types.accessor<int64_t, 2>();
  auto meta_a = meta.accessor<int64_t, 2>();
  Batch b;
  for (int64_t i = 0; i < B; ++i) {
    const Example& e = *examples[i];
    for (int64_t f = 0; f < F; ++f) meta_a[i][f] = e.metadata.at(static_cast<size_t>(f));
    for (int64_t t = 0; t < e.length(); ++t) {
      ids_a[i][t] = e.input_ids[t];
      mask_a[i][t] = 1;
      if (!e.token_type_ids.empty()) types_a[i][t] = e.token_type_ids[t];
    }
    if (sequence_labels)
      labels[i] = e.label;
    else if (!e.labels.empty())
      labels[i].narrow(0, 0, e.length()).copy_(torch::tensor(e.labels, torch::kInt64));
    b.tokens += e.length();
  }
  b.input_ids = ids, b.attention_mask = mask, b.token_type_ids = types, b.labels = labels, b.metadata = meta;
  return b;
}

void mask_tokens(Batch& batch, double p, int64_t mask_id, int64_t vocab_size, const std::vector<int64_t>& special_ids,
                 uint64_t seed) {
  torch::Generator gen = at::detail::createCPUGenerator(seed);
  auto ids = batch.input_ids;
  auto candidates = batch.attention_mask.to(torch::kBool);
  for (int64_t s : special_ids) candidates &= ids.ne(s);
  auto u = torch::rand(ids.sizes(), gen, torch::kFloat32);
  auto chosen = (u < p) & candidates;
  batch.labels = torch::where(chosen, ids, torch::full_like(ids, kIgnoreIndex));
  auto how = torch::rand(ids.sizes(), gen, torch::kFloat32);
  auto random_ids = torch::randint(vocab_size, ids.sizes(), gen, torch::kInt64);
  auto out = torch::where(chosen & (how < 0.8), torch::full_like(ids, mask_id), ids);
  batch.input_ids = torch::where(chosen & (how >= 0.8) & (how < 0.9), random_ids, out);
}

std::vector<std::vector<int64_t>> bucketed_batches(const std::vector<int64_t>& lengths, int64_t batch_size,
                                                   uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  const size_t window = static_cast<size_t>(batch_size) * 50;
  for (size_t s = 0; s < order.size(); s += window) {
    auto end = order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), s + window));
    std::stable_sort(order.begin() + static_cast<std::ptrdiff_t>(s), end,
                     [&](int64_t a, int64_t b) { return lengths[a] < lengths[b]; });
  }
  std::vector<std::vector<int64_t>> batches;
  for (size_t s = 0; s < order.size(); s += static_cast<size_t>(batch_size))
    batches.emplace_back(
        order.begin() + static_cast<std::ptrdiff_t>(s),
        order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), s + static_cast<size_t>(batch_size))));
  std::shuffle(batches.begin(), batches.end(), rng);
  return batches;
}

}  // namespace modula::train
