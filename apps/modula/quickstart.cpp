// The main job until training lands: build a tiny Llama from the bundled config and
// tokenizer, inspect it, and generate from it (greedy and sampled, streamed).
#include "commands.h"
#include "modula/backbone/generate.h"
#include "modula/backbone/registry.h"
#include "modula/text/stream_decoder.h"
#include "modula/util/fs.h"

#include <chrono>
#include <iostream>

namespace modula::cli {
namespace {

void stream(Backbone& model, const text::Tokenizer& tok, const std::string& prompt, const GenerateOptions& o) {
  text::StreamDecoder stream(tok);
  std::cout << "  " << prompt << std::flush;
  auto t0 = std::chrono::steady_clock::now();
  auto generated = generate(model, tok.encode(prompt, false), o, [&](int64_t id) {
    std::cout << stream.push(id) << std::flush;
    return true;
  });
  std::cout << stream.finish();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "\n  (" << generated.size() << " tokens, " << static_cast<int>(generated.size() / s) << " tok/s)\n";
}

}  // namespace

void add_quickstart(CLI::App& app) {
  auto* cmd = app.add_subcommand("quickstart", "Main job: build, inspect and generate with a bundled tiny model");
  static std::string assets = MODULA_ASSETS "/tiny-llama", out = "build/quickstart/tiny-llama";
  static uint64_t seed = 0;
  cmd->add_option("--assets", assets, "Folder with config.json + tokenizer.json")->capture_default_str();
  cmd->add_option("--out", out, "Where the initialised model folder is written")->capture_default_str();
  cmd->add_option("--seed", seed, "Initialisation and sampling seed")->capture_default_str();
  cmd->callback([] {
    auto config = io::load_hf_config(assets);
    auto model = create_backbone(config);
    init_weights(*model, config.raw.value("initializer_range", 0.02), seed);
    fs::make_dirs(out);
    save_backbone(*model, out);
    fs::copy_file(fs::join(assets, "tokenizer.json"), fs::join(out, "tokenizer.json"));
    std::cout << "modula quickstart: a tiny " << config.model_type << " (random weights, seed " << seed << ") written to "
              << out << "\n";
    auto loaded = load_backbone(out);  // round trip through safetensors + config.json
    int64_t params = 0;
    for (const auto& p : loaded->parameters()) params += p.numel();
    std::cout << "  layers " << config.num_hidden_layers << ", hidden " << config.hidden_size << ", heads "
              << config.num_attention_heads << "/" << config.num_key_value_heads << " (GQA), vocab " << config.vocab_size
              << ", parameters " << params << "\n";
    auto tok = text::Tokenizer::from_file(out);
    auto ids = tok->encode("Modular deep learning", false);
    std::cout << "  tokenize \"Modular deep learning\" ->";
    for (auto id : ids) std::cout << " " << id;
    std::cout << "\n\ngreedy:\n";
    GenerateOptions o;
    o.max_new_tokens = 24;
    stream(*loaded, *tok, "Modular deep learning", o);
    std::cout << "sampled (temperature 0.8, top-k 40, top-p 0.95, seed " << seed << "):\n";
    o.temperature = 0.8;
    o.top_k = 40;
    o.top_p = 0.95;
    o.seed = seed;
    stream(*loaded, *tok, "Modular deep learning", o);
    std::cout << "\nThe weights are random: the text is noise until a model is trained (modula train).\n";
  });
}

}  // namespace modula::cli
