// The module sets a server routes rows to, by name: folders given at start (--adapter
// NAME=DIR), loaded later (load_lora_adapter), found by name under an --adapter-dir, and
// composition specs over those names ("stack(lang_de, task_ner)"). At most max_resident
// sets are in the model at once; the least recently used leaves first, never one that a
// running row uses. The resident sets form one mixed handle (composition/mixed.h), rebuilt
// when the resident set changes, so each decode step stays one forward for every row.
//
//   modula::serve::ModulePool pool(*model, {.adapter_dirs = {"adapters"}, .max_resident = 16});
//   pool.add("de", "adapters/de");
//   auto set = pool.resolve("stack(de, ner)");  // 404 / 400 as PoolError
//   // scheduler thread: pool.acquire(set) ... set_row_modules(*pool.mixed(), ...) ... pool.release(set)
//
// Threads: the catalogue (add, remove, resolve, names) is safe from any thread; acquire,
// release and mixed() belong to the scheduler's thread (they change the model).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "modula/backbone/backbone.h"
#include "modula/composition/spec.h"
#include "modula/modules/adapter.h"

namespace modula::serve {

struct PoolOptions {
  std::vector<std::string> adapter_dirs;  // module folders served by their folder name; load paths must lie inside
  int64_t max_resident = 32;              // module sets in the model at once
  // LoRA weights of the resident sets stored in this dtype (store_banks_as, mixed.h):
  // "" = the model's; "bfloat16" halves their memory and what a decode step reads, "int8"
  // (one scale per matrix row) quarters it.
  std::string adapter_dtype;
  void validate() const;  // std::invalid_argument naming the bad field
};

// What a name or path cannot be: status 404 (unknown), 400 (malformed, not allowed).
struct PoolError : std::runtime_error {
  PoolError(int status, const std::string& message) : std::runtime_error(message), status(status) {}
  int status;
};

struct PoolStats {
  int64_t resident = 0;  // sets in the model now
  int64_t loads = 0;     // rebuilds of the mixed handle
  int64_t evictions = 0;
};

class ModulePool {
 public:
  ModulePool(Backbone& model, PoolOptions options);
  ~ModulePool();
  ModulePool(const ModulePool&) = delete;
  ModulePool& operator=(const ModulePool&) = delete;

  // Catalogues a module folder under `name` (letters, digits, '_', '-', ':', '.'; ≤ 128).
  // Throws PoolError(400) for a bad or taken name, a folder without adapter_config.json.
  void add(const std::string& name, const std::string& dir);
  // As add, for a path a client sent: it must resolve (symlinks too) inside an adapter_dir.
  void add_allowed(const std::string& name, const std::string& path);
  // Takes a name out of the catalogue (PoolError(404) if unknown); its resident copy leaves
  // once no row uses it.
  void remove(const std::string& name);
  // The set a request's model id names: a catalogued name, a folder under an adapter dir,
  // or a composition spec over those (its canonical text). PoolError 404 / 400.
  std::string resolve(const std::string& model);
  std::vector<std::string> names() const;  // catalogued folders, in the order added
  // Prompt / prefix tokens the set puts before the prompt (its folders' num_virtual_tokens).
  int64_t virtual_tokens(const std::string& set) const;

  // Scheduler thread. Makes `set` resident and pins it: true; false when every resident
  // set is in use and there is no room now. Throws std::invalid_argument / runtime_error
  // naming the folder when it cannot be loaded or mixed (the other sets stay resident).
  bool acquire(const std::string& set);
  void release(const std::string& set);
  const Adapter* mixed() const { return mixed_.get(); }  // null when nothing is resident
  PoolStats stats() const;

 private:
  struct Entry {
    std::string dir;  // a folder, or
    SpecNode spec;    // a composition (kind != Module)
    bool composition = false;
    int64_t virtual_tokens = 0;
  };
  Entry entry(const std::string& set) const;  // PoolError(404) when gone
  std::string allowed_dir(const std::string& name) const;
  void rebuild(const std::vector<std::string>& sets);
  Adapter load_set(const std::string& set, int64_t id);

  Backbone& model_;
  PoolOptions options_;
  mutable std::mutex mu_;  // catalogue_, order_
  std::map<std::string, Entry> catalogue_;
  std::vector<std::string> order_;
  std::set<std::string> in_model_;  // resident now (the catalogue keeps their entries)
  // Scheduler thread:
  std::vector<std::string> resident_;  // least recently used first
  std::map<std::string, int64_t> pins_;
  std::unique_ptr<Adapter> mixed_;
  int64_t next_id_ = 0;
  std::atomic<int64_t> resident_count_{0}, loads_{0}, evictions_{0};
};

}  // namespace modula::serve
