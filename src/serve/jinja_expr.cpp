#include "jinja_expr.h"

#include <algorithm>
#include <cctype>

#include "modula/util/error.h"

namespace modula::serve::jinja {

const json kUndefined = json(json::value_t::discarded);

void fail(const std::string& msg) { throw_error("chat template", msg); }

bool truthy(const json& v) {
  if (v.is_discarded() || v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
  return false;
}

std::string to_text(const json& v) {
  if (v.is_discarded()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  return v.dump();
}

const json& Env::lookup(const std::string& name) const {
  for (auto it = scopes.rbegin(); it != scopes.rend(); ++it)
    if (auto f = it->find(name); f != it->end()) return *f;
  return kUndefined;
}

namespace {

// ---- expressions ----------------------------------------------------------------------

struct Tok {
  enum Kind { Name, Str, Num, Op, End } kind;
  std::string text;
};

std::vector<Tok> lex(const std::string& s) {
  std::vector<Tok> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Tok::Name, s.substr(i, j - i)});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      out.push_back({Tok::Num, s.substr(i, j - i)});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] != '\\' || j + 1 == s.size()) {
          v += s[j];
          continue;
        }
        const char e = s[++j];
        v += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
      }
      if (j >= s.size()) fail("unterminated string in '" + s + "'");
      out.push_back({Tok::Str, v});
      i = j + 1;
    } else {
      static const char* two[] = {"==", "!=", "<=", ">="};
      std::string op(1, c);
      for (const char* t : two)
        if (s.compare(i, 2, t) == 0) op = t;
      if (op.size() == 1 && std::string("()[].,:|~+-*/%<>=").find(c) == std::string::npos)
        fail("unexpected '" + op + "' in '" + s + "'");
      out.push_back({Tok::Op, op});
      i += op.size();
    }
  }
  out.push_back({Tok::End, ""});
  return out;
}

class Expr {
 public:
  Expr(const std::string& src, Env& env) : src_(src), toks_(lex(src)), env_(env) {}
  json parse(bool live) {
    auto v = ternary(live);
    if (peek().kind != Tok::End) fail("unexpected '" + peek().text + "' in '" + src_ + "'");
    return v;
  }

 private:
  const Tok& peek() const { return toks_[pos_]; }
  bool accept(const std::string& op) {
    if (peek().kind == Tok::End || peek().kind == Tok::Str || peek().text != op) return false;
    ++pos_;
    return true;
  }
  void expect(const std::string& op) {
    if (!accept(op)) fail("expected '" + op + "' in '" + src_ + "'");
  }

  json ternary(bool live) {
    auto v = disjunction(live);
    if (!accept("if")) return v;
    auto cond = disjunction(live);
    json other = kUndefined;
    if (accept("else")) other = ternary(live && !truthy(cond));
    return truthy(cond) ? v : other;
  }
  json disjunction(bool live) {
    auto v = conjunction(live);
    while (accept("or")) {
      auto r = conjunction(live && !truthy(v));
      if (!truthy(v)) v = r;
    }
    return v;
  }
  json conjunction(bool live) {
    auto v = negation(live);
    while (accept("and")) {
      auto r = negation(live && truthy(v));
      if (truthy(v)) v = r;
    }
    return v;
  }
  json negation(bool live) {
    if (accept("not")) return !truthy(negation(live));
    return comparison(live);
  }
  json comparison(bool live) {
    auto v = additive(live);
    for (;;) {
      const auto op = peek().kind == Tok::Op || peek().kind == Tok::Name ? peek().text : "";
      if (op == "==" || op == "!=" || op == "<" || op == ">" || op == "<=" || op == ">=") {
        ++pos_;
        auto r = additive(live);
        if (op == "==")
          v = (v == r);
        else if (op == "!=")
          v = (v != r);
        else if (!live)
          v = false;
        else if (!((v.is_number() && r.is_number()) || (v.is_string() && r.is_string())))
          fail("cannot compare " + to_text(v) + " and " + to_text(r) + " in '" + src_ + "'");
        else if (op == "<")
          v = v < r;
        else if (op == ">")
          v = v > r;
        else if (op == "<=")
          v = v <= r;
        else
          v = v >= r;
      } else if (op == "in" || (op == "not" && toks_[pos_ + 1].text == "in")) {
        pos_ += op == "in" ? 1 : 2;
        auto r = additive(live);
        bool found = false;
        if (r.is_string() && v.is_string())
          found = r.get<std::string>().find(v.get<std::string>()) != std::string::npos;
        else if (r.is_array())
          found = std::find(r.begin(), r.end(), v) != r.end();
        else if (r.is_object() && v.is_string())
          found = r.contains(v.get<std::string>());
        v = op == "in" ? found : !found;
      } else if (op == "is") {
        ++pos_;
        const bool negate = accept("not");
        if (peek().kind != Tok::Name) fail("expected a test after 'is' in '" + src_ + "'");
        const auto test = toks_[pos_++].text;
        bool r;
        if (test == "defined")
          r = !v.is_discarded();
        else if (test == "none")
          r = v.is_null();
        else if (test == "string")
          r = v.is_string();
        else
          fail("unsupported test 'is " + test + "'");
        v = negate ? !r : r;
      } else {
        return v;
      }
    }
  }
  json additive(bool live) {
    auto v = multiplicative(live);
    for (;;) {
      if (accept("~")) {
        v = to_text(v) + to_text(multiplicative(live));
      } else if (peek().kind == Tok::Op && (peek().text == "+" || peek().text == "-")) {
        const auto op = toks_[pos_++].text;
        auto r = multiplicative(live);
        if (!live) continue;
        if (op == "+" && v.is_string() && r.is_string())
          v = v.get<std::string>() + r.get<std::string>();
        else if (op == "+" && v.is_array() && r.is_array())
          v.insert(v.end(), r.begin(), r.end());
        else if (v.is_number_integer() && r.is_number_integer())
          v = op == "+" ? v.get<int64_t>() + r.get<int64_t>() : v.get<int64_t>() - r.get<int64_t>();
        else
          fail("cannot apply '" + op + "' to " + to_text(v) + " and " + to_text(r) + " in '" + src_ + "'");
      } else {
        return v;
      }
    }
  }
  json multiplicative(bool live) {
    auto v = unary(live);
    while (peek().kind == Tok::Op && (peek().text == "*" || peek().text == "/" || peek().text == "%")) {
      const auto op = toks_[pos_++].text;
      auto r = unary(live);
      if (!live) continue;
      if (!v.is_number_integer() || !r.is_number_integer() || (op != "*" && r.get<int64_t>() == 0))
        fail("cannot apply '" + op + "' to " + to_text(v) + " and " + to_text(r) + " in '" + src_ + "'");
      const auto a = v.get<int64_t>(), b = r.get<int64_t>();
      if (op == "*")
        v = a * b;
      else if (op == "%")
        v = ((a % b) + b) % b;  // Python's sign rule
      else
        v = static_cast<double>(a) / static_cast<double>(b);
    }
    return v;
  }
  json unary(bool live) {
    if (accept("-")) {
      auto v = unary(live);
      if (!live) return v;
      if (!v.is_number_integer()) fail("cannot negate " + to_text(v));
      return -v.get<int64_t>();
    }
    return postfix(primary(live), live);
  }
  json postfix(json v, bool live) {
    for (;;) {
      if (accept(".")) {
        if (peek().kind != Tok::Name) fail("expected a name after '.' in '" + src_ + "'");
        v = member(v, json(toks_[pos_++].text));
      } else if (accept("[")) {
        json a = kUndefined, b = kUndefined;
        bool slice = accept(":");
        if (!slice) {
          a = ternary(live);
          slice = accept(":");
        }
        if (slice && !(peek().kind == Tok::Op && peek().text == "]")) b = ternary(live);
        expect("]");
        v = slice ? slice_of(v, a, b, live) : member(v, a);
      } else if (accept("|")) {
        if (peek().kind != Tok::Name) fail("expected a filter after '|' in '" + src_ + "'");
        v = filter(toks_[pos_++].text, v, live);
      } else {
        return v;
      }
    }
  }
  static json member(const json& v, const json& key) {
    if (v.is_object() && key.is_string()) {
      auto it = v.find(key.get<std::string>());
      return it == v.end() ? kUndefined : *it;
    }
    if ((v.is_array() || v.is_string()) && key.is_number_integer()) {
      auto i = key.get<int64_t>();
      const auto n = static_cast<int64_t>(v.size());
      if (v.is_string()) {
        const auto s = v.get<std::string>();
        if (i < 0) i += static_cast<int64_t>(s.size());
        return i >= 0 && i < static_cast<int64_t>(s.size()) ? json(std::string(1, s[i])) : kUndefined;
      }
      if (i < 0) i += n;
      return i >= 0 && i < n ? v[static_cast<size_t>(i)] : kUndefined;
    }
    return kUndefined;
  }
  json slice_of(const json& v, const json& a, const json& b, bool live) const {
    if (!live) return kUndefined;
    if (!v.is_array()) fail("slicing is supported on lists only, in '" + src_ + "'");
    const auto n = static_cast<int64_t>(v.size());
    auto clamp = [n](const json& x, int64_t def) {
      if (!x.is_number_integer()) return def;
      auto i = x.get<int64_t>();
      if (i < 0) i += n;
      return std::max<int64_t>(0, std::min(n, i));
    };
    const auto lo = clamp(a, 0), hi = clamp(b, n);
    json out = json::array();
    for (auto i = lo; i < hi; ++i) out.push_back(v[static_cast<size_t>(i)]);
    return out;
  }
  json filter(const std::string& f, const json& v, bool live) const {
    if (!live) return kUndefined;
    if (f == "length" || f == "count") {
      if (!(v.is_array() || v.is_string() || v.is_object())) fail("'length' of " + to_text(v));
      return v.is_string() ? v.get<std::string>().size() : v.size();
    }
    if (f == "string") return to_text(v);
    if (!v.is_string()) fail("filter '" + f + "' needs a string, got " + to_text(v));
    auto s = v.get<std::string>();
    if (f == "trim") {
      const auto b = s.find_first_not_of(" \t\n\r\f\v"), e = s.find_last_not_of(" \t\n\r\f\v");
      return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
    }
    if (f == "upper" || f == "lower") {
      for (auto& c : s) c = static_cast<char>(f == "upper" ? std::toupper(c) : std::tolower(c));
      return s;
    }
    fail("unsupported filter '" + f + "'");
  }
  json primary(bool live) {
    const auto t = toks_[pos_++];
    if (t.kind == Tok::Str) return t.text;
    if (t.kind == Tok::Num) {
      try {
        return std::stoll(t.text);
      } catch (const std::out_of_range&) {
        fail("integer " + t.text + " is out of range in '" + src_ + "'");
      }
    }
    if (t.kind == Tok::Op && t.text == "(") {
      auto v = ternary(live);
      expect(")");
      return v;
    }
    if (t.kind == Tok::Op && t.text == "[") {  // list literal
      json out = json::array();
      while (!accept("]")) {
        out.push_back(ternary(live));
        if (!accept(",")) {
          expect("]");
          break;
        }
      }
      return out;
    }
    if (t.kind != Tok::Name) fail("unexpected '" + t.text + "' in '" + src_ + "'");
    if (t.text == "true" || t.text == "True") return true;
    if (t.text == "false" || t.text == "False") return false;
    if (t.text == "none" || t.text == "None") return nullptr;
    if (t.text == "raise_exception") {
      expect("(");
      auto msg = ternary(live);
      expect(")");
      if (live) fail("the template refused the conversation: " + to_text(msg));
      return kUndefined;
    }
    if (peek().kind == Tok::Op && peek().text == "(") fail("unsupported function '" + t.text + "'");
    return env_.lookup(t.text);
  }

  std::string src_;
  std::vector<Tok> toks_;
  size_t pos_ = 0;
  Env& env_;
};

}  // namespace

json eval(const std::string& src, Env& env, bool live) { return Expr(src, env).parse(live); }

}  // namespace modula::serve::jinja
