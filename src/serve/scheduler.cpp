#include "modula/serve/scheduler.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "modula/util/error.h"

namespace modula::serve {
namespace {

constexpr std::string_view kSchedulerTag = "serve";

// Prepends n masked slots to keys/values [B, Hkv, S, D] (dim 2).
torch::Tensor pad_slots(const torch::Tensor& t, int64_t n) { return torch::constant_pad_nd(t, {0, 0, n, 0}, 0); }

void pad_cache(KVCache& cache, torch::Tensor& mask, int64_t n) {
  if (n <= 0) return;
  for (size_t l = 0; l < cache.keys.size(); ++l) {
    cache.keys[l] = pad_slots(cache.keys[l], n);
    cache.values[l] = pad_slots(cache.values[l], n);
  }
  mask = torch::constant_pad_nd(mask, {n, 0}, 0);
}

}  // namespace

void SchedulerOptions::validate() const {
  check(max_batch >= 1, kSchedulerTag, "max_batch must be >= 1 (got " + std::to_string(max_batch) + ")");
  check(max_queue >= 0, kSchedulerTag, "max_queue must be >= 0 (got " + std::to_string(max_queue) + ")");
}

// ---- Generation ----------------------------------------------------------------------

bool Generation::next(int64_t& token, TokenLogprob* logprob) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return !tokens_.empty() || finish_ != Finish::None; });
  if (tokens_.empty()) return false;
  token = tokens_.front();
  tokens_.pop_front();
  if (logprob) *logprob = std::move(logprobs_.front());
  logprobs_.pop_front();
  return true;
}

Generation::Wait Generation::next_until(int64_t& token, TokenLogprob* logprob,
                                        std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!cv_.wait_until(lk, deadline, [&] { return !tokens_.empty() || finish_ != Finish::None; })) return Wait::Timeout;
  if (tokens_.empty()) return Wait::Ended;
  token = tokens_.front();
  tokens_.pop_front();
  if (logprob) *logprob = std::move(logprobs_.front());
  logprobs_.pop_front();
  return Wait::Token;
}

Finish Generation::finish() const {
  std::lock_guard<std::mutex> lk(mu_);
  return finish_;
}

std::string Generation::error() const {
  std::lock_guard<std::mutex> lk(mu_);
  return error_;
}

void Generation::push(int64_t token, TokenLogprob logprob) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    tokens_.push_back(token);
    logprobs_.push_back(std::move(logprob));
  }
  cv_.notify_all();
}

void Generation::end(Finish f, const std::string& error) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (finish_ != Finish::None) return;
    finish_ = f;
    error_ = error;
  }
  cv_.notify_all();
}

// ---- Scheduler -----------------------------------------------------------------------

struct Scheduler::Row {
  GenRequest request;
  std::shared_ptr<Generation> gen;
  torch::Generator rng;
  KVCache cache;         // after prefill, until the row joins the batch: [1, Hkv, S, D]
  torch::Tensor mask;    // [1, S] int64, 0 = a slot the row does not attend to
  int64_t position = 0;  // position id of the next token
  int64_t last = 0;      // the token fed at the next step
  int64_t produced = 0;
  int64_t reserved = 0;  // cache slots counted against max_batch_tokens
  bool pinned = false;   // holds its module set in the pool

  // Samples from `logits` [V] (greedy: `argmax`, computed for the whole batch at once) and
  // hands the token over; false when the row is done.
  bool emit(const torch::Tensor& logits, int64_t argmax) {
    const int64_t token = request.options.temperature == 0 ? argmax : sample_next(logits, request.options, rng);
    TokenLogprob lp;
    if (request.logprobs >= 0) {
      auto lsm = torch::log_softmax(logits, 0);
      lp.logprob = lsm[token].item<double>();
      if (request.logprobs > 0) {
        auto [v, i] = lsm.topk(std::min<int64_t>(request.logprobs, lsm.size(0)));
        for (int64_t k = 0; k < v.size(0); ++k) lp.top.emplace_back(i[k].item<int64_t>(), v[k].item<double>());
      }
    }
    gen->push(token, std::move(lp));
    ++produced;
    last = token;
    const auto& stop = request.options.stop_ids;
    if (std::find(stop.begin(), stop.end(), token) != stop.end()) {
      gen->end(Finish::Stop);
      return false;
    }
    if (produced >= request.options.max_new_tokens) {
      gen->end(Finish::Length);
      return false;
    }
    return true;
  }
  bool done() const { return gen->finish() != Finish::None || gen->cancelled(); }
};

// The running rows: one KV cache [B, Hkv, S, D] whose rows are left-padded to a common S.
struct Scheduler::Batch {
  std::vector<std::unique_ptr<Row>> rows;
  KVCache cache;
  torch::Tensor mask;  // [B, S]
};

Scheduler::Scheduler(Backbone& model, ModulePool* pool, SchedulerOptions options)
    : model_(model), pool_(pool), options_(std::move(options)), device_(torch::kCPU), batch_(new Batch) {
  options_.validate();
  if (!model_.causal() || model_.head() != Head::CausalLM)
    throw_error(kSchedulerTag, "the model has no causal LM head (" + to_string(model_.head()) + ")");
  if (options_.max_batch_tokens == 0)
    options_.max_batch_tokens = options_.max_batch * std::max<int64_t>(1, model_.config().max_position_embeddings);
  device_ = model_.parameters().front().device();
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() { stop(); }

int64_t Scheduler::context_length() const { return model_.config().max_position_embeddings; }

std::shared_ptr<Generation> Scheduler::submit(GenRequest request) {
  const auto& c = model_.config();
  check(!request.prompt.empty(), kSchedulerTag, "the prompt is empty");
  for (auto id : request.prompt)
    check(id >= 0 && id < c.vocab_size, kSchedulerTag,
          "token id " + std::to_string(id) + " outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
  int64_t virtual_tokens = 0;
  if (request.module != kBaseAdapter) {
    if (!pool_) throw PoolError(404, "unknown module set '" + request.module + "' (no modules are served)");
    virtual_tokens = pool_->virtual_tokens(request.module);  // PoolError(404) naming an unknown set
  }
  request.options.validate();
  check(request.logprobs <= 20, kSchedulerTag,
        "logprobs must be at most 20 (got " + std::to_string(request.logprobs) + ")");
  const int64_t need = static_cast<int64_t>(request.prompt.size()) + virtual_tokens + request.options.max_new_tokens;
  if (c.max_position_embeddings > 0 && need > c.max_position_embeddings)
    throw_error(kSchedulerTag,
                "the prompt (" + std::to_string(request.prompt.size()) + " tokens" +
                    (virtual_tokens ? " + " + std::to_string(virtual_tokens) + " virtual" : std::string()) +
                    ") plus max_tokens (" + std::to_string(request.options.max_new_tokens) +
                    ") exceeds the model's context of " + std::to_string(c.max_position_embeddings) + " tokens");
  if (need > options_.max_batch_tokens)
    throw_error(kSchedulerTag, "the prompt plus max_tokens (" + std::to_string(need) +
                                   " tokens) exceeds the batch's token budget of " +
                                   std::to_string(options_.max_batch_tokens));
  auto row = std::make_unique<Row>();
  row->reserved = need;
  row->request = std::move(request);
  row->gen = std::make_shared<Generation>();
  row->gen->prompt_tokens_ = static_cast<int64_t>(row->request.prompt.size());
  auto gen = row->gen;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) throw QueueFull("[serve] the server is shutting down");
    if (static_cast<int64_t>(waiting_.size()) >= options_.max_queue)
      throw QueueFull("[serve] the queue is full (" + std::to_string(options_.max_queue) + " waiting requests)");
    waiting_.push_back(std::move(row));
    stats_.waiting = static_cast<int64_t>(waiting_.size());
  }
  cv_.notify_all();
  return gen;
}

void Scheduler::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void Scheduler::call(std::function<void()> task) {
  std::packaged_task<void()> t(std::move(task));
  auto done = t.get_future();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) throw QueueFull("[serve] the server is shutting down");
    tasks_.push_back(std::move(t));
  }
  cv_.notify_all();
  done.get();
}

bool Scheduler::drain(double seconds) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (waiting_.empty() && stats_.running == 0) return true;
    }
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void Scheduler::run_tasks() {
  for (;;) {
    std::packaged_task<void()> t;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (tasks_.empty()) return;
      t = std::move(tasks_.front());
      tasks_.pop_front();
    }
    t();  // its exception goes to the caller's future
  }
}

void Scheduler::release(Row& row) {
  if (row.pinned && pool_) pool_->release(row.request.module);
  row.pinned = false;
  std::lock_guard<std::mutex> lk(mu_);
  stats_.reserved_tokens -= row.reserved;
  row.reserved = 0;
}

void Scheduler::loop() {
  torch::NoGradGuard no_grad;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !tasks_.empty() || !waiting_.empty() || !batch_->rows.empty(); });
      if (stopping_) break;
    }
    run_tasks();
    admit();
    if (!batch_->rows.empty()) {
      step();
    } else {  // rows wait for module room or the token budget that only finished rows free: none run
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait_for(lk, std::chrono::milliseconds(5), [&] { return stopping_ || !tasks_.empty(); });
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& r : waiting_) r->gen->end(Finish::Cancelled, "the server is shutting down");
  for (auto& r : batch_->rows) r->gen->end(Finish::Cancelled, "the server is shutting down");
  for (auto& t : tasks_) t();  // each sees the stopped state through its own checks
  tasks_.clear();
  waiting_.clear();
  batch_.reset(new Batch);
  stats_.waiting = stats_.running = 0;
}

// Admits waiting rows in order while there is room (rows, token budget, module sets); a
// row that does not fit now keeps its place and the ones behind it may go first.
void Scheduler::admit() {
  std::deque<std::unique_ptr<Row>> deferred;
  while (static_cast<int64_t>(batch_->rows.size()) < options_.max_batch) {
    std::unique_ptr<Row> row;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (waiting_.empty()) break;
      row = std::move(waiting_.front());
      waiting_.pop_front();
    }
    if (row->gen->cancelled()) {
      row->gen->end(Finish::Cancelled);
      continue;
    }
    bool fits;
    {
      std::lock_guard<std::mutex> lk(mu_);
      fits = stats_.reserved_tokens + row->reserved <= options_.max_batch_tokens;
    }
    if (fits && row->request.module != kBaseAdapter) {
      try {
        fits = row->pinned = pool_->acquire(row->request.module);
      } catch (const std::exception& e) {
        row->gen->end(Finish::Error, std::string("cannot load the module set: ") + e.what());
        continue;
      }
    }
    if (!fits) {
      deferred.push_back(std::move(row));
      continue;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.reserved_tokens += row->reserved;
    }
    row = prefill(std::move(row));
    if (row) join(std::move(row));
  }
  std::lock_guard<std::mutex> lk(mu_);
  while (!deferred.empty()) {
    waiting_.push_front(std::move(deferred.back()));
    deferred.pop_back();
  }
  stats_.waiting = static_cast<int64_t>(waiting_.size());
}

// The prompt alone (B = 1) through the row's module set; the first token comes from it.
std::unique_ptr<Scheduler::Row> Scheduler::prefill(std::unique_ptr<Row> row) {
  try {
    const auto& r = row->request;
    row->rng = at::detail::createCPUGenerator(r.options.seed);
    if (r.options.max_new_tokens <= 0) {
      row->gen->end(Finish::Length);
      release(*row);
      return nullptr;
    }
    BackboneInput in;
    in.input_ids = torch::tensor(r.prompt, torch::kInt64).view({1, -1}).to(device_);
    in.cache = &row->cache;
    if (const Adapter* mixed = pool_ ? pool_->mixed() : nullptr) {
      set_row_modules(*mixed, {r.module});
      KVCache unused;  // `in` has a cache
      if (mixed->input) mixed->input->prepare(model_, in, unused);
    }
    auto logits = model_.forward(in).logits.select(1, -1).to(torch::kFloat32).cpu();  // [1, V]
    const int64_t S = row->cache.length();
    row->mask = in.attention_mask.defined() ? in.attention_mask.to(torch::kInt64)
                                            : torch::ones({1, S}, torch::dtype(torch::kInt64).device(device_));
    if (row->mask.size(1) != S)
      throw_error(kSchedulerTag, "internal: prefill mask covers " + std::to_string(row->mask.size(1)) + " of " +
                                     std::to_string(S) + " cache slots");
    row->position = in.position_ids.defined() ? in.position_ids[0][-1].item<int64_t>() + 1 : S;
    {
      std::lock_guard<std::mutex> lk(mu_);
      ++stats_.prefills;
    }
    if (!row->emit(logits[0], logits[0].argmax().item<int64_t>())) {
      release(*row);
      return nullptr;
    }
    return row;
  } catch (const std::exception& e) {
    row->gen->end(Finish::Error, e.what());
    release(*row);
    return nullptr;
  }
}

void Scheduler::join(std::unique_ptr<Row> row) {
  auto& b = *batch_;
  if (b.rows.empty()) {
    b.cache = std::move(row->cache);
    b.mask = row->mask;
  } else {
    const int64_t S = b.cache.length(), s = row->cache.length();
    pad_cache(row->cache, row->mask, S - s);
    pad_cache(b.cache, b.mask, s - S);
    for (size_t l = 0; l < b.cache.keys.size(); ++l) {
      b.cache.keys[l] = torch::cat({b.cache.keys[l], row->cache.keys[l]}, 0);
      b.cache.values[l] = torch::cat({b.cache.values[l], row->cache.values[l]}, 0);
    }
    b.mask = torch::cat({b.mask, row->mask}, 0);
  }
  row->cache = KVCache();
  row->mask = torch::Tensor();
  b.rows.push_back(std::move(row));
  std::lock_guard<std::mutex> lk(mu_);
  stats_.running = static_cast<int64_t>(b.rows.size());
}

// One decode step: every running row's last token, one forward, one token per row.
void Scheduler::step() {
  auto& b = *batch_;
  const auto B = static_cast<int64_t>(b.rows.size());
  std::vector<int64_t> last, position;
  std::vector<std::string> names;
  for (const auto& r : b.rows) {
    last.push_back(r->last);
    position.push_back(r->position);
    names.push_back(r->request.module);
  }
  try {
    BackboneInput in;
    in.input_ids = torch::tensor(last, torch::kInt64).view({B, 1}).to(device_);
    in.position_ids = torch::tensor(position, torch::kInt64).view({B, 1}).to(device_);
    in.attention_mask = torch::cat({b.mask, torch::ones({B, 1}, b.mask.options())}, 1);
    in.cache = &b.cache;
    if (const Adapter* mixed = pool_ ? pool_->mixed() : nullptr) set_row_modules(*mixed, names);
    auto logits = model_.forward(in).logits.select(1, -1).to(torch::kFloat32).cpu();  // [B, V]
    const auto argmax = logits.argmax(1).contiguous();  // [B]: every greedy row's token, one kernel
    const auto* best = argmax.data_ptr<int64_t>();
    b.mask = in.attention_mask;
    for (int64_t i = 0; i < B; ++i) {
      auto& r = *b.rows[static_cast<size_t>(i)];
      ++r.position;
      if (!r.done()) r.emit(logits[i], best[i]);
    }
  } catch (const std::exception& e) {  // a failed forward ends the rows it held, not the server
    for (auto& r : b.rows) r->gen->end(Finish::Error, e.what());
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.steps;
    stats_.rows += B;
    stats_.max_rows = std::max(stats_.max_rows, B);
    const auto sets = static_cast<int64_t>(std::set<std::string>(names.begin(), names.end()).size());
    stats_.max_sets = std::max(stats_.max_sets, sets);
    if (sets > 1) ++stats_.mixed_steps;
  }
  leave();
}

// Finished or cancelled rows leave; slots no remaining row attends to are dropped.
void Scheduler::leave() {
  auto& b = *batch_;
  std::vector<int64_t> keep;
  std::vector<std::unique_ptr<Row>> rows;
  for (size_t i = 0; i < b.rows.size(); ++i) {
    auto& r = b.rows[i];
    if (r->gen->cancelled()) r->gen->end(Finish::Cancelled);
    if (r->gen->finish() != Finish::None) {
      release(*r);
      continue;
    }
    keep.push_back(static_cast<int64_t>(i));
    rows.push_back(std::move(r));
  }
  const bool changed = rows.size() != b.rows.size();
  b.rows = std::move(rows);
  if (changed) {
    if (b.rows.empty()) {
      b.cache = KVCache();
      b.mask = torch::Tensor();
    } else {
      auto index = torch::tensor(keep, torch::kInt64).to(device_);
      b.cache.select_rows(index);
      b.mask = b.mask.index_select(0, index);
      const int64_t lead = (b.mask.sum(0) > 0).nonzero()[0][0].item<int64_t>();
      if (lead > 0) {
        for (size_t l = 0; l < b.cache.keys.size(); ++l) {
          b.cache.keys[l] = b.cache.keys[l].narrow(2, lead, b.cache.keys[l].size(2) - lead);
          b.cache.values[l] = b.cache.values[l].narrow(2, lead, b.cache.values[l].size(2) - lead);
        }
        b.mask = b.mask.narrow(1, lead, b.mask.size(1) - lead);
      }
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  stats_.running = static_cast<int64_t>(b.rows.size());
}

}  // namespace modula::serve
