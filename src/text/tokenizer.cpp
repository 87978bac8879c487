// Tokenizer::from_file: picks the implementation for a path and turns every load
// failure into a TokenizerError naming the file.
#include "modula/text/tokenizer.h"

#include <fstream>
#include <sstream>

#include "modula/util/fs.h"
#include "modula/util/json.h"
#include "text/hf_tokenizer.h"
#include "text/sentencepiece.h"

namespace modula::text {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw TokenizerError("[tokenizer] " + path + ": " + what);
}

// A folder resolves to tokenizer.json, then tokenizer.model.
std::string resolve(const std::string& path) {
  if (!fs::exists(path)) fail(path, "no such file or directory");
  if (!fs::is_dir(path)) return path;
  for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
    std::string candidate = fs::join(path, name);
    if (fs::is_file(candidate)) return candidate;
  }
  fail(path, "folder holds neither tokenizer.json nor tokenizer.model");
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open file");
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

// JSON unless the file is a .model or does not start like a JSON object.
bool looks_like_json(const std::string& path, const std::string& content) {
  if (fs::extension(path) == ".json") return true;
  if (fs::extension(path) == ".model") return false;
  size_t first = content.find_first_not_of(" \t\r\n");
  return first != std::string::npos && content[first] == '{';
}

std::unique_ptr<Tokenizer> load_json(const std::string& path, const std::string& content) {
  json config;
  try {
    config = parse_json(content);
  } catch (const JsonTextError& e) {
    fail(path, std::string("invalid JSON (") + e.what() + ")");
  }
  try {
    return std::make_unique<HfTokenizer>(config, path);
  } catch (const ConfigError& e) {
    fail(path, e.what());
  } catch (const json::exception& e) {
    fail(path, std::string("malformed tokenizer.json (") + e.what() + ")");
  }
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_file(const std::string& path) {
  std::string file = resolve(path);
  std::string content = read_file(file);
  if (looks_like_json(file, content)) return load_json(file, content);
  return std::make_unique<SentencePieceTokenizer>(file);
}

}  // namespace modula::text
