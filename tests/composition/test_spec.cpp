// The composition spec: text, JSON and YAML forms parse to the same AST, print back to
// themselves, and every malformed spec is rejected with a message naming the problem and
// where it is.
#include <gtest/gtest.h>

#include "modula/composition/spec.h"

using json = nlohmann::json;
using modula::SpecNode;
using Kind = modula::SpecNode::Kind;

namespace {

const std::vector<std::string> kSpecs = {
    "a",
    "stack(lang:de, fuse(task:a, task:b))",
    "parallel(a, b)",
    "avg(a:0.7, b:0.3)",
    "avg(a, b, c)",
    "route(task, a, b, c)",
    "concat(p1, p2)",
    "stack(concat(p1, p2), avg(stack(x, y):0.25, parallel(z, w):0.75), route(lang, de, fr))",
    "fuse(a)",
    "avg(lang:de:-0.5, task:a:1.5)",
};

TEST(Spec, ParsesTheTreeItDescribes) {
  auto n = modula::parse_spec("stack(lang:de, fuse(task:a, task:b))");
  EXPECT_EQ(n.kind, Kind::Stack);
  ASSERT_EQ(n.children.size(), 2u);
  EXPECT_EQ(n.children[0].kind, Kind::Module);
  EXPECT_EQ(n.children[0].name, "lang:de");  // ':' + a non-number belongs to the name
  EXPECT_EQ(n.children[1].kind, Kind::Fuse);
  EXPECT_EQ(n.children[1].children[1].name, "task:b");
  EXPECT_EQ(n.children[1].where, "column 16");

  auto avg = modula::parse_spec("avg(a:0.7, b:0.3)");
  EXPECT_EQ(avg.kind, Kind::Average);
  EXPECT_EQ(avg.children[0].name, "a");
  EXPECT_DOUBLE_EQ(*avg.children[0].weight, 0.7);
  EXPECT_DOUBLE_EQ(*avg.children[1].weight, 0.3);

  auto route = modula::parse_spec("route(task, a, b, c)");
  EXPECT_EQ(route.kind, Kind::Route);
  EXPECT_EQ(route.name, "task");
  EXPECT_EQ(route.children.size(), 3u);
  EXPECT_EQ(modula::module_names(modula::parse_spec("stack(a, parallel(b, a), c)")),
            (std::vector<std::string>{"a", "b", "c"}));
}

TEST(Spec, TextRoundTrips) {
  for (const auto& text : kSpecs) {
    auto n = modula::parse_spec(text);
    EXPECT_EQ(modula::to_string(n), text);
    EXPECT_EQ(modula::parse_spec(modula::to_string(n)), n) << text;
  }
  // Spacing is free; the canonical form is ", "-separated.
  EXPECT_EQ(modula::to_string(modula::parse_spec("  stack( a ,b,\n fuse( c ) )  ")), "stack(a, b, fuse(c))");
  EXPECT_EQ(modula::to_string(modula::parse_spec("avg(stack(a,b) : 0.5, c:0.5)")), "avg(stack(a, b):0.5, c:0.5)");
}

TEST(Spec, JsonRoundTripsAndMatchesTheText) {
  for (const auto& text : kSpecs) {
    auto n = modula::parse_spec(text);
    auto j = modula::to_json(n);
    EXPECT_EQ(modula::parse_spec_json(j), n) << j.dump();
    EXPECT_EQ(modula::parse_spec(j.dump()), n) << j.dump();
  }
  EXPECT_EQ(modula::parse_spec(R"({"stack": ["lang:de", {"fuse": ["task:a", "task:b"]}]})"),
            modula::parse_spec("stack(lang:de, fuse(task:a, task:b))"));
  EXPECT_EQ(modula::to_json(modula::parse_spec("avg(a:0.7, b:0.3)")),
            json::parse(R"({"avg": ["a", "b"], "weights": [0.7, 0.3]})"));
  EXPECT_EQ(modula::to_json(modula::parse_spec("route(task, a, b)")),
            json::parse(R"({"route": ["a", "b"], "key": "task"})"));
}

TEST(Spec, YamlMatchesTheText) {
  EXPECT_EQ(modula::parse_spec("stack: [lang:de, {fuse: [task:a, task:b]}]"),
            modula::parse_spec("stack(lang:de, fuse(task:a, task:b))"));
  EXPECT_EQ(modula::parse_spec("avg:\n  - a\n  - b\nweights: [0.7, 0.3]\n"), modula::parse_spec("avg(a:0.7, b:0.3)"));
  EXPECT_EQ(modula::parse_spec("{route: [a, b, c], key: task}"), modula::parse_spec("route(task, a, b, c)"));
  EXPECT_EQ(modula::parse_spec_yaml("concat: [p1, p2]"), modula::parse_spec("concat(p1, p2)"));
}

// moe(…) is route(top<k>, …): k = 2 unless the first argument is top<k> (JSON: "k").
TEST(Spec, MoeIsARouteToTheTopKExpertsInEveryForm) {
  auto n = modula::parse_spec("moe(a, b, c)");
  EXPECT_EQ(n.kind, Kind::Route);
  EXPECT_EQ(n.name, "top2");
  EXPECT_EQ(modula::module_names(n), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(n, modula::parse_spec("route(top2, a, b, c)"));
  EXPECT_EQ(n.children[0].where, "column 5");
  auto top1 = modula::parse_spec("moe(top1, a, b, c)");
  EXPECT_EQ(top1, modula::parse_spec("route(top1, a, b, c)"));
  // The canonical text is the route form; it and the JSON form round-trip.
  for (const auto& text : {"moe(a, b, c)", "moe(top1, a, b, c)", "stack(x, moe(top3, a, b, c))"}) {
    auto m = modula::parse_spec(text);
    EXPECT_EQ(modula::parse_spec(modula::to_string(m)), m) << text;
    EXPECT_EQ(modula::parse_spec_json(modula::to_json(m)), m) << text;
  }
  EXPECT_EQ(modula::to_string(top1), "route(top1, a, b, c)");
  EXPECT_EQ(modula::parse_spec(R"({"moe": ["a", "b", "c"]})"), n);
  EXPECT_EQ(modula::parse_spec(R"({"moe": ["a", "b", "c"], "k": 1})"), top1);
  EXPECT_EQ(modula::parse_spec(R"({"moe": ["top1", "a", "b", "c"]})"), top1);
  EXPECT_EQ(modula::parse_spec("moe: [a, b, c]"), n);
  EXPECT_EQ(modula::parse_spec("{moe: [a, b, c], k: 1}"), top1);
  EXPECT_EQ(modula::parse_spec("stack: [x, {moe: [a, b]}]"), modula::parse_spec("stack(x, moe(a, b))"));
}

struct Bad {
  std::string spec;
  std::string message;  // a part of what() that names the problem
  std::string where;    // SpecError::where
};

TEST(Spec, RejectsMalformedTextNamingTheProblemAndColumn) {
  const std::vector<Bad> cases = {
      {"", "empty spec", "column 1"},
      {"stack(a, b", "unbalanced '(': no matching ')'", "column 6"},
      {"stack(a, fuse(b, c)", "unbalanced '('", "column 6"},
      {"stack(a, b))", "unbalanced ')': no '(' to close", "column 12"},
      {"stack(lang:de, fusee(a, b))",
       "unknown operator 'fusee' (operators: stack, parallel, avg, fuse, route, concat, moe)", "column 16"},
      {"stack(a)", "stack needs at least 2 modules, got 1", "column 1"},
      {"parallel()", "parallel needs at least 2 modules, got 0", "column 1"},
      {"fuse()", "fuse needs at least 1 module, got 0", "column 1"},
      {"route(task)", "route needs at least 1 module, got 0", "column 1"},
      {"route()", "route needs a metadata key", "column 1"},
      {"route(fuse(a), a, b)", "route's first argument must be a metadata key", "column 7"},
      {"avg(a:0.7x, b:0.3)", "weight '0.7x' is not a number", "column 7"},
      {"avg(a:0.7, b:x)", "avg argument 2 has no weight but others do", "column 12"},
      {"avg(stack(a, b):heavy, c:1)", "weight after ':' must be a number, got 'heavy'", "column 17"},
      {"avg(a:1, b:-1)", "avg weights sum to zero", "column 1"},
      {"avg(a:1e308, b:1e308)", "avg weights overflow", "column 1"},  // was: the base model
      {"parallel(a:0.5, b)", "weights (':number') are only allowed inside avg", "column 10"},
      {"a:0.5", "only allowed inside avg", "column 1"},
      {"stack(a,,b)", "expected a module name or an operator, got ','", "column 9"},
      {"stack(a b)", "expected ',' or ')', got 'b'", "column 9"},
      {"stack(a, b) c", "unexpected 'c' after the end of the spec", "column 13"},
      {"stack(task.a, b)", "module name 'task.a' may not contain '.'", "column 11"},
      {"concat(p, stack(a, b))", "concat joins prompt modules; argument 2 is stack(…)", "column 11"},
      {"stack(a, :0.5)", "empty module name", "column 10"},
      {"moe(a)", "moe needs at least 2 experts, got 1", "column 1"},
      {"moe(top3, a, b)", "moe(top3, …) selects 3 of 2 experts", "column 1"},
      {"moe(top1, a)", "moe needs at least 2 experts, got 1", "column 1"},
      {"moe(softmax, a, b)", "'softmax' is not top<k>", "column 5"},
      {"moe(a:0.5, b)", "weights (':number') are only allowed inside avg", "column 5"},
  };
  for (const auto& c : cases) {
    try {
      modula::parse_spec(c.spec);
      ADD_FAILURE() << "accepted: " << c.spec;
    } catch (const modula::SpecError& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << c.spec << " -> " << e.what();
      EXPECT_EQ(e.where, c.where) << c.spec << " -> " << e.what();
      EXPECT_NE(std::string(e.what()).find("    " + c.spec), std::string::npos) << "quotes the text: " << e.what();
    }
  }
}

TEST(Spec, RejectsMalformedJsonAndYamlNamingThePath) {
  const std::vector<Bad> cases = {
      {R"({"stack": "a"})", "stack takes a list of modules", "/stack"},
      {R"({"stack": ["a", {"fusee": ["b", "c"]}]})", "unknown operator 'fusee'", "/stack/1"},
      {R"({"stack": ["a", 3]})", "expected a module name or an operator object, got 3", "/stack/1"},
      {R"({"stack": ["a", "b"], "fuse": ["c"]})", "one operator per object", "/"},
      {R"({"weights": [1]})", "object has no operator", "/"},
      {R"({"avg": ["a", "b"], "weights": [0.5, "x"]})", "weight is not a number: \"x\"", "/weights/1"},
      {R"({"avg": ["a", "b"], "weights": [0.5]})", "weights must be a list of 2 numbers", "/weights"},
      {R"({"parallel": ["a", "b"], "weights": [0.5, 0.5]})", "weights belong to avg only", "/weights"},
      {R"({"route": ["a", "b"]})", "route needs \"key\"", "/"},
      {R"({"moe": ["a", "b"], "k": 0})", "moe's k must be a positive integer, got 0", "/k"},
      {R"({"moe": ["a", "b"], "k": 3})", "selects 3 of 2 experts", "/"},
      {R"({"route": ["a", "b"], "k": 1})", "'k' belongs to moe only", "/k"},
      {R"({"moe": ["a"]})", "moe needs at least 2 experts", "/"},
      {R"({"stack": ["a"]})", "stack needs at least 2 modules, got 1", "/"},
      {R"({"stack": ["a", {"parallel": ["b:0.5", "c"]}]})", "only allowed inside avg", "/stack/1/parallel/0"},
      {"stack: [a, {fuse: [b, c]}", "YAML line 1, column 1: end of sequence flow not found",
       "line 1, column 1"},  // yaml-cpp's mark
      {"avg: [a, b]\nweights: [0.5, heavy]\n", "weight is not a number: \"heavy\"", "/weights/1"},
      // Found by fuzz_composition_spec: names the text form cannot hold broke the round trip
      // (to_string gave "fuse(task:a , task:b)", read back as "task:a").
      {R"({"stack": ["lang:de", {"fuse": ["task:a ", "task:b"]}]})",
       "module name 'task:a ' has a character other than letters, digits and _-:/@+ at offset 6", "/stack/1/fuse/0"},
      {R"({"route": ["a", "b"], "key": "task id"})", "route key: module name 'task id' has a character", "/key"},
  };
  for (const auto& c : cases) {
    try {
      modula::parse_spec(c.spec);
      ADD_FAILURE() << "accepted: " << c.spec;
    } catch (const modula::SpecError& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << c.spec << " -> " << e.what();
      EXPECT_EQ(e.where, c.where) << c.spec << " -> " << e.what();
    }
  }
}

TEST(Spec, UnknownModuleNamesAreNamedWithTheirColumn) {
  auto n = modula::parse_spec("stack(a, fuse(b, c))");
  EXPECT_NO_THROW(modula::check_module_names(n, {"a", "b", "c"}));
  try {
    modula::check_module_names(n, {"a", "b"});
    FAIL() << "c is unknown";
  } catch (const modula::SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("column 18: unknown module name 'c' (known: a, b)"), std::string::npos)
        << e.what();
    EXPECT_EQ(e.where, "column 18");
  }
}

}  // namespace

// Regression (issue 14): deep nesting overflowed the stack (text form, 16,000 levels) and
// kept a JSON pointer per level (memory quadratic in depth); long YAML-looking specs
// overflowed the stack of the std::regex that detected YAML.
static std::string nested_fuse(int depth) {
  std::string s;
  for (int i = 0; i < depth; ++i) s += "fuse(";
  s += "a";
  for (int i = 0; i < depth; ++i) s += ")";
  return s;
}

TEST(Spec, NestingIsLimitedInEveryForm) {
  EXPECT_NO_THROW(modula::parse_spec(nested_fuse(200)));
  try {
    modula::parse_spec(nested_fuse(16000));
    FAIL() << "no exception";
  } catch (const modula::SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("nested deeper than 256 levels"), std::string::npos);
    EXPECT_EQ(e.where, "column 1281");  // the 257th fuse(
  }
  json j = "a";
  for (int i = 0; i < 16000; ++i) j = json{{"fuse", json::array({std::move(j)})}};
  EXPECT_THROW(modula::parse_spec_json(j), modula::SpecError);
  // The same as text (built directly: dumping a value 16,000 deep recurses past an ASan stack).
  std::string text;
  for (int i = 0; i < 16000; ++i) text += R"({"fuse": [)";
  text += R"("a")";
  for (int i = 0; i < 16000; ++i) text += "]}";
  EXPECT_THROW(modula::parse_spec(text), modula::SpecError);
}

TEST(Spec, LongYamlLookingSpecIsAnError) {
  const std::string spec = "name: " + std::string(25000, 'x');
  try {
    modula::parse_spec(spec);
    FAIL() << "no exception";
  } catch (const modula::SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown operator 'name'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(modula::parse_spec(std::string(200000, 'a') + ": b"), modula::SpecError);
  EXPECT_EQ(modula::parse_spec(" stack:\n  - a\n  - b\n"), modula::parse_spec("stack(a, b)"));
}
