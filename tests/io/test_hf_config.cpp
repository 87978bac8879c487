// config.json parsing: both rope spellings, family defaults, and clear errors.
#include <gtest/gtest.h>

#include <fstream>

#include "modula/io/hf_config.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"

using modula::ConfigError;
using modula::io::parse_hf_config;
using nlohmann::json;

namespace {

std::string fixture(const std::string& rel) { return std::string(MODULA_FIXTURES) + "/" + rel; }

json llama() {
  return json{{"model_type", "llama"},    {"architectures", {"LlamaForCausalLM"}},
              {"vocab_size", 100},        {"hidden_size", 32},
              {"intermediate_size", 64},  {"num_hidden_layers", 2},
              {"num_attention_heads", 4}, {"num_key_value_heads", 2}};
}

std::string error_of(const json& j) {
  try {
    parse_hf_config(j, "cfg.json");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(HfConfig, ReadsFixtures) {
  auto l = modula::io::load_hf_config(fixture("hf/models/llama"));
  EXPECT_EQ(l.model_type, "llama");
  EXPECT_EQ(l.num_key_value_heads, 2);
  EXPECT_EQ(l.head_dim, 16);
  EXPECT_DOUBLE_EQ(l.rope_theta, 10000.0);
  EXPECT_FALSE(l.tie_word_embeddings);
  auto q = modula::io::load_hf_config(fixture("hf/models/qwen2/config.json"));
  EXPECT_TRUE(q.qkv_bias);
  EXPECT_FALSE(q.o_bias);
  EXPECT_TRUE(q.tie_word_embeddings);
  auto g = modula::io::load_hf_config(fixture("hf/models/gpt2"));
  EXPECT_EQ(g.hidden_size, 64);
  EXPECT_EQ(g.intermediate_size, 256);  // n_inner null -> 4 * n_embd
  EXPECT_EQ(g.hidden_act, "gelu_new");
  auto x = modula::io::load_hf_config(fixture("hf/models/xlm-roberta"));
  EXPECT_EQ(x.pad_token_id.value(), 1);
  EXPECT_EQ(x.type_vocab_size, 1);
  EXPECT_EQ(modula::io::load_hf_config(fixture("hf/models/bert-cls")).num_labels, 3);
}

TEST(HfConfig, BothRopeSpellings) {
  auto legacy = llama();
  legacy["rope_theta"] = 500000.0;
  legacy["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  auto v5 = llama();
  v5["rope_parameters"] = {{"rope_theta", 500000.0}, {"rope_type", "linear"}, {"factor", 2.0}};
  for (const auto& j : {legacy, v5}) {
    auto c = parse_hf_config(j);
    EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
    EXPECT_EQ(c.rope_scaling.type, "linear");
    EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
  }
  auto l3 = llama();
  l3["rope_scaling"] = {{"rope_type", "llama3"},
                        {"factor", 8.0},
                        {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0},
                        {"original_max_position_embeddings", 8192}};
  EXPECT_EQ(parse_hf_config(l3).rope_scaling.type, "llama3");
}

TEST(HfConfig, HeadDimAndGqa) {
  auto j = llama();
  EXPECT_EQ(parse_hf_config(j).head_dim, 8);
  j["head_dim"] = 16;
  EXPECT_EQ(parse_hf_config(j).head_dim, 16);
  auto mha = llama();
  mha.erase("num_key_value_heads");
  EXPECT_EQ(parse_hf_config(mha).num_key_value_heads, 4);
}

TEST(HfConfig, ClearErrors) {
  auto missing = llama();
  missing.erase("model_type");
  EXPECT_NE(error_of(missing).find("model_type"), std::string::npos);

  auto unknown = llama();
  unknown["model_type"] = "mamba";
  EXPECT_NE(error_of(unknown).find("mamba"), std::string::npos);

  auto wrong_type = llama();
  wrong_type["hidden_size"] = "big";
  EXPECT_NE(error_of(wrong_type).find("hidden_size"), std::string::npos);

  auto indivisible = llama();
  indivisible["hidden_size"] = 30;
  EXPECT_NE(error_of(indivisible).find("divisible"), std::string::npos);

  auto gqa = llama();
  gqa["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(gqa).find("num_key_value_heads"), std::string::npos);

  auto rope = llama();
  rope["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(error_of(rope).find("yarn"), std::string::npos);

  auto negative = llama();
  negative["num_hidden_layers"] = -1;
  EXPECT_NE(error_of(negative).find("num_hidden_layers"), std::string::npos);

  EXPECT_NE(error_of(json::array()).find("object"), std::string::npos);
  EXPECT_EQ(error_of(llama()), "");
}

// Each was accepted (truncated, or garbage at run time) or failed later with a message that
// named nothing (issue 14).
TEST(HfConfig, RejectsWhatWasSilentlyWrongNamingKeyAndValue) {
  auto with = [](const char* key, json value) {
    auto j = llama();
    j[key] = std::move(value);
    return error_of(j);
  };
  auto mentions = [](const std::string& error, std::initializer_list<const char*> parts) {
    for (const char* p : parts)
      if (error.find(p) == std::string::npos) return ::testing::AssertionFailure() << "'" << p << "' not in: " << error;
    return ::testing::AssertionSuccess();
  };
  EXPECT_TRUE(mentions(with("hidden_size", 64.7), {"cfg.json", "hidden_size", "64.7", "integer"}));
  EXPECT_TRUE(mentions(with("num_hidden_layers", 1e300), {"num_hidden_layers", "integer"}));
  EXPECT_TRUE(mentions(with("rope_theta", 0), {"rope_theta", "positive"}));
  EXPECT_TRUE(mentions(with("rope_theta", -10000.0), {"rope_theta", "positive"}));
  EXPECT_TRUE(mentions(with("sliding_window", 0), {"sliding_window", "positive"}));
  EXPECT_TRUE(mentions(with("sliding_window", -4), {"sliding_window", "-4"}));
  EXPECT_TRUE(mentions(with("eos_token_id", 2.5), {"eos_token_id", "2.5"}));
  EXPECT_TRUE(mentions(with("num_labels", -2), {"num_labels", "-2"}));
  EXPECT_TRUE(mentions(with("eos_token_id", -1), {"eos_token_id", "-1"}));
  EXPECT_TRUE(mentions(with("eos_token_id", json::array({2, -7})), {"eos_token_id", "-7"}));
  EXPECT_TRUE(mentions(with("bos_token_id", -3), {"bos_token_id", "-3"}));
  EXPECT_TRUE(mentions(with("vocab_size", 1000000000000), {"vocab_size", "1000000000000", "out of range"}));
  EXPECT_TRUE(mentions(with("vocab_size", 1e12), {"vocab_size", "out of range"}));
  auto huge = llama();  // every size in range, the product not: refused before allocating
  huge["num_hidden_layers"] = 100000;
  huge["hidden_size"] = 16384;
  huge["intermediate_size"] = 65536;
  huge["num_attention_heads"] = 128;
  huge["num_key_value_heads"] = 8;
  EXPECT_TRUE(mentions(error_of(huge), {"parameters", "num_hidden_layers 100000"}));
  EXPECT_EQ(with("sliding_window", 4096), "");
  EXPECT_EQ(with("hidden_size", 32.0), "");  // an integral number is an integer
}

TEST(HfConfig, ConfigJsonThatIsAFolderIsNamed) {
  auto dir = modula::fs::make_temp_dir("modula-cfg-test");
  modula::fs::make_dirs(modula::fs::join(dir, "config.json"));
  try {
    modula::io::load_hf_config(dir);
    ADD_FAILURE() << "accepted a folder";
  } catch (const ConfigError& e) {  // was: basic_filebuf::underflow
    EXPECT_NE(std::string(e.what()).find("[config] " + modula::fs::join(dir, "config.json") + ": is a folder"),
              std::string::npos)
        << e.what();
  }
  modula::fs::remove_tree(dir);
}

TEST(HfConfig, MalformedFiles) {
  auto dir = modula::fs::make_temp_dir("modula-cfg-test");
  std::ofstream(modula::fs::join(dir, "config.json")) << "{\"model_type\": \"llama\", ";  // truncated
  try {
    modula::io::load_hf_config(dir);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("invalid JSON"), std::string::npos);
  }
  EXPECT_THROW(modula::io::load_hf_config(modula::fs::join(dir, "nope")), ConfigError);
  modula::fs::remove_tree(dir);
}

// Issue 14: a config.json nested 100,000 deep parsed and then overflowed the stack when the
// raw JSON was copied; every file parser now refuses nesting beyond util/json.h's limit.
TEST(HfConfig, DeeplyNestedFileIsRefusedNamingTheFile) {
  auto dir = modula::fs::make_temp_dir("modula-cfg-test");
  const std::string path = modula::fs::join(dir, "config.json");
  std::ofstream(path) << R"({"model_type": "llama", "x": )" << std::string(100000, '[') << std::string(100000, ']')
                      << "}";
  try {
    modula::io::load_hf_config(dir);
    ADD_FAILURE() << "accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": invalid JSON: nested deeper than 256 levels"), std::string::npos)
        << e.what();
  }
  modula::fs::remove_tree(dir);
  // The limit itself: 256 levels parse, 257 do not; numbers beyond double are the same error type.
  EXPECT_NO_THROW(modula::parse_json(std::string(256, '[') + std::string(256, ']')));
  EXPECT_THROW(modula::parse_json(std::string(257, '[') + std::string(257, ']')), modula::JsonTextError);
  EXPECT_THROW(modula::parse_json(std::string("1e999")), modula::JsonTextError);
}

TEST(HfConfig, RoundTripThroughHfJson) {
  for (const char* arch : {"llama", "qwen2", "gpt2", "bert", "xlm-roberta"}) {
    auto c = modula::io::load_hf_config(fixture(std::string("hf/models/") + arch));
    auto again = parse_hf_config(modula::io::to_hf_json(c));
    EXPECT_EQ(again.hidden_size, c.hidden_size) << arch;
    EXPECT_EQ(again.num_key_value_heads, c.num_key_value_heads) << arch;
    EXPECT_EQ(again.intermediate_size, c.intermediate_size) << arch;
    EXPECT_EQ(again.tie_word_embeddings, c.tie_word_embeddings) << arch;
    EXPECT_EQ(again.qkv_bias, c.qkv_bias) << arch;
  }
}

}  // namespace
