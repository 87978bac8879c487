// Data-parallel training over torch.distributed's c10d: a TCPStore rendezvous served by rank
// 0, ProcessGroupGloo on CPU (ProcessGroupNCCL on CUDA when the libtorch has it), gradients
// averaged in flat buckets, and a torchrun-style local launcher (docs/distributed.md).
//
//   auto opts = modula::train::DistributedOptions::from_env();   // RANK, WORLD_SIZE, ...
//   auto dist = std::make_shared<modula::train::Distributed>(*opts, torch::kCPU);
//   modula::train::Trainer(config, {}, dist).run(callbacks);     // rank 0 writes the outputs
//
// The data-parallel contract (Trainer with a Distributed):
//   - optim.batch_size is the global micro-batch: every rank builds the same global batch
//     (same seeded order and multi-task sampling as one process) and takes its rows
//     [r·B/W, (r+1)·B/W); global batch per optimizer step = per-rank batch × W × grad_accum;
//   - each rank's mean loss is weighted by W · (its scored tokens / the global batch's) so
//     that the averaged gradient is the one-process gradient of the global batch;
//   - rank 0 writes checkpoints, metrics, the report and the outputs; evaluation is sharded
//     by batch and its sums reduced, so every rank sees the same metrics.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace modula::train {

// How this process joins its group: the variables torchrun, Slurm scripts or the local
// launcher set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
struct DistributedOptions {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // the CUDA device index on multi-GPU machines
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;       // rank 0 serves the TCPStore here
  std::string backend = "auto";  // auto (nccl on CUDA when built with it, else gloo) | gloo | nccl
  double timeout_s = 300;        // rendezvous and every collective; a dead or hung rank fails the others
  double bucket_mb = 25;         // gradient all-reduce bucket size (MiB); the first at most 1 MiB, as DDP
  bool overlap = true;           // all-reduce buckets during the step's last backward (watch_gradients)

  // Throws TrainError naming the bad field.
  void validate() const;
  // From the environment; nullopt when neither RANK nor WORLD_SIZE is set. MASTER_ADDR and
  // MASTER_PORT default to 127.0.0.1:29500, LOCAL_RANK to RANK; MODULA_DIST_TIMEOUT (seconds),
  // MODULA_DIST_BACKEND, MODULA_DIST_BUCKET_MB and MODULA_DIST_OVERLAP (0 or 1) override the
  // defaults. Throws TrainError for a malformed value.
  static std::optional<DistributedOptions> from_env();
};

// One process's membership in a group of world_size ranks.
class Distributed {
 public:
  // Rendezvous and process group. Throws TrainError for a busy MASTER_PORT (rank 0), a
  // master that does not answer within timeout_s, or a backend this build lacks.
  Distributed(const DistributedOptions& options, const torch::Device& device);
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int rank() const;
  int world_size() const;
  bool is_main() const { return rank() == 0; }
  const std::string& backend() const;  // "gloo" | "nccl"
  const DistributedOptions& options() const;

  enum class Op { Sum, Min, Max };
  // In place over all ranks; float, double or int64 tensors.
  void all_reduce(torch::Tensor& t, Op op = Op::Sum);
  // Rank 0's values into every rank's tensors (in place).
  void broadcast(const std::vector<torch::Tensor>& tensors);
  // The concatenation, in rank order, of every rank's 1-D tensor (lengths may differ).
  torch::Tensor all_gather(const torch::Tensor& t);
  void barrier();

  // Data parallel: the average over ranks of every parameter's gradient, in flat buckets of
  // bucket_mb (the first at most 1 MiB) over the parameters in reverse order, the order
  // backward produces their gradients. A parameter without a gradient on some ranks counts
  // zeros there; one without a gradient on every rank keeps none (the optimizer leaves it
  // alone, as in one process).
  void average_gradients(const std::vector<torch::Tensor>& params);
  // Overlap with backward, as torch's DDP Reducer: watch_gradients puts a hook on the gradient
  // accumulator of each of `params` (replacing the previous watch; {} removes them).
  // arm_gradients(roots) before the optimizer step's last backward, which starts from
  // `roots` (the loss and what is added to it): the parameters it cannot reach are ready at
  // once, the others when their gradient is accumulated, and each bucket's all-reduce starts
  // as soon as its members are ready, buckets in order on every rank. average_gradients with
  // the watched list then starts the rest, waits and divides. Without options().overlap the
  // watch only keeps the buckets. The result equals average_gradients without a watch.
  void watch_gradients(const std::vector<torch::Tensor>& params);
  void arm_gradients(const std::vector<torch::Tensor>& roots);
  // Over every average_gradients so far.
  struct GradientStats {
    int64_t syncs = 0;    // average_gradients calls
    int64_t buckets = 0;  // all-reduces
    int64_t early = 0;    // of which started before average_gradients (during backward)
    double seconds = 0;   // in average_gradients: starting the rest, waiting (for slower ranks too), dividing
  };
  GradientStats gradient_stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// `modula train --nproc N`: starts N copies of argv (argv[0] is the program) on this machine
// with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set, forwards SIGINT/SIGTERM,
// and waits. When a rank fails, the others get SIGTERM (SIGKILL after grace_s).
struct LaunchOptions {
  int nproc = 1;
  std::vector<std::string> argv;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0 = a free port
  double grace_s = 5;
};
// Returns when every rank exited 0; throws TrainError naming the first rank that failed
// ("[distributed] rank 1 (pid 123) was killed by signal 9; stopped the other ranks").
void launch_local(const LaunchOptions& options);

}  // namespace modula::train
