// Quickstart experiment (d).
#include "modula/composition/moe_lora.h"
#include "modula/composition/registry.h"
#include "quickstart/common.h"

namespace modula::train::quickstart_detail {

// (d) Mixture of LoRA experts: multi-task training without task ids (the task's skill
// markers are in the text, so a token-level router can tell the tasks apart).
ExperimentResult moe(Context& c) {
  const auto& o = c.o;
  auto tasks = parse_tasks(o.moe_tasks());
  auto evals = eval_sets(o, tasks, true);
  const size_t K = tasks.size();
  const int64_t M = o.moe_experts(), k = o.moe_k(), r0 = o.lora_r();
  ExperimentResult e;
  e.key = "moe";
  e.title = "(d) mixture of LoRA experts";
  e.claim =
      "Experts with learned top-k routing add capacity at the active compute of one module; compared with one "
      "module of the same active size and one of the same total size.";
  e.tasks = o.moe_tasks();
  e.notes.push_back(std::to_string(o.moe_steps()) +
                    " steps per method on batches mixing every task, skill markers in "
                    "the text, no task id. MoE: " +
                    std::to_string(M) + " LoRA experts of rank " + std::to_string(r0) +
                    " per linear site, token-level top-" + std::to_string(k) +
                    " routing, training loss + router losses "
                    "(load balancing α = " +
                    fmt(o.load_balance_coef(), 3) + ", z-loss β = 0.001). Active params: router + " +
                    std::to_string(k) + "/" + std::to_string(M) + " of the experts.");
  auto all = iota_ids(K);
  auto ctx = std::make_shared<RoutingContext>();
  auto masked = [&](const TaskBatch& b) {
    ctx->set_mask(b.input_ids.ne(SymbolVocab::pad));  // padding out of the router losses
    return b;
  };
  auto draw = [&] { return masked(c.sampler.sample(tasks, all, o.batch_size(), Split::Train, true)); };
  auto finish = [&](MethodResult& r, Backbone& model, Clock::time_point t0) {
    std::vector<double> row(K);
    for (size_t j = 0; j < K; ++j) row[j] = accuracy(model, masked(evals[j]));
    r.stages = {"multi-task"};
    r.accuracy = {row};
    r.final_accuracy = mean(row);
    r.seconds = since(t0);
  };
  {
    auto t0 = Clock::now();
    std::string name =
        "MoE LoRA (" + std::to_string(M) + "x r" + std::to_string(r0) + ", top-" + std::to_string(k) + ")";
    c.say(" " + name + ": token-level routing with load balancing");
    auto model = copy_backbone(*c.pretrained);
    freeze_backbone(*model);
    auto layers = add_moe_lora(
        *model, {{"target_modules", "all-linear"}},
        MoeLoraOptions(M).r(r0).alpha(o.lora_alpha()).k(k).load_balance_coef(o.load_balance_coef()).context(ctx));
    std::vector<torch::Tensor> params;
    int64_t router = 0;
    for (auto& m : layers.modules) {
      auto layer = moe_layer(m);
      for (auto& p : layer->parameters()) params.push_back(p);
      router += count(layer->router->parameters());
    }
    MethodResult r;
    r.method = name;
    r.loss.name = name;
    r.aux.name = name;
    r.trainable_parameters = count(params);
    r.active_parameters = router + (r.trainable_parameters - router) * k / M;
    fit(*model, {ParamGroup{params, o.module_lr()}}, draw, o.moe_steps(), o.log_every(), r.loss, name, c.progress,
        &r.aux);
    r.aux_loss = r.aux.loss.back();
    finish(r, *model, t0);
    e.methods.push_back(std::move(r));
  }
  for (int64_t rank : {r0, M * r0}) {
    auto t0 = Clock::now();
    std::string name = "LoRA r" + std::to_string(rank) + (rank == r0 ? " (same active)" : " (same params)");
    c.say(" " + name);
    auto model = copy_backbone(*c.pretrained);
    freeze_backbone(*model);
    auto config = lora_config(o);
    config["r"] = rank;
    config["lora_alpha"] = o.lora_alpha() * static_cast<double>(rank) / static_cast<double>(r0);  // same scaling
    auto a = add_adapter(*model, config, "lora");
    MethodResult r;
    r.method = name;
    r.loss.name = name;
    r.trainable_parameters = r.active_parameters = count(a.parameters());
    fit(*model, a.parameters(), draw, o.moe_steps(), o.module_lr(), o.log_every(), r.loss, name, c.progress);
    finish(r, *model, t0);
    e.methods.push_back(std::move(r));
  }
  return e;
}

}  // namespace modula::train::quickstart_detail
