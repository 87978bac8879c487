#include "text/post_processor.h"

#include <sstream>
#include <unordered_map>

namespace modula::text {
namespace {

// cls/sep given as ["token", id] (HF BertProcessing / RobertaProcessing).
int64_t token_pair_id(const json& j, const std::string& where, const char* name) {
  const json& v = require(j, where, name);
  if (!v.is_array() || v.size() != 2 || !v[1].is_number_integer())
    config_fail(where + "." + name, "expected [token, id]");
  return v[1].get<int64_t>();
}

// BertProcessing and RobertaProcessing: [cls] ids [sep] for a single sequence.
class ClsSep : public PostProcessor {
 public:
  ClsSep(const json& j, const std::string& where)
      : cls_(token_pair_id(j, where, "cls")), sep_(token_pair_id(j, where, "sep")) {}
  std::vector<int64_t> process(std::vector<int64_t> ids) const override {
    ids.insert(ids.begin(), cls_);
    ids.push_back(sep_);
    return ids;
  }

 private:
  int64_t cls_, sep_;
};

class Template : public PostProcessor {
 public:
  Template(const json& j, const std::string& where) {
    parse_special_tokens(j, where);
    const json& single = require(j, where, "single");
    if (single.is_string()) {
      std::istringstream words(single.get<std::string>());
      for (std::string w; words >> w;) add_string_item(w, where + ".single");
    } else if (single.is_array()) {
      for (size_t i = 0; i < single.size(); ++i) add_item(single[i], where + ".single[" + std::to_string(i) + "]");
    } else {
      config_fail(where + ".single", "expected a template array or string");
    }
  }

  std::vector<int64_t> process(std::vector<int64_t> ids) const override {
    std::vector<int64_t> out;
    for (const Item& item : items_) {
      if (item.is_sequence)
        out.insert(out.end(), ids.begin(), ids.end());
      else
        out.insert(out.end(), item.ids.begin(), item.ids.end());
    }
    return out;
  }

 private:
  struct Item {
    bool is_sequence = false;
    std::vector<int64_t> ids;  // special token ids
  };

  void parse_special_tokens(const json& j, const std::string& where) {
    if (!j.contains("special_tokens") || j.at("special_tokens").is_null()) return;
    const json& map = j.at("special_tokens");
    if (!map.is_object()) config_fail(where + ".special_tokens", "expected an object");
    for (auto it = map.begin(); it != map.end(); ++it) {
      std::string key = where + ".special_tokens[\"" + it.key() + "\"]";
      const json& ids = require(it.value(), key, "ids");
      if (!ids.is_array()) config_fail(key + ".ids", "expected an array");
      std::vector<int64_t> v;
      for (const json& id : ids) {
        if (!id.is_number_integer()) config_fail(key + ".ids", "expected integer ids");
        v.push_back(id.get<int64_t>());
      }
      specials_[it.key()] = std::move(v);
    }
  }

  void add_special(const std::string& name, const std::string& where) {
    auto it = specials_.find(name);
    if (it == specials_.end()) config_fail(where, "special token '" + name + "' missing from special_tokens");
    items_.push_back({false, it->second});
  }

  void add_item(const json& item, const std::string& where) {
    if (item.is_object() && item.contains("Sequence")) {
      items_.push_back({true, {}});
    } else if (item.is_object() && item.contains("SpecialToken")) {
      add_special(get_string(item.at("SpecialToken"), where + ".SpecialToken", "id"), where);
    } else {
      config_fail(where, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }

  // "$A", "$0", "$A:1" are the sequence; anything else ("[CLS]", "[CLS]:0") a special token.
  void add_string_item(const std::string& word, const std::string& where) {
    size_t colon = word.rfind(':');
    std::string name = colon == std::string::npos || colon == 0 ? word : word.substr(0, colon);
    if (!name.empty() && name[0] == '$')
      items_.push_back({true, {}});
    else
      add_special(name, where);
  }

  std::unordered_map<std::string, std::vector<int64_t>> specials_;
  std::vector<Item> items_;
};

class Sequence : public PostProcessor {
 public:
  Sequence(const json& j, const std::string& where) {
    const json& list = require(j, where, "processors");
    if (!list.is_array()) config_fail(where + ".processors", "expected an array");
    for (size_t i = 0; i < list.size(); ++i) {
      auto p = make_post_processor(list[i], where + ".processors[" + std::to_string(i) + "]");
      if (p) steps_.push_back(std::move(p));
    }
  }
  std::vector<int64_t> process(std::vector<int64_t> ids) const override {
    for (const auto& p : steps_) ids = p->process(std::move(ids));
    return ids;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  std::string type = type_of(j, where);
  if (type == "TemplateProcessing") return std::make_unique<Template>(j, where);
  if (type == "BertProcessing" || type == "RobertaProcessing") return std::make_unique<ClsSep>(j, where);
  if (type == "ByteLevel") return nullptr;  // only adjusts offsets, ids unchanged
  if (type == "Sequence") return std::make_unique<Sequence>(j, where);
  config_fail(where + ".type", "unsupported post_processor type '" + type + "'");
}

}  // namespace modula::text
