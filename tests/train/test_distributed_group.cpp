// Distributed's collectives with 2 ranks as 2 threads of one process (gloo on loopback):
// the gradient average and its "has a gradient" flags, its overlap with backward (buckets
// started by hooks, the same result), broadcast, uneven all-gather.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <thread>

#include "modula/train/config.h"
#include "modula/train/distributed.h"
#include "support/process.h"

using modula::testing::free_port;
using modula::train::Distributed;
using modula::train::DistributedOptions;

namespace {

// Runs body(rank's group) on 2 threads; rethrows a failure of either.
void two_ranks(const std::function<void(Distributed&)>& body, bool overlap = true) {
  const int port = free_port();
  std::exception_ptr errors[2];
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      try {
        DistributedOptions o;
        o.rank = r, o.world_size = 2, o.master_port = port, o.timeout_s = 20, o.bucket_mb = 1e-4;  // ~100-byte buckets
        o.overlap = overlap;
        Distributed d(o, torch::kCPU);
        body(d);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace

TEST(DistributedGroup, AverageGradientsKeepsOnesNoRankHas) {
  std::vector<torch::Tensor> after[2];
  bool defined[2][3];
  two_ranks([&](Distributed& d) {
    const int r = d.rank();
    auto p1 = torch::zeros({40}, torch::requires_grad());    // both ranks: mean
    auto p2 = torch::zeros({3, 5}, torch::requires_grad());  // rank 1 only: half of it
    auto p3 = torch::zeros({7}, torch::requires_grad());     // none: stays without gradient
    p1.mutable_grad() = torch::arange(40, torch::kFloat32) * (r + 1);
    if (r == 1) p2.mutable_grad() = torch::full({3, 5}, 4.0);
    d.average_gradients({p1, p2, p3});
    defined[r][0] = p1.grad().defined(), defined[r][1] = p2.grad().defined(), defined[r][2] = p3.grad().defined();
    after[r] = {p1.grad().clone(), defined[r][1] ? p2.grad().clone() : torch::Tensor()};
    EXPECT_GE(d.gradient_stats().seconds, 0.0);
    EXPECT_EQ(d.gradient_stats().early, 0);  // no watch: every bucket starts in average_gradients
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(defined[r][0] && defined[r][1]);
    EXPECT_FALSE(defined[r][2]) << "rank " << r;
    EXPECT_TRUE(torch::allclose(after[r][0], torch::arange(40, torch::kFloat32) * 1.5));
    EXPECT_TRUE(torch::allclose(after[r][1], torch::full({3, 5}, 2.0)));
  }
}

namespace {

// Two optimizer steps of two accumulated micro-batches through a small chain of parameters,
// with rank-dependent inputs; a parameter only rank 1 uses, one no rank uses.
struct Chain {
  std::vector<torch::Tensor> params;
  Chain() {
    params.push_back(torch::zeros({3}, torch::requires_grad()));  // none
    params.push_back(torch::ones({4}, torch::requires_grad()));   // rank 1 only
    for (int64_t i = 0; i < 4; ++i)
      params.push_back((torch::arange(16, torch::kFloat32).view({4, 4}) / (10.0 + i)).requires_grad_());
  }
  torch::Tensor loss(int rank, int64_t step, int64_t micro) const {
    auto h = torch::full({2, 4}, 0.1 * (rank + 1) + 0.01 * static_cast<double>(step * 2 + micro));
    for (int i = 2; i < 6; ++i) h = torch::tanh(h.matmul(params[i]));
    auto l = h.pow(2).sum();
    return rank == 1 ? l + (h * params[1]).sum() : l;
  }
};

// Runs the steps; returns every parameter's gradient after each step's average (undefined
// when it has none) and the stats.
std::pair<std::vector<torch::Tensor>, Distributed::GradientStats> chain_steps(Distributed& d, bool watch) {
  Chain c;
  if (watch) d.watch_gradients(c.params);
  std::vector<torch::Tensor> out;
  for (int64_t step = 0; step < 2; ++step) {
    for (auto& p : c.params) p.mutable_grad() = torch::Tensor();
    for (int64_t micro = 0; micro < 2; ++micro) {
      auto loss = c.loss(d.rank(), step, micro);
      if (watch && micro == 1) d.arm_gradients({loss});
      loss.backward();
    }
    d.average_gradients(c.params);
    for (auto& p : c.params) out.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
  }
  if (watch) d.watch_gradients({});
  return {out, d.gradient_stats()};
}

// The same steps in one process without averaging: each step's accumulated gradients.
std::vector<torch::Tensor> local_steps(int rank) {
  Chain c;
  std::vector<torch::Tensor> out;
  for (int64_t step = 0; step < 2; ++step) {
    for (auto& p : c.params) p.mutable_grad() = torch::Tensor();
    for (int64_t micro = 0; micro < 2; ++micro) c.loss(rank, step, micro).backward();
    for (auto& p : c.params) out.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  }
  return out;
}

}  // namespace

TEST(DistributedGroup, OverlappedAverageStartsBucketsDuringBackwardAndEqualsThePlainOne) {
  for (bool overlap : {true, false}) {
    std::vector<torch::Tensor> plain[2], hooked[2];
    Distributed::GradientStats stats[2];
    two_ranks(
        [&](Distributed& d) {
          const int r = d.rank();
          auto [a, sa] = chain_steps(d, false);
          auto [b, sb] = chain_steps(d, true);
          plain[r] = a, hooked[r] = b;
          stats[r] = sb;
          stats[r].early -= sa.early, stats[r].buckets -= sa.buckets, stats[r].syncs -= sa.syncs;
        },
        overlap);
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(plain[r].size(), hooked[r].size());
      for (size_t i = 0; i < plain[r].size(); ++i) {
        const bool none = i % 6 == 0;  // the parameter no rank uses
        ASSERT_EQ(plain[r][i].defined(), !none) << "rank " << r << " tensor " << i;
        ASSERT_EQ(hooked[r][i].defined(), !none) << "rank " << r << " tensor " << i;
        if (none) continue;
        EXPECT_TRUE(torch::equal(plain[r][i], hooked[r][i])) << "rank " << r << " tensor " << i;
        EXPECT_TRUE(torch::equal(plain[r][i], plain[1 - r][i]));
        EXPECT_TRUE(torch::allclose(hooked[r][i], (local_steps(0)[i] + local_steps(1)[i]) / 2.0));
      }
      EXPECT_EQ(stats[r].syncs, 2);
      EXPECT_EQ(stats[r].buckets, 2 * 4);
      // Reverse order, ~100-byte buckets: {p5} {p4} {p3} {p2, p1, p0}. p0 (and p1 on rank 0)
      // cannot be reached from the loss: ready at arm_gradients, so the last bucket starts
      // when p2's gradient is accumulated; every bucket starts during the last backward.
      if (overlap)
        EXPECT_EQ(stats[r].early, stats[r].buckets) << "rank " << r;
      else
        EXPECT_EQ(stats[r].early, 0);
    }
  }
}

// Armed too early (before a micro-batch that is not the last), a bucket would be sent before
// its gradients are final: the next accumulation into it is caught, not averaged silently.
TEST(DistributedGroup, GradientAccumulatedAfterItsBucketWasSentIsAnError) {
  try {
    two_ranks([&](Distributed& d) {
      Chain c;
      d.watch_gradients(c.params);
      auto first = c.loss(d.rank(), 0, 0);
      d.arm_gradients({first});
      first.backward();
      c.loss(d.rank(), 0, 1).backward();
      d.average_gradients(c.params);
    });
    FAIL() << "no error";
  } catch (const modula::train::TrainError& e) {
    EXPECT_NE(std::string(e.what()).find("accumulated after its bucket was sent"), std::string::npos) << e.what();
  }
}

TEST(DistributedGroup, BroadcastAndUnevenAllGather) {
  torch::Tensor got[2], gathered[2], reduced[2];
  two_ranks([&](Distributed& d) {
    const int r = d.rank();
    auto a = torch::full({2, 3}, static_cast<float>(r + 10)), b = torch::full({4}, static_cast<int64_t>(r));
    d.broadcast({a, b});
    got[r] = torch::cat({a.reshape({-1}), b.to(torch::kFloat32)});
    gathered[r] = d.all_gather(torch::full({r == 0 ? 1 : 3}, static_cast<int64_t>(r + 1)));
    auto m = torch::tensor({static_cast<int64_t>(r * 5)});
    d.all_reduce(m, Distributed::Op::Max);
    reduced[r] = m;
  });
  auto want = torch::cat({torch::full({6}, 10.0f), torch::zeros({4})});
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(torch::equal(got[r], want)) << got[r];
    EXPECT_TRUE(torch::equal(gathered[r], torch::tensor({1, 2, 2, 2}, torch::kInt64))) << gathered[r];
    EXPECT_EQ(reduced[r].item<int64_t>(), 5);
  }
}

TEST(DistributedGroup, OptionsFromTheEnvironment) {
  unsetenv("RANK"), unsetenv("WORLD_SIZE");
  EXPECT_FALSE(DistributedOptions::from_env());
  setenv("RANK", "1", 1), setenv("WORLD_SIZE", "4", 1), setenv("MASTER_PORT", "29999", 1);
  auto o = DistributedOptions::from_env();
  ASSERT_TRUE(o);
  EXPECT_EQ(o->rank, 1);
  EXPECT_EQ(o->world_size, 4);
  EXPECT_EQ(o->local_rank, 1);
  EXPECT_EQ(o->master_port, 29999);
  setenv("RANK", "4", 1);
  EXPECT_THROW(DistributedOptions::from_env(), modula::train::TrainError);
  setenv("RANK", "x", 1);
  EXPECT_THROW(DistributedOptions::from_env(), modula::train::TrainError);
  unsetenv("RANK"), unsetenv("WORLD_SIZE"), unsetenv("MASTER_PORT");
}
