// A small Jinja subset: the template is split into text / {{ }} / {% %} segments, the
// segments into a tree of statements; expressions are parsed and evaluated in one pass
// (`live` = false parses a branch that is not taken without evaluating it).
#include "modula/serve/chat_template.h"

#include <cctype>
#include <memory>

#include "jinja_expr.h"
#include "modula/util/error.h"

namespace modula::serve {
namespace {

using namespace jinja;

// ---- statements -----------------------------------------------------------------------

struct Segment {
  enum Kind { Text, Output, Block } kind;
  std::string body;  // text, or the tag's inside
};

// Splits into segments, applying {%- -%} control, trim_blocks and lstrip_blocks.
std::vector<Segment> segments(const std::string& t) {
  std::vector<Segment> out;
  size_t i = 0;
  bool trim_next = false, newline_next = false;
  while (i <= t.size()) {
    auto open = t.find('{', i);
    while (open != std::string::npos && open + 1 < t.size() &&
           std::string("{%#").find(t[open + 1]) == std::string::npos)
      open = t.find('{', open + 1);
    if (open != std::string::npos && open + 1 >= t.size()) open = std::string::npos;
    const std::string raw = t.substr(i, open == std::string::npos ? std::string::npos : open - i);
    const bool begins_line = i == 0 || t[i - 1] == '\n' || (newline_next && !raw.empty() && raw[0] == '\n');
    std::string text = raw;
    if (trim_next) text.erase(0, text.find_first_not_of(" \t\n\r"));
    if (newline_next && !text.empty() && text[0] == '\n') text.erase(0, 1);
    if (open == std::string::npos) {
      out.push_back({Segment::Text, text});
      break;
    }
    const char kind = t[open + 1];
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    const auto end = t.find(close, open + 2);
    if (end == std::string::npos) fail("unclosed '{" + std::string(1, kind) + "' at offset " + std::to_string(open));
    std::string inside = t.substr(open + 2, end - open - 2);
    const bool strip_left = !inside.empty() && inside[0] == '-';
    // "{%-%}": one '-', the left one (found by fuzz_chat_template: it was taken for both and
    // pop_back() ran on the emptied string).
    const bool strip_right = inside.size() >= (strip_left ? 2u : 1u) && inside.back() == '-';
    if (strip_left) inside.erase(0, 1);
    if (strip_right) inside.pop_back();
    if (strip_left) {
      text.erase(text.find_last_not_of(" \t\n\r") + 1);  // npos + 1 == 0: all of it
    } else if (kind != '{') {  // lstrip_blocks: spaces and tabs before a block tag that starts its line
      const auto nl = text.find_last_of('\n');
      const size_t tail = nl == std::string::npos ? 0 : nl + 1;
      if ((nl != std::string::npos || begins_line) && text.find_first_not_of(" \t", tail) == std::string::npos)
        text.erase(tail);
    }
    out.push_back({Segment::Text, text});
    if (kind != '#') out.push_back({kind == '{' ? Segment::Output : Segment::Block, inside});
    trim_next = strip_right;
    newline_next = kind != '{';  // trim_blocks
    i = end + 2;
  }
  return out;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\n\r"), e = s.find_last_not_of(" \t\n\r");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::string keyword(const std::string& block) {
  const auto s = trim(block);
  return s.substr(0, s.find_first_of(" \t\n\r"));
}

std::string rest(const std::string& block) {
  const auto s = trim(block);
  const auto sp = s.find_first_of(" \t\n\r");
  return sp == std::string::npos ? std::string() : trim(s.substr(sp));
}

class Renderer {
 public:
  Renderer(std::vector<Segment> segs, Env& env) : segs_(std::move(segs)), env_(env) {}
  std::string run() {
    std::string out;
    const auto end = body(0, out, true, {});
    if (end != segs_.size()) fail("unexpected '{% " + trim(segs_[end].body) + " %}'");
    return out;
  }

 private:
  // Renders (when live) from segment i up to a block whose keyword is in `stops`; returns its index.
  size_t body(size_t i, std::string& out, bool live, const std::vector<std::string>& stops) {
    for (; i < segs_.size(); ++i) {
      const auto& s = segs_[i];
      if (s.kind == Segment::Text) {
        if (live) out += s.body;
        continue;
      }
      if (s.kind == Segment::Output) {
        auto v = eval(s.body, env_, live);
        if (live) out += to_text(v);
        continue;
      }
      const auto kw = keyword(s.body);
      if (std::find(stops.begin(), stops.end(), kw) != stops.end()) return i;
      if (kw == "if")
        i = if_block(i, out, live);
      else if (kw == "for")
        i = for_block(i, out, live);
      else if (kw == "set")
        set_stmt(s.body, live);
      else
        fail("unsupported statement '{% " + trim(s.body) + " %}'");
    }
    if (!stops.empty()) fail("missing '{% " + stops.back() + " %}'");
    return i;
  }

  size_t if_block(size_t i, std::string& out, bool live) {
    bool taken = false;
    std::string cond = rest(segs_[i].body);
    if (cond.empty()) fail("'if' needs a condition");
    for (;;) {
      const bool run = live && !taken && (cond.empty() ? true : truthy(eval(cond, env_, live && !taken)));
      if (!cond.empty() && !(live && !taken)) eval(cond, env_, false);
      i = body(i + 1, out, run, {"elif", "else", "endif"});
      taken = taken || run;
      const auto kw = keyword(segs_[i].body);
      if (kw == "endif") return i;
      cond = kw == "else" ? std::string() : rest(segs_[i].body);
      if (kw == "elif" && cond.empty()) fail("'elif' needs a condition");
    }
  }

  size_t for_block(size_t i, std::string& out, bool live) {
    const auto spec = rest(segs_[i].body);
    const auto in = spec.find(" in ");
    const auto var = trim(spec.substr(0, in == std::string::npos ? 0 : in));
    if (in == std::string::npos || var.empty() || var.find_first_of(",( ") != std::string::npos)
      fail("unsupported loop '{% for " + spec + " %}' (one name: for x in list)");
    const auto items = eval(spec.substr(in + 4), env_, live);
    if (!live) return body(i + 1, out, false, {"endfor"});
    if (!items.is_array()) fail("'for' needs a list, got " + to_text(items));
    size_t end = body(i + 1, out, false, {"endfor"});  // the loop's extent
    const auto n = items.size();
    for (size_t k = 0; k < n; ++k) {
      env_.scopes.push_back({{var, items[k]},
                             {"loop",
                              {{"index", k + 1},
                               {"index0", k},
                               {"revindex", n - k},
                               {"revindex0", n - k - 1},
                               {"first", k == 0},
                               {"last", k + 1 == n},
                               {"length", n},
                               {"previtem", k > 0 ? items[k - 1] : kUndefined},
                               {"nextitem", k + 1 < n ? items[k + 1] : kUndefined}}}});
      body(i + 1, out, true, {"endfor"});
      env_.scopes.pop_back();
    }
    return end;
  }

  void set_stmt(const std::string& block, bool live) {
    const auto spec = rest(block);
    const auto eq = spec.find('=');
    const auto name = trim(spec.substr(0, eq == std::string::npos ? 0 : eq));
    if (eq == std::string::npos || name.empty() || name.find_first_of(".[ ") != std::string::npos)
      fail("unsupported '{% set " + spec + " %}' (one name: set x = expr)");
    auto v = eval(spec.substr(eq + 1), env_, live);
    if (live) env_.scopes.back()[name] = v;
  }

  std::vector<Segment> segs_;
  Env& env_;
};

}  // namespace

std::string render_chat_template(const std::string& tmpl, const std::vector<ChatMessage>& messages,
                                 const std::string& bos_token, const std::string& eos_token,
                                 bool add_generation_prompt) {
  json msgs = json::array();
  for (const auto& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
  Env env;
  env.scopes.push_back({{"messages", msgs},
                        {"bos_token", bos_token},
                        {"eos_token", eos_token},
                        {"add_generation_prompt", add_generation_prompt}});
  try {
    return Renderer(segments(tmpl), env).run();
  } catch (const json::exception& e) {
    fail(std::string("cannot evaluate: ") + e.what());
  }
}

}  // namespace modula::serve
