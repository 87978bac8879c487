// Continuous batching over one backbone: requests wait in a queue, a decode loop admits
// them at every step (up to max_batch rows), each row routed to its own module set of one
// mixed handle (composition/mixed.h), and finished rows leave the batch. One forward per
// decode step for all rows, whatever their modules; no loop over adapters.
//
// Shapes: B rows in the batch, S cache slots (left padding per row, masked), V vocab.
//
// Each new request is prefilled alone (B = 1, its module set's input module applied), then
// joins the running batch: its KV cache is left-padded to the batch's length (or the batch
// to its), the padding masked out and every row given its own position ids, so each row
// equals that request run alone with modula::generate (greedy: token for token).
//
// The module sets come from a ModulePool (module_pool.h): a row's set is made resident
// when the row is admitted (a row whose set finds no room waits; the others go ahead) and
// is held until the row leaves.
//
//   modula::serve::ModulePool pool(*model, {});
//   pool.add("de", "adapters/de");  pool.add("fr", "adapters/fr");
//   modula::serve::Scheduler s(*model, &pool, {});
//   auto g = s.submit({.prompt = ids, .module = "de", .options = o});
//   for (int64_t id; g->next(id);) use(id);       // g->finish(): Length, Stop, ...
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "modula/backbone/generate.h"
#include "modula/composition/mixed.h"
#include "modula/serve/module_pool.h"

namespace modula::serve {

struct SchedulerOptions {
  int64_t max_batch = 8;    // rows decoded together
  int64_t max_queue = 256;  // requests waiting for a row; submit throws QueueFull beyond
  // Cache slots the running rows may reserve together (each row: prompt + virtual tokens +
  // max_new_tokens); a request that would pass it waits. 0 = max_batch × the context.
  int64_t max_batch_tokens = 0;
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

// The queue is full or the scheduler is stopping (HTTP: 503 with Retry-After).
struct QueueFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct GenRequest {
  std::vector<int64_t> prompt;        // token ids, not empty
  std::string module = kBaseAdapter;  // a module set of the pool (ModulePool::resolve), or "__base__"
  GenerateOptions options;            // max_new_tokens, sampling, seed, stop_ids (e.g. eos)
  int64_t logprobs = -1;              // >= 0: each token's log-probability and this many top alternatives
};

// A token's log-probability under the model's distribution (before temperature / top-p)
// and the most likely alternatives at that step, best first.
struct TokenLogprob {
  double logprob = 0;
  std::vector<std::pair<int64_t, double>> top;
};

enum class Finish { None, Length, Stop, Cancelled, Error };

// One request's tokens, from the decode loop to its consumer (any thread).
class Generation {
 public:
  // Blocks until a token is ready (true) or the request has ended with no token left (false).
  bool next(int64_t& token, TokenLogprob* logprob = nullptr);
  enum class Wait { Token, Ended, Timeout };
  // As next, waiting at most until `deadline`.
  Wait next_until(int64_t& token, TokenLogprob* logprob, std::chrono::steady_clock::time_point deadline);
  // The consumer is gone (client disconnected, stop string hit): the row leaves the batch
  // at the next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  Finish finish() const;
  std::string error() const;  // Finish::Error's message
  int64_t prompt_tokens() const { return prompt_tokens_; }

  // The scheduler's side: a token is ready; the request ended (the first end wins).
  void push(int64_t token, TokenLogprob logprob = {});
  void end(Finish f, const std::string& error = {});

 private:
  friend class Scheduler;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int64_t> tokens_;
  std::deque<TokenLogprob> logprobs_;
  Finish finish_ = Finish::None;
  std::string error_;
  std::atomic<bool> cancelled_{false};
  int64_t prompt_tokens_ = 0;
};

struct SchedulerStats {
  int64_t waiting = 0, running = 0;  // now
  int64_t steps = 0;                 // decode steps so far
  int64_t rows = 0;                  // rows decoded, summed over steps (rows / steps = mean batch)
  int64_t max_rows = 0;              // largest batch decoded in one step
  int64_t mixed_steps = 0;           // steps whose rows used more than one module set
  int64_t max_sets = 0;              // most distinct module sets in one step
  int64_t prefills = 0;
  int64_t reserved_tokens = 0;  // cache slots the running rows reserve now
};

class Scheduler {
 public:
  // `pool` (may be null: base model only) must outlive the scheduler; the scheduler owns
  // the model's forward (and the pool's acquire/release) from its own thread until stop().
  Scheduler(Backbone& model, ModulePool* pool, SchedulerOptions options = {});
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Throws std::invalid_argument for a bad request (empty prompt, id outside the
  // vocabulary, prompt + max_new_tokens beyond the context), PoolError for an unknown
  // module set, QueueFull when the queue is full or the scheduler stopped.
  std::shared_ptr<Generation> submit(GenRequest request);
  // Runs `task` on the decode loop's thread between two steps (e.g. a pool change that
  // touches the model) and waits for it; rethrows what it throws.
  void call(std::function<void()> task);
  // Waits until no request is waiting or running (true), or `seconds` passed (false).
  bool drain(double seconds);
  // Ends every waiting and running request (Finish::Cancelled) and joins the loop.
  void stop();
  SchedulerStats stats() const;
  int64_t context_length() const;  // the model's max_position_embeddings

 private:
  struct Row;
  struct Batch;
  void loop();
  void admit();
  void step();
  std::unique_ptr<Row> prefill(std::unique_ptr<Row> row);
  void join(std::unique_ptr<Row> row);
  void leave();
  void release(Row& row);
  void run_tasks();

  Backbone& model_;
  ModulePool* pool_;
  SchedulerOptions options_;
  torch::Device device_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Row>> waiting_;
  std::deque<std::packaged_task<void()>> tasks_;
  std::unique_ptr<Batch> batch_;
  SchedulerStats stats_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace modula::serve
