// Rendezvous, collectives and the bucketed gradient average over a c10d process group.
#include "modula/train/distributed.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

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
  if (const char* t = std::getenv("MODULA_DIST_TIMEOUT"); t && *t) {
    char* end = nullptr;
    o.timeout_s = std::strtod(t, &end);
    if (*end != '\0') fail(std::string("MODULA_DIST_TIMEOUT must be a number of seconds, got '") + t + "'");
  }
  o.validate();
  return o;
}

struct Distributed::Impl {
  DistributedOptions o;
  std::string backend;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<detail::Group> pg;
  double grad_seconds = 0;

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

void Distributed::average_gradients(const std::vector<torch::Tensor>& params) {
  const auto start = Clock::now();
  auto& s = *impl_;
  const double W = static_cast<double>(s.o.world_size);
  const int64_t cap = static_cast<int64_t>(s.o.bucket_mb * 1024 * 1024);
  // Buckets of consecutive parameters of one dtype and device, each a flat buffer of the
  // gradients (zeros where none) followed by one "has a gradient" flag per parameter.
  struct Bucket {
    std::vector<size_t> members;
    at::Tensor flat;
  };
  std::vector<Bucket> buckets;
  int64_t bytes = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const bool same = !buckets.empty() && params[buckets.back().members.front()].scalar_type() == p.scalar_type() &&
                      params[buckets.back().members.front()].device() == p.device();
    if (!same || bytes + p.nbytes() > cap) buckets.emplace_back(), bytes = 0;
    buckets.back().members.push_back(i);
    bytes += static_cast<int64_t>(p.nbytes());
  }
  torch::NoGradGuard g;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  for (auto& b : buckets) {
    std::vector<torch::Tensor> parts;
    std::vector<float> flags;
    for (size_t i : b.members) {
      const auto& p = params[i];
      const bool has = p.grad().defined();
      parts.push_back(has ? p.grad().detach().reshape({-1}) : torch::zeros({p.numel()}, p.options()));
      flags.push_back(has ? 1.f : 0.f);
    }
    parts.push_back(torch::tensor(flags).to(parts.front().options()));
    b.flat = torch::cat(parts);
    std::vector<at::Tensor> ts{b.flat};
    works.push_back(s.pg->allreduce(ts));
  }
  for (auto& w : works) s.wait(w, "gradient all-reduce");
  for (auto& b : buckets) {
    int64_t off = 0;
    const int64_t numel = b.flat.numel() - static_cast<int64_t>(b.members.size());
    auto flags =
        b.flat.narrow(0, numel, static_cast<int64_t>(b.members.size())).to(torch::kCPU, torch::kFloat32).contiguous();
    const float* has = flags.data_ptr<float>();
    b.flat.div_(W);
    for (size_t k = 0; k < b.members.size(); ++k) {
      auto& p = params[b.members[k]];
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
  s.grad_seconds += std::chrono::duration<double>(Clock::now() - start).count();
}

double Distributed::gradient_seconds() const { return impl_->grad_seconds; }

}  // namespace modula::train
