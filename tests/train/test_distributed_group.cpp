// Distributed's collectives with 2 ranks as 2 threads of one process (gloo on loopback):
// the gradient average and its "has a gradient" flags, broadcast, uneven all-gather.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <thread>

#include "modula/train/config.h"
#include "modula/train/distributed.h"

using modula::train::Distributed;
using modula::train::DistributedOptions;

namespace {

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET, a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// Runs body(rank's group) on 2 threads; rethrows a failure of either.
void two_ranks(const std::function<void(Distributed&)>& body) {
  const int port = free_port();
  std::exception_ptr errors[2];
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      try {
        DistributedOptions o;
        o.rank = r, o.world_size = 2, o.master_port = port, o.timeout_s = 20, o.bucket_mb = 1e-4;  // ~100-byte buckets
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
    EXPECT_GE(d.gradient_seconds(), 0.0);
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(defined[r][0] && defined[r][1]);
    EXPECT_FALSE(defined[r][2]) << "rank " << r;
    EXPECT_TRUE(torch::allclose(after[r][0], torch::arange(40, torch::kFloat32) * 1.5));
    EXPECT_TRUE(torch::allclose(after[r][1], torch::full({3, 5}, 2.0)));
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
