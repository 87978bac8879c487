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
