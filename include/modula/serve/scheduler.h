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
//   auto mixed = modula::load_mixed(*model, {{"de", "adapters/de"}, {"fr", "adapters/fr"}});
//   modula::serve::Scheduler s(*model, &mixed, {});
//   auto g = s.submit({.prompt = ids, .module = "de", .options = o});
//   for (int64_t id; g->next(id);) use(id);       // g->finish(): Length, Stop, ...
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "modula/backbone/generate.h"
#include "modula/composition/mixed.h"

namespace modula::serve {

struct SchedulerOptions {
  int64_t max_batch = 8;    // rows decoded together
  int64_t max_queue = 256;  // requests waiting for a row; submit throws QueueFull beyond
  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

// The queue is full or the scheduler is stopping (HTTP: 503 with Retry-After).
struct QueueFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct GenRequest {
  std::vector<int64_t> prompt;        // token ids, not empty
  std::string module = kBaseAdapter;  // module set name of the mixed handle, or "__base__"
  GenerateOptions options;            // max_new_tokens, sampling, seed, stop_ids (e.g. eos)
};

enum class Finish { None, Length, Stop, Cancelled, Error };

// One request's tokens, from the decode loop to its consumer (any thread).
class Generation {
 public:
  // Blocks until a token is ready (true) or the request has ended with no token left (false).
  bool next(int64_t& token);
  // The consumer is gone (client disconnected, stop string hit): the row leaves the batch
  // at the next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  Finish finish() const;
  std::string error() const;  // Finish::Error's message
  int64_t prompt_tokens() const { return prompt_tokens_; }

  // The scheduler's side: a token is ready; the request ended (the first end wins).
  void push(int64_t token);
  void end(Finish f, const std::string& error = {});

 private:
  friend class Scheduler;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int64_t> tokens_;
  Finish finish_ = Finish::None;
  std::string error_;
  std::atomic<bool> cancelled_{false};
  int64_t prompt_tokens_ = 0;
};

struct SchedulerStats {
  int64_t waiting = 0, running = 0;  // now
  int64_t steps = 0;                 // decode steps so far
  int64_t max_rows = 0;              // largest batch decoded in one step
  int64_t mixed_steps = 0;           // steps whose rows used more than one module set
};

class Scheduler {
 public:
  // `mixed` (may be null: base model only) must outlive the scheduler; the scheduler owns
  // the model's forward from its own thread until stop().
  Scheduler(Backbone& model, const Adapter* mixed, SchedulerOptions options = {});
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Throws std::invalid_argument for a bad request (empty prompt, id outside the
  // vocabulary, unknown module set, prompt + max_new_tokens beyond the context), QueueFull
  // when the queue is full or the scheduler stopped.
  std::shared_ptr<Generation> submit(GenRequest request);
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

  Backbone& model_;
  const Adapter* mixed_;
  SchedulerOptions options_;
  torch::Device device_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Row>> waiting_;
  std::unique_ptr<Batch> batch_;
  SchedulerStats stats_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace modula::serve
