#include "modula/backbone/generate.h"

#include <iostream>

#include "commands.h"
#include "flags.h"
#include "modula/backbone/registry.h"
#include "modula/composition/apply_spec.h"
#include "modula/composition/composition_module.h"
#include "modula/composition/registry.h"
#include "modula/modules/bitfit.h"
#include "modula/modules/hypernetwork.h"
#include "modula/modules/sparse_ft.h"
#include "modula/text/stream_decoder.h"
#include "modula/util/error.h"
#include "modula/util/fs.h"

namespace modula::cli {
namespace {

// "NAME=VALUE" pairs of --module / --meta.
std::map<std::string, std::string> named(const std::vector<std::string>& pairs, const std::string& option) {
  std::map<std::string, std::string> out;
  for (const auto& p : pairs) {
    auto eq = p.find('=');
    if (eq == std::string::npos || eq == 0) throw_error("generate", option + " '" + p + "': expected NAME=VALUE");
    out[p.substr(0, eq)] = p.substr(eq + 1);
  }
  return out;
}

}  // namespace

void add_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate text with a causal LM, streaming tokens as they come");
  static std::string model_dir, prompt, tokenizer_path, device = "cpu";
  static std::vector<int64_t> prompt_ids;
  static std::vector<std::string> adapter_specs, module_specs, meta_specs;
  static std::string compose;
  static int64_t task = 0;
  static GenerateOptions o;
  static bool ignore_eos = false;
  flags::model(*cmd, model_dir)->required();
  cmd->add_option("--prompt,-p", prompt, "Prompt text (needs a tokenizer)");
  cmd->add_option("--prompt-ids", prompt_ids, "Prompt as comma-separated ids; prints ids")
      ->delimiter(',')
      ->check(flags::token_id());
  flags::adapters(*cmd, adapter_specs);
  cmd->add_option("--compose", compose,
                  "Composition spec over --module names, e.g. 'stack(lang, fuse(a, b))', or a trained composition "
                  "folder (MODULA_COMPOSITION, e.g. a run's out/compose) over them (docs/composition.md)");
  cmd->add_option("--module", module_specs,
                  "NAME=DIR: a module folder the --compose spec (or composition folder) names; repeatable")
      ->needs("--compose");
  cmd->add_option("--meta", meta_specs,
                  "KEY=ID: routing id of the prompt for route(KEY, ...) and modules with routing_key KEY; repeatable");
  cmd->add_option("--tokenizer,-t", tokenizer_path, "Tokenizer file or folder (default: the model folder)");
  cmd->add_option("--max-new-tokens,-n", o.max_new_tokens, "Tokens to generate")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--temperature", o.temperature, "0 = greedy")
      ->check(flags::finite_range(0, 1e6))
      ->capture_default_str();
  cmd->add_option("--top-k", o.top_k, "Keep the k most likely tokens (0 = off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--top-p", o.top_p, "Nucleus mass (1 = off)")
      ->check(flags::finite_range(0, 1))
      ->capture_default_str();
  cmd->add_option("--seed", o.seed, "Sampling seed")->capture_default_str();
  flags::device(*cmd, device)->capture_default_str();
  flags::task_id(*cmd, task)->capture_default_str();
  cmd->add_flag("--ignore-eos", ignore_eos, "Keep going after the end-of-sequence token");
  cmd->callback([] {
    LoadOptions lo;
    lo.device = torch::Device(device);
    auto model = load_backbone(model_dir, lo);
    // Metadata every routed module reads (POLY and hypernetworks: the task of the one row).
    auto context = std::make_shared<RoutingContext>();
    context->set("task", torch::tensor({task}, torch::kInt64).to(lo.device));
    auto modules = load_module_folders(*model, adapter_specs, task, context);
    if (compose.empty() && !module_specs.empty()) throw_error("generate", "--module needs --compose");
    Composition composition;
    std::vector<Adapter> composed;  // --compose DIR: the members, then the trained composition (last)
    if (!compose.empty() && fs::is_file(fs::join(compose, "adapter_config.json"))) {
      const auto members = named(module_specs, "--module");
      composed.reserve(members.size() + 1);  // the composition keeps pointers to the members
      ModuleEnv env;
      env.context = context;
      for (const auto& [name, dir] : members) {
        env.name = name;
        composed.push_back(load_module(*model, dir, env));
        env.members[name] = &composed.back();
      }
      env.name = "compose";
      composed.push_back(load_module(*model, compose, env));
    } else if (!compose.empty()) {
      composition = apply_spec(*model, parse_spec(compose), named(module_specs, "--module"));
      for (const auto& part : composition.untrained)
        std::cerr << "warning: [compose] " << part
                  << ": generating with it untrained (train the composition with `modula train` and "
                     "'compose:', then pass its out/compose folder)\n";
    }
    for (const auto& [key, id] : named(meta_specs, "--meta")) {
      char* end = nullptr;
      const long long value = std::strtoll(id.c_str(), &end, 10);
      if (id.empty() || *end || value < 0)
        throw_error("generate", "--meta " + key + "=" + id + ": the id must be a non-negative integer");
      composition.context->set(key, torch::tensor({static_cast<int64_t>(value)}, torch::kInt64));
      context->set(key, torch::tensor({static_cast<int64_t>(value)}, torch::kInt64).to(lo.device));
    }
    PrepareInput prepare = [&](BackboneInput& in) {
      KVCache unused;  // generate() supplies the cache
      for (auto& a : modules)
        if (a.input) a.input->prepare(*model, in, unused);
      composition.prepare(*model, in);
      if (!composed.empty() && composed.back().input) composed.back().input->prepare(*model, in, unused);
    };
    std::unique_ptr<text::Tokenizer> tok;
    std::string tpath = tokenizer_path.empty() ? model_dir : tokenizer_path;
    bool has_tokenizer = !tokenizer_path.empty() || fs::exists(fs::join(model_dir, "tokenizer.json")) ||
                         fs::exists(fs::join(model_dir, "tokenizer.model"));
    // --prompt-ids works on ids end to end: it prints ids, not text.
    if (has_tokenizer && prompt_ids.empty()) tok = text::Tokenizer::from_file(tpath);
    std::vector<int64_t> ids = prompt_ids;
    if (ids.empty()) {
      if (!tok) throw_error("generate", "no tokenizer in " + model_dir + ": pass --tokenizer or --prompt-ids");
      ids = tok->encode(prompt, false);
    }
    if (!ignore_eos) o.stop_ids = model->config().eos_token_ids;
    std::cout << (tok ? prompt : "") << std::flush;
    std::unique_ptr<text::StreamDecoder> stream;
    if (tok) stream = std::make_unique<text::StreamDecoder>(*tok);
    bool first = true;
    generate(
        *model, ids, o,
        [&](int64_t id) {
          if (stream)
            std::cout << stream->push(id) << std::flush;
          else
            std::cout << (first ? "" : " ") << id << std::flush;
          first = false;
          return true;
        },
        prepare);
    if (stream) std::cout << stream->finish();
    std::cout << "\n";
  });
}

}  // namespace modula::cli
