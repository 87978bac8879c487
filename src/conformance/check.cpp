// The numeric comparison of every conformance kind: tolerance as the fixtures README
// states it, NaN/Inf on either side fail, a case that compared nothing fails.
#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

#include "cases.h"
#include "modula/util/error.h"

namespace modula {
namespace {

// Flat index -> "[i,j,k]" over `sizes`.
std::string check_position_string(int64_t flat, c10::IntArrayRef sizes) {
  std::vector<int64_t> idx(sizes.size());
  for (size_t d = sizes.size(); d-- > 0;) {
    idx[d] = sizes[d] ? flat % sizes[d] : 0;
    flat = sizes[d] ? flat / sizes[d] : 0;
  }
  std::string s = "[";
  for (size_t d = 0; d < idx.size(); ++d) s += (d ? "," : "") + std::to_string(idx[d]);
  return s + "]";
}

std::string check_number(double v) {
  std::ostringstream s;
  s.precision(6);
  s << v;
  return s.str();
}

}  // namespace

void ConformanceOptions::validate() const {
  check(std::isfinite(atol) && atol >= 0, kConformanceTag, "atol must be finite and >= 0, got " + check_number(atol));
  check(std::isfinite(rtol) && rtol >= 0, kConformanceTag, "rtol must be finite and >= 0, got " + check_number(rtol));
  check(min_cases >= 0, kConformanceTag, "min_cases must be >= 0, got " + std::to_string(min_cases));
}

torch::Tensor expected_tensor(const io::SafetensorsFile& expected, const std::string& key) {
  if (!expected.contains(key))
    throw_error<std::runtime_error>(kConformanceTag, expected.path() + ": no tensor '" + key + "' to compare");
  return expected.get(key);
}

void CaseCheck::fail(const std::string& why) {
  if (failures_++ == 0) first_failure_ = why;
}

void CaseCheck::compare(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& mask,
                        const std::string& what) {
  if (!got.defined()) throw_error<std::runtime_error>(kConformanceTag, what + ": modula computed no such tensor");
  if (got.sizes() != want.sizes())
    throw_error<std::runtime_error>(kConformanceTag,
                                    what + ": shape " + c10::str(got.sizes()) + ", expected " + c10::str(want.sizes()));
  auto a = got.detach().cpu().to(torch::kFloat64).flatten();
  auto b = want.detach().cpu().to(torch::kFloat64);
  auto keep = torch::ones_like(b, torch::kBool);
  if (mask.defined()) {
    auto m = mask.cpu().to(torch::kBool);
    while (m.dim() < b.dim()) m = m.unsqueeze(-1);
    keep = m.expand_as(b);
  }
  keep = keep.flatten();
  b = b.flatten();
  if (!keep.any().item<bool>()) return fail(what + ": the mask keeps no position to compare");
  ++compared_;
  const std::pair<const char*, const torch::Tensor*> sides[] = {{"expected", &b}, {"computed", &a}};
  for (const auto& [side, t] : sides) {
    auto bad = t->isfinite().logical_not().logical_and(keep);
    if (bad.any().item<bool>()) {
      worst_ = std::numeric_limits<double>::infinity();
      auto at = bad.nonzero()[0][0].item<int64_t>();
      return fail(what + ": " + std::to_string(bad.sum().item<int64_t>()) + " NaN/Inf in the " + side +
                  " tensor, first at " + check_position_string(at, want.sizes()) + " (" +
                  check_number(t->select(0, at).item<double>()) + ")");
    }
  }
  auto diff = (a - b).abs().masked_fill(keep.logical_not(), 0);
  worst_ = std::max(worst_, diff.max().item<double>());
  auto bound = (b.abs() * o_.rtol).clamp_min(o_.atol);
  auto over = (diff > bound).logical_and(keep);
  if (!over.any().item<bool>()) return;
  auto at = (diff - bound).masked_fill(over.logical_not(), -1).argmax().item<int64_t>();
  fail(what + ": " + std::to_string(over.sum().item<int64_t>()) + " value(s) outside max(atol " +
       check_number(o_.atol) + ", rtol " + check_number(o_.rtol) + "*|want|), worst at " +
       check_position_string(at, want.sizes()) + ": got " + check_number(a[at].item<double>()) + ", want " +
       check_number(b[at].item<double>()) + ", |diff| " + check_number(diff[at].item<double>()));
}

CaseResult CaseCheck::result(const std::string& note) const {
  CaseResult r;
  r.max_abs_diff = worst_;
  r.compared = compared_;
  if (failures_) {
    r.status = CaseStatus::Fail;
    r.detail = first_failure_;
    if (failures_ > 1) r.detail += " (+" + std::to_string(failures_ - 1) + " more failing tensor(s))";
  } else if (compared_ == 0) {
    r.status = CaseStatus::Fail;
    r.detail = "nothing compared";
  } else {
    r.status = CaseStatus::Pass;
    r.detail = note.empty() ? std::to_string(compared_) + " tensor(s) compared" : note;
  }
  return r;
}

}  // namespace modula
