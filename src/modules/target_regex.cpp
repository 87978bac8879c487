#include "modules/target_regex.h"

#include <unicode/regex.h>
#include <unicode/unistr.h>

#include "modula/util/error.h"

namespace modula {
namespace {

constexpr std::string_view kTargetRegexTag = "targets";
// The matcher's work per name, in ICU time units (~10,000 engine steps each): names are
// short, so ordinary patterns take a few hundred steps; nested quantifiers take 2^length.
constexpr int32_t kTargetRegexTimeLimit = 50;
constexpr int32_t kTargetRegexStackLimitKb = 1024;

}  // namespace

struct TargetRegex::Impl {
  std::unique_ptr<icu::RegexPattern> pattern;
  std::string source, what;
};

TargetRegex::TargetRegex(const std::string& pattern, const std::string& what) : impl_(std::make_unique<Impl>()) {
  impl_->source = pattern;
  impl_->what = what;
  UErrorCode status = U_ZERO_ERROR;
  UParseError parse_error{};
  impl_->pattern.reset(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(pattern), 0, parse_error, status));
  if (U_FAILURE(status) || !impl_->pattern)
    throw_error(kTargetRegexTag, what + ": invalid regular expression '" + pattern + "' (" + u_errorName(status) +
                                     " at offset " + std::to_string(parse_error.offset) + ")");
}

TargetRegex::~TargetRegex() = default;
TargetRegex::TargetRegex(TargetRegex&&) noexcept = default;
TargetRegex& TargetRegex::operator=(TargetRegex&&) noexcept = default;

bool TargetRegex::full_match(const std::string& name) const {
  UErrorCode status = U_ZERO_ERROR;
  const icu::UnicodeString text = icu::UnicodeString::fromUTF8(name);
  std::unique_ptr<icu::RegexMatcher> matcher(impl_->pattern->matcher(text, status));
  matcher->setTimeLimit(kTargetRegexTimeLimit, status);
  matcher->setStackLimit(kTargetRegexStackLimitKb, status);
  const bool matched = U_SUCCESS(status) && matcher->matches(status);
  if (U_FAILURE(status))
    throw_error(kTargetRegexTag, impl_->what + ": regular expression '" + impl_->source + "' gave up matching '" +
                                     name + "' (" + u_errorName(status) +
                                     "): it backtracks catastrophically; avoid nested quantifiers like (.*)*");
  return matched;
}

}  // namespace modula
