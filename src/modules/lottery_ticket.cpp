// LT-SFT's selection: θ₀ snapshot, the caller's dense phase, top-K |θ₁ − θ₀|, θ₀ restored.
#include "modula/modules/lottery_ticket.h"

#include "modula/util/error.h"

namespace modula {
namespace {
constexpr std::string_view kLotteryTicketTag = "sparse_ft";
}

LotteryTicket::LotteryTicket(Backbone& model, SparseDiffOptions options) : options_(std::move(options)) {
  options_.validate();
  auto chosen = select_parameters(model, options_.target_parameters(), options_.exclude_parameters());
  for (auto& p : model.parameters()) flags_.emplace_back(p, p.requires_grad()), p.set_requires_grad(false);
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : chosen) {
    names_.push_back(name);
    params_.push_back(p);
    theta0_.push_back(p.detach().clone());
  }
  for (auto& p : params_) p.set_requires_grad(true);
}

LotteryTicket::~LotteryTicket() {
  if (!selected_) restore();
}

void LotteryTicket::restore() {
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < theta0_.size(); ++i) {
      params_[i].copy_(theta0_[i]);
      params_[i].mutable_grad() = torch::Tensor();
    }
  }
  for (auto& [p, flag] : flags_)
    if (p.is_leaf()) p.set_requires_grad(flag);
}

SparseDiff LotteryTicket::select() {
  if (selected_) throw_error<std::runtime_error>(kLotteryTicketTag, "LotteryTicket::select() called twice");
  std::vector<std::pair<std::string, torch::Tensor>> deltas;
  bool moved = false;
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
      auto d = params_[i].detach().to(torch::kFloat32) - theta0_[i].to(torch::kFloat32);
      moved = moved || d.abs().max().item<float>() > 0;
      deltas.emplace_back(names_[i], std::move(d));
    }
  }
  if (!moved) {
    restore();
    selected_ = true;
    throw_error<std::runtime_error>(
        kLotteryTicketTag,
        "LT-SFT phase 1 left every chosen parameter unchanged (θ₁ = θ₀): the loss does not depend on them "
        "or the learning rate is 0");
  }
  SparseDiff diff = sparse_diff_from_delta(deltas, options_);
  deltas.clear();
  restore();
  selected_ = true;
  diff->to(params_.front().device());
  return diff;
}

}  // namespace modula
