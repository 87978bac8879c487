// YAML → JSON with YAML 1.2 core scalar typing, and errors naming source and position.
#include <gtest/gtest.h>

#include <cmath>

#include "modula/io/yaml.h"

using modula::io::yaml_to_json;

TEST(Yaml, CoreSchemaScalars) {
  auto j =
      yaml_to_json("a: 1\nb: 0.5\nc: true\nd: ~\ne: text\nf: '12'\ng: [1, 2.5e-3, -.inf]\nh: {x: -3, y: 0x1F}\ni:\n");
  EXPECT_EQ(j["a"], 1);
  EXPECT_DOUBLE_EQ(j["b"].get<double>(), 0.5);
  EXPECT_EQ(j["c"], true);
  EXPECT_TRUE(j["d"].is_null());
  EXPECT_EQ(j["e"], "text");
  EXPECT_EQ(j["f"], "12");  // quoted stays a string
  EXPECT_DOUBLE_EQ(j["g"][1].get<double>(), 2.5e-3);
  EXPECT_TRUE(std::isinf(j["g"][2].get<double>()) && j["g"][2].get<double>() < 0);
  EXPECT_EQ(j["h"]["x"], -3);
  EXPECT_EQ(j["h"]["y"], 31);
  EXPECT_TRUE(j["i"].is_null());
}

TEST(Yaml, ErrorsNameSourceAndLine) {
  try {
    yaml_to_json("a: 1\nb: [1, 2\n", "run.yaml");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("run.yaml: invalid YAML at line"), std::string::npos) << m;
  }
}

// Regression (issue 14): long plain scalars overflowed the stack of std::regex.
TEST(Yaml, LongPlainScalarsAreStringsOrNumbers) {
  const std::string word(200000, 'x'), digits(200000, '7');
  auto j = yaml_to_json("seed: " + word + "\noutput: " + digits + ".5\n", "run.yaml");
  EXPECT_EQ(j["seed"].get<std::string>().size(), word.size());
  EXPECT_TRUE(j["output"].is_number_float());
  EXPECT_EQ(yaml_to_json("a: " + std::string(200000, '1') + "e\n")["a"].get<std::string>().size(), 200001u);
}

TEST(Yaml, ScannersFollowTheCoreSchema) {
  auto j = yaml_to_json("a: +5\nb: .5\nc: 5.\nd: 1e3\ne: 1e\nf: .\ng: 0x\nh: 0xfF\nj: 1.5E-2\nk: Null\n");
  EXPECT_EQ(j["a"], 5);
  EXPECT_DOUBLE_EQ(j["b"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(j["c"].get<double>(), 5.0);
  EXPECT_DOUBLE_EQ(j["d"].get<double>(), 1000.0);
  EXPECT_EQ(j["e"], "1e");
  EXPECT_EQ(j["f"], ".");
  EXPECT_EQ(j["g"], "0x");
  EXPECT_EQ(j["h"], 255);
  EXPECT_DOUBLE_EQ(j["j"].get<double>(), 0.015);
  EXPECT_TRUE(j["k"].is_null());
}

// Regression (issue 14): nested aliases ("billion laughs") expanded to 10^9 values.
TEST(Yaml, BillionLaughsIsAnErrorNamingTheFile) {
  std::string text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
  for (char c = 'b'; c <= 'j'; ++c) {
    const char prev = static_cast<char>(c - 1);
    text += std::string(1, c) + ": &" + c + " [";
    for (int i = 0; i < 10; ++i) text += std::string(i ? ", " : "") + "*" + prev;
    text += "]\n";
  }
  try {
    yaml_to_json(text, "laughs.yaml");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("laughs.yaml: more than"), std::string::npos) << e.what();
  }
}

TEST(Yaml, DeepNestingIsAnError) {
  const std::string text = "a: " + std::string(300, '[') + std::string(300, ']') + "\n";
  EXPECT_THROW(yaml_to_json(text, "deep.yaml"), std::invalid_argument);
}

// Regression (fuzz_yaml, issue 14): bytes that are not UTF-8 became JSON strings that threw
// nlohmann's type_error.316 (naming nothing) when the config was dumped; now the reader
// refuses them, naming the line and column.
TEST(Yaml, TextThatIsNotUtf8IsAnErrorNamingLineAndColumn) {
  for (const auto& [text, where] :
       {std::pair<std::string, std::string>{"stack:\n  - lang:\x98\x65\n", "line 2, column 10"},
        {"\xff: 1\n", "line 1, column 1"},
        {"a: 1\nb: caf\xc3\n", "line 2, column 7"}}) {
    try {
      yaml_to_json(text, "spec.yaml");
      FAIL() << "no exception";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("spec.yaml: not UTF-8 at " + where), std::string::npos) << e.what();
    }
  }
  // Valid bytes that yaml-cpp decodes into others: leading NUL bytes it reads as UTF-32
  // (found by fuzz_yaml and fuzz_merge_recipe).
  try {
    yaml_to_json(std::string("\0\0\0\b`\0\0\x06", 8), "spec.yaml").dump();
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("spec.yaml: the value at line 1, column 1 is not UTF-8 text"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(yaml_to_json("a: \"\\x80\"\n")["a"], "\u0080");  // an escape, decoded to UTF-8
  EXPECT_EQ(yaml_to_json("name: café ünï 日本\n")["name"], "café ünï 日本");
}
