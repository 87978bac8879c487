// Rendezvous, collectives and the bucketed gradient average over a c10d process group.
#include "modula/train/distributed.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unordered_map>
#include <unordered_set>

#include "distributed_backend.h"
#include "modula/train/config.h"
#include "modula/util/error.h"

namespace modula::train {
namespace {

using detail::kDistTag;
using Clock = std::chrono::steady_clock;

[[noreturn]] void fail(const std::string& msg) { throw_error<TrainError>(kDistTag, msg); }

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end != '\0') fail(std::string(name) + " must be an integer, got '" + v + "'");
  return static_cast<int>(x);
}

std::string env_str(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

std::string secs(double s) { return std::to_string(static_cast<int64_t>(std::ceil(s))) + " s"; }

}  // namespace

namespace detail {

std::string short_what(const std::exception& e) {
  std::string s;
  if (auto* c = dynamic_cast<const c10::Error*>(&e))
    s = c->what_without_backtrace();
  else
    s = e.what();
  // c10 appends "Exception raised from ..." context lines: keep the first line.
  if (auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return s;
}

}  // namespace detail

void DistributedOptions::validate() const {
  if (world_size < 1) fail("WORLD_SIZE must be >= 1, got " + std::to_string(world_size));
  if (rank < 0 || rank >= world_size)
    fail("RANK must be in [0, WORLD_SIZE) = [0, " + std::to_string(world_size) + "), got " + std::to_string(rank));
  if (local_rank < 0) fail("LOCAL_RANK must be >= 0, got " + std::to_string(local_rank));
  if (master_addr.empty()) fail("MASTER_ADDR is empty");
  if (master_port < 1 || master_port > 65535)
    fail("MASTER_PORT must be in [1, 65535], got " + std::to_string(master_port));
  if (backend != "auto" && backend != "gloo" && backend != "nccl")
    fail("backend must be auto, gloo or nccl, got '" + backend + "'");
  if (!(timeout_s > 0)) fail("timeout must be > 0 seconds, got " + std::to_string(timeout_s));
  if (!(bucket_mb > 0)) fail("bucket_mb must be > 0, got " + std::to_string(bucket_mb));
}

std::optional<DistributedOptions> DistributedOptions::from_env() {
  if (!std::getenv("RANK") && !std::getenv("WORLD_SIZE")) return std::nullopt;
  DistributedOptions o;
  o.rank = env_int("RANK", 0);
  o.world_size = env_int("WORLD_SIZE", 1);
  o.local_rank = env_int("LOCAL_RANK", o.rank);
  o.master_addr = env_str("MASTER_ADDR", o.master_addr);
  o.master_port = env_int("MASTER_PORT", o.master_port);
  o.backend = env_str("MODULA_DIST_BACKEND", o.backend);
  for (auto [name, to] :
       {std::pair{"MODULA_DIST_TIMEOUT", &o.timeout_s}, std::pair{"MODULA_DIST_BUCKET_MB", &o.bucket_mb}})
    if (const char* t = std::getenv(name); t && *t) {
      char* end = nullptr;
      *to = std::strtod(t, &end);
      if (*end != '\0') fail(std::string(name) + " must be a number, got '" + t + "'");
    }
  const int overlap = env_int("MODULA_DIST_OVERLAP", 1);
  if (overlap != 0 && overlap != 1) fail("MODULA_DIST_OVERLAP must be 0 or 1, got " + std::to_string(overlap));
  o.overlap = overlap == 1;
  o.validate();
  return o;
}

// Flat buckets over the parameters in reverse order (the order backward produces their
// gradients), each the gradients (zeros where none) then one "has a gradient" flag per member.
struct GradBucket {
  std::vector<size_t> members;
  int64_t numel = 0;                    // of the gradients
  size_t waiting = 0;                   // members whose gradient this armed backward has not accumulated yet
  at::Tensor flat;                      // reused every step
  c10::intrusive_ptr<c10d::Work> work;  // started, not yet waited for
};

struct GradPlan {
  std::vector<torch::Tensor> given;   // as passed: average_gradients(given) uses this plan
  std::vector<torch::Tensor> params;  // without repeats
  std::vector<GradBucket> buckets;
  std::vector<size_t> bucket_of;
  std::vector<char> ready;  // per parameter, this armed backward
  size_t next = 0;          // the next bucket to start: in order, so every rank issues the same sequence
  int64_t early = 0;        // buckets started before average_gradients (arm, hooks) since the last one
  bool armed = false;
  std::string failure;  // of a hook: reported by average_gradients
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> hooks;  // accumulator, key
  std::vector<size_t> hook_of;                                                      // the parameter of hooks[h]
  std::mutex mu;

  GradPlan(const std::vector<torch::Tensor>& ps, double bucket_mb) : given(ps) {
    std::unordered_set<const c10::TensorImpl*> seen;
    for (const auto& p : ps)
      if (seen.insert(p.unsafeGetTensorImpl()).second) params.push_back(p);
    const int64_t cap = static_cast<int64_t>(bucket_mb * 1024 * 1024), first = std::min<int64_t>(cap, 1 << 20);
    bucket_of.resize(params.size());
    int64_t bytes = 0;
    for (size_t k = params.size(); k-- > 0;) {
      const auto& p = params[k];
      const auto* head = buckets.empty() ? nullptr : &params[buckets.back().members.front()];
      const bool same = head && head->scalar_type() == p.scalar_type() && head->device() == p.device();
      if (!same || bytes + static_cast<int64_t>(p.nbytes()) > (buckets.size() == 1 ? first : cap))
        buckets.emplace_back(), bytes = 0;
      buckets.back().members.push_back(k);
      buckets.back().numel += p.numel();
      bytes += static_cast<int64_t>(p.nbytes());
      bucket_of[k] = buckets.size() - 1;
    }
    for (auto& b : buckets) {
      const auto& p = params[b.members.front()];
      b.flat = torch::empty({b.numel + static_cast<int64_t>(b.members.size())}, p.options());
    }
    reset();
  }

  void reset() {
    for (auto& b : buckets) b.waiting = b.members.size(), b.work.reset();
    ready.assign(params.size(), 0);
    next = 0, early = 0, failure.clear();
  }

  // Fills bucket `next` from the gradients as they are now and starts its all-reduce.
  void start_next(detail::Group& pg) {
    torch::NoGradGuard g;
    auto& b = buckets[next++];
    std::vector<float> flags;
    int64_t off = 0;
    for (size_t k : b.members) {
      const auto& p = params[k];
      auto slot = b.flat.narrow(0, off, p.numel());
      const bool has = p.grad().defined();
      has ? (void)slot.copy_(p.grad().detach().reshape({-1})) : (void)slot.zero_();
      flags.push_back(has ? 1.f : 0.f);
      off += p.numel();
    }
    b.flat.narrow(0, off, static_cast<int64_t>(flags.size())).copy_(torch::tensor(flags));
    std::vector<at::Tensor> ts{b.flat};
    b.work = pg.allreduce(ts);
  }

  // The hook: parameter k's gradient is accumulated. Starts every bucket now complete.
  void accumulated(size_t k, detail::Group& pg) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || !failure.empty()) return;
    if (ready[k]) {
      if (buckets[bucket_of[k]].work)
        failure =
            "a parameter's gradient was accumulated after its bucket was sent (twice in one backward, or by a "
            "backward that does not start from the armed roots: a reentrant backward such as activation "
            "checkpointing?); set MODULA_DIST_OVERLAP=0";
      return;
    }
    ready[k] = 1;
    --buckets[bucket_of[k]].waiting;
    start_ready(pg);
  }

  // Starts every bucket, in order, whose members are all ready.
  void start_ready(detail::Group& pg) {
    try {
      while (next < buckets.size() && buckets[next].waiting == 0) start_next(pg), ++early;
    } catch (const std::exception& e) {
      failure = "gradient all-reduce failed to start: " + detail::short_what(e);
    }
  }
};

struct Distributed::Impl {
  DistributedOptions o;
  std::string backend;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<detail::Group> pg;
  GradientStats stats;
  std::unique_ptr<GradPlan> watched;

  ~Impl() { unwatch(); }

  void unwatch() {
    if (!watched) return;
    for (auto& [acc, key] : watched->hooks) acc->del_post_hook(key);
    watched.reset();
  }

  // Waits for `work`; a failure (a peer that died, a timeout) becomes one clear TrainError.
  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* what) const {
    try {
      work->wait();
    } catch (const std::exception& e) {
      fail("rank " + std::to_string(o.rank) + " of " + std::to_string(o.world_size) + ": " + what +
           " failed: another rank died or did not answer within the timeout (" + secs(o.timeout_s) +
           "): " + detail::short_what(e));
    }
  }
};

Distributed::Distributed(const DistributedOptions& options, const torch::Device& device)
    : impl_(std::make_unique<Impl>()) {
  auto& s = *impl_;
  options.validate();
  s.o = options;
  s.backend = s.o.backend == "auto" ? (device.is_cuda() && detail::have_nccl() ? "nccl" : "gloo") : s.o.backend;
  if (s.backend == "nccl" && !device.is_cuda()) fail("backend nccl needs a CUDA device; the run's device is cpu");
  const std::string where = s.o.master_addr + ":" + std::to_string(s.o.master_port);
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(s.o.master_port);
  // Under torchrun the agent already serves the store at MASTER_PORT: every rank is a client.
  const char* agent_store = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  so.isServer = s.o.rank == 0 && !(agent_store && std::string(agent_store) == "True");
  so.numWorkers = static_cast<size_t>(s.o.world_size);
  so.waitWorkers = true;
  so.timeout = std::chrono::milliseconds(static_cast<int64_t>(s.o.timeout_s * 1000.0));
  try {
    s.store = c10::make_intrusive<c10d::TCPStore>(s.o.master_addr, so);
  } catch (const std::exception& e) {
    std::string why = detail::short_what(e);
    if (so.isServer)
      fail("rank 0 cannot serve the rendezvous at " + where + " (MASTER_ADDR:MASTER_PORT): " + why +
           " -- is the port in use? pick another MASTER_PORT (--master-port)");
    fail("rank " + std::to_string(s.o.rank) + " cannot reach the master at " + where + " within " +
         secs(s.o.timeout_s) + ": " + why + " -- is rank 0 running and MASTER_ADDR/MASTER_PORT right?");
  }
  s.pg = s.backend == "nccl" ? detail::make_nccl_group(s.store, s.o) : detail::make_gloo_group(s.store, s.o);
}

Distributed::~Distributed() = default;

int Distributed::rank() const { return impl_->o.rank; }
int Distributed::world_size() const { return impl_->o.world_size; }
const std::string& Distributed::backend() const { return impl_->backend; }
const DistributedOptions& Distributed::options() const { return impl_->o; }

void Distributed::all_reduce(torch::Tensor& t, Op op) {
  c10d::AllreduceOptions ao;
  ao.reduceOp = op == Op::Sum ? c10d::ReduceOp::SUM : op == Op::Min ? c10d::ReduceOp::MIN : c10d::ReduceOp::MAX;
  std::vector<at::Tensor> ts{t};
  impl_->wait(impl_->pg->allreduce(ts, ao), "all-reduce");
}

void Distributed::broadcast(const std::vector<torch::Tensor>& tensors) {
  // One flat buffer per dtype: gloo broadcasts one tensor per call.
  std::map<c10::ScalarType, std::vector<torch::Tensor>> by_type;
  for (const auto& t : tensors) by_type[t.scalar_type()].push_back(t);
  torch::NoGradGuard g;
  for (auto& [type, ts] : by_type) {
    std::vector<torch::Tensor> flat;
    for (auto& t : ts) flat.push_back(t.detach().reshape({-1}));
    std::vector<at::Tensor> buf{torch::cat(flat).contiguous()};
    impl_->wait(impl_->pg->broadcast(buf), "broadcast");
    int64_t off = 0;
    for (auto& t : ts) {
      t.detach().copy_(buf[0].narrow(0, off, t.numel()).view(t.sizes()));
      off += t.numel();
    }
  }
}

torch::Tensor Distributed::all_gather(const torch::Tensor& t) {
  const int W = world_size();
  auto local = t.reshape({-1}).contiguous();
  auto gather = [&](const torch::Tensor& x) {
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < W; ++r) out[0].push_back(torch::empty_like(x));
    std::vector<at::Tensor> in{x};
    impl_->wait(impl_->pg->allgather(out, in), "all-gather");
    return out[0];
  };
  auto sizes = gather(torch::tensor({local.numel()}, torch::dtype(torch::kInt64).device(local.device())));
  int64_t longest = 0;
  std::vector<int64_t> n(W);
  for (int r = 0; r < W; ++r) longest = std::max(longest, n[r] = sizes[r].item<int64_t>());
  auto padded = torch::zeros({longest}, local.options());
  padded.narrow(0, 0, local.numel()).copy_(local);
  auto parts = gather(padded);
  std::vector<torch::Tensor> keep;
  for (int r = 0; r < W; ++r) keep.push_back(parts[r].narrow(0, 0, n[r]));
  return torch::cat(keep);
}

void Distributed::barrier() { impl_->wait(impl_->pg->barrier(), "barrier"); }

void Distributed::watch_gradients(const std::vector<torch::Tensor>& params) {
  auto& s = *impl_;
  s.unwatch();
  if (params.empty()) return;
  s.watched = std::make_unique<GradPlan>(params, s.o.bucket_mb);
  if (!s.o.overlap) return;
  GradPlan* plan = s.watched.get();
  detail::Group* pg = s.pg.get();
  for (size_t k = 0; k < plan->params.size(); ++k) {
    const auto& p = plan->params[k];
    if (!p.is_leaf() || !p.requires_grad()) continue;  // no gradient: its bucket starts at the average
    // The accumulator is held here: the parameter keeps only a weak reference (as DDP's Reducer).
    auto acc = torch::autograd::impl::grad_accumulator(p);
    auto key = acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [plan, pg, k](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          plan->accumulated(k, *pg);
          return outputs;
        }));
    plan->hooks.emplace_back(std::move(acc), key);
    plan->hook_of.push_back(k);
  }
}

void Distributed::arm_gradients(const std::vector<torch::Tensor>& roots) {
  if (!impl_->watched) return;
  GradPlan& plan = *impl_->watched;
  std::lock_guard<std::mutex> lock(plan.mu);
  plan.reset();  // drops what an aborted step left
  plan.armed = true;
  if (plan.hooks.empty()) return;
  // The parameters whose accumulator the backward from `roots` cannot reach keep the
  // gradient they have: ready now, so that they do not hold their buckets (DDP's
  // find_unused_parameters).
  std::unordered_map<const torch::autograd::Node*, size_t> index;
  for (size_t h = 0; h < plan.hooks.size(); ++h) index[plan.hooks[h].first.get()] = plan.hook_of[h];
  std::vector<char> reached(plan.params.size(), 0);
  std::unordered_set<const torch::autograd::Node*> seen;
  std::vector<const torch::autograd::Node*> todo;
  for (const auto& r : roots)
    if (r.defined() && r.requires_grad())
      if (auto e = torch::autograd::impl::gradient_edge(r); e.function) todo.push_back(e.function.get());
  while (!todo.empty()) {
    const auto* n = todo.back();
    todo.pop_back();
    if (!seen.insert(n).second) continue;
    if (auto it = index.find(n); it != index.end()) reached[it->second] = 1;
    for (const auto& e : n->next_edges())
      if (e.function) todo.push_back(e.function.get());
  }
  for (size_t k = 0; k < plan.params.size(); ++k)
    if (!reached[k]) plan.ready[k] = 1, --plan.buckets[plan.bucket_of[k]].waiting;
  plan.start_ready(*impl_->pg);
}

void Distributed::average_gradients(const std::vector<torch::Tensor>& params) {
  const auto start = Clock::now();
  auto& s = *impl_;
  auto same = [&](const std::vector<torch::Tensor>& a) {
    if (a.size() != params.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (!a[i].is_same(params[i])) return false;
    return true;
  };
  std::unique_ptr<GradPlan> once;
  GradPlan& plan =
      s.watched && same(s.watched->given) ? *s.watched : *(once = std::make_unique<GradPlan>(params, s.o.bucket_mb));
  std::lock_guard<std::mutex> lock(plan.mu);
  plan.armed = false;
  if (!plan.failure.empty()) fail("rank " + std::to_string(s.o.rank) + ": " + plan.failure);
  torch::NoGradGuard g;
  while (plan.next < plan.buckets.size()) plan.start_next(*s.pg);
  for (auto& b : plan.buckets) s.wait(b.work, "gradient all-reduce");
  const double W = static_cast<double>(s.o.world_size);
  for (auto& b : plan.buckets) {
    const int64_t n = static_cast<int64_t>(b.members.size());
    auto flags = b.flat.narrow(0, b.numel, n).to(torch::kCPU, torch::kFloat32).contiguous();
    const float* has = flags.data_ptr<float>();
    b.flat.div_(W);
    int64_t off = 0;
    for (size_t k = 0; k < b.members.size(); ++k) {
      auto& p = plan.params[b.members[k]];
      auto sum = b.flat.narrow(0, off, p.numel()).view(p.sizes());
      off += p.numel();
      if (has[k] > 0) {
        if (p.grad().defined())
          p.mutable_grad().copy_(sum);
        else
          p.mutable_grad() = sum.clone();
      } else {
        p.mutable_grad() = torch::Tensor();
      }
    }
  }
  s.stats.syncs += 1;
  s.stats.buckets += static_cast<int64_t>(plan.buckets.size());
  s.stats.early += plan.early;
  plan.reset();
  s.stats.seconds += std::chrono::duration<double>(Clock::now() - start).count();
}

Distributed::GradientStats Distributed::gradient_stats() const { return impl_->stats; }

}  // namespace modula::train
