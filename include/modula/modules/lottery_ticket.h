// LT-SFT's first phase (Ansell et al. 2022) around any training of the chosen parameters:
// snapshot θ₀, let the caller fine-tune the parameters densely, keep the K entries of
// largest |θ₁ − θ₀| as the mask and restore θ₀. The one selection step of `modula::lt_sft`
// (train/lt_sft.h) and of `modula train`'s MODULA_SPARSE_FT with `mask: lottery_ticket`.
//
//   LotteryTicket ticket(*model, SparseDiffOptions().target_parameters({"re:.*mlp.*"}).k(4096));
//   train(ticket.parameters());        // dense phase: any loop over these tensors
//   SparseDiff diff = ticket.select();   // mask = top-K |θ₁ − θ₀|, values 0, θ₀ restored
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "modula/modules/sparse_ft.h"

namespace modula {

class LotteryTicket {
 public:
  // Selects the parameters (options.target/exclude_parameters), snapshots θ₀ and sets
  // requires_grad on them (and off on every other backbone parameter); the destructor
  // restores θ₀ and the flags when select() was not called.
  LotteryTicket(Backbone& model, SparseDiffOptions options);
  ~LotteryTicket();
  LotteryTicket(const LotteryTicket&) = delete;
  LotteryTicket& operator=(const LotteryTicket&) = delete;

  // The dense parameters of the first phase (the backbone's own tensors).
  const std::vector<torch::Tensor>& parameters() const { return params_; }
  const std::vector<std::string>& names() const { return names_; }
  bool selected() const { return selected_; }
  // Top-K of |θ₁ − θ₀| over all chosen parameters jointly; restores θ₀ (exact copy) and the
  // requires_grad flags; the diff (values 0, on the parameters' device) is not attached.
  // Throws std::runtime_error when called twice or when θ₁ = θ₀ (nothing trained).
  SparseDiff select();

 private:
  void restore();

  SparseDiffOptions options_;
  std::vector<std::string> names_;
  std::vector<torch::Tensor> params_, theta0_;
  std::vector<std::pair<torch::Tensor, bool>> flags_;  // every backbone parameter's requires_grad
  bool selected_ = false;
};

}  // namespace modula
