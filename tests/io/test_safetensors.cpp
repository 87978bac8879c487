// safetensors reader/writer/checkpoint: round trips, Python-written fixtures,
// zero-copy behaviour, a corruption matrix and atomic-write failures.
#include <dirent.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <sstream>

#include "modula/io/safetensors.h"

using namespace modula::io;

// Plain POSIX helpers rather than std::filesystem: pip's libtorch 2.x exports its own
// std::filesystem functions, which interpose on libstdc++'s (remove_all crashed there).
namespace {

const std::string kFixtures = MODULA_FIXTURES;
const std::string kLlama = kFixtures + "/hf/models/llama";

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) out.push_back(e->d_name);
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every regular file under `dir` whose name ends with `suffix`.
std::vector<std::string> find_files(const std::string& dir, const std::string& suffix) {
  std::vector<std::string> out;
  for (const auto& name : list_dir(dir)) {
    const std::string p = dir + "/" + name;
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      for (auto& f : find_files(p, suffix)) out.push_back(std::move(f));
    } else if (S_ISREG(st.st_mode) && name.size() >= suffix.size() &&
               name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      out.push_back(p);
    }
  }
  return out;
}

void remove_tree(const std::string& p) {
  struct stat st {};
  if (::lstat(p.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    ::chmod(p.c_str(), 0700);
    for (const auto& name : list_dir(p)) remove_tree(p + "/" + name);
    ::rmdir(p.c_str());
  } else {
    ::unlink(p.c_str());
  }
}

// A fresh directory under $TMPDIR (or /tmp), removed with its contents at scope exit.
struct TempDir {
  std::string path;
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/modula_st_XXXXXX";
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path = tmpl;
  }
  ~TempDir() { remove_tree(path); }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A file image: length prefix, header (space-padded to 8 bytes unless told not to), data.
std::string craft(std::string header, const std::string& data, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + data;
}

std::string bytes_of(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

bool same_bits(const torch::Tensor& a, const torch::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && bytes_of(a) == bytes_of(b);
}

std::vector<std::string> tmp_leftovers(const std::string& dir) { return find_files(dir, ".tmp"); }

// Expects `fn` to throw SafetensorsError whose message starts with the prefix and
// contains every needle (the file name among them).
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  EXPECT_THROW(fn(), SafetensorsError);
  try {
    fn();
  } catch (const SafetensorsError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("[safetensors] ", 0), 0u) << what;
    for (const auto& n : needles) EXPECT_NE(what.find(n), std::string::npos) << "'" << n << "' not in: " << what;
  } catch (...) {
  }
}

// Random values for every dtype, with specials (NaN, inf, -0, extremes) for bit-exactness.
torch::Tensor sample(torch::ScalarType dt, std::vector<int64_t> shape) {
  torch::Tensor t;
  if (torch::isFloatingType(dt)) {
    t = torch::randn(shape, torch::kFloat64).to(dt);
    if (t.numel() >= 3) {
      auto flat = t.view({-1});
      flat[0] = std::numeric_limits<double>::quiet_NaN();
      flat[1] = -std::numeric_limits<double>::infinity();
      flat[2] = -0.0;
    }
  } else if (dt == torch::kBool) {
    t = torch::randint(0, 2, shape, torch::kInt64).to(torch::kBool);
  } else if (dt == torch::kInt64) {
    t = torch::randint(-1000000000000LL, 1000000000000LL, shape, torch::kInt64);
    if (t.numel() >= 2) {
      t.view({-1})[0] = std::numeric_limits<int64_t>::min();
      t.view({-1})[1] = std::numeric_limits<int64_t>::max();
    }
  } else {
    const int64_t lo = dt == torch::kUInt8 ? 0 : (dt == torch::kInt8 ? -128 : -30000);
    const int64_t hi = dt == torch::kUInt8 ? 256 : (dt == torch::kInt8 ? 128 : 30000);
    t = torch::randint(lo, hi, shape, torch::kInt64).to(dt);
  }
  return t;
}

const std::vector<std::pair<std::string, torch::ScalarType>> kAllDtypes = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

}  // namespace

// ---------------------------------------------------------------- dtypes

TEST(Safetensors, DtypeNames) {
  for (const auto& [name, dt] : kAllDtypes) {
    EXPECT_EQ(dtype_from_string(name), dt);
    EXPECT_EQ(dtype_to_string(dt), name);
  }
  expect_error([] { dtype_from_string("F8_E4M3"); }, {"F8_E4M3"});
  expect_error([] { dtype_to_string(torch::kComplexFloat); }, {"unsupported dtype"});
}

// ---------------------------------------------------------------- round trips

TEST(Safetensors, RoundTripEveryDtypeBitExact) {
  TempDir dir;
  NamedTensors in;
  for (const auto& [name, dt] : kAllDtypes) {
    in.emplace_back(name + ".matrix", sample(dt, {3, 5}));
    in.emplace_back(name + ".scalar", sample(dt, {}));
    in.emplace_back(name + ".empty", sample(dt, {0, 4}));
    in.emplace_back(name + ".transposed", sample(dt, {4, 6}).t());
    in.emplace_back(name + ".strided", sample(dt, {7, 8}).slice(1, 1, 8, 3));
    in.emplace_back(name + ".expanded", sample(dt, {1, 3}).expand({4, 3}));
  }
  const std::string path = dir / "all.safetensors";
  save_safetensors(path, in);
  const SafetensorsFile f = SafetensorsFile::open(path);
  ASSERT_EQ(f.keys().size(), in.size());
  EXPECT_TRUE(f.metadata().empty());
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    const torch::Tensor got = f.get(name);
    EXPECT_TRUE(same_bits(got, t));
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_EQ(f.info(name).dtype, t.scalar_type());
    EXPECT_EQ(f.info(name).shape, t.sizes().vec());
  }
  EXPECT_EQ(f.get("F32.scalar").dim(), 0);
  EXPECT_EQ(f.get("I8.empty").numel(), 0);
  EXPECT_TRUE(tmp_leftovers(dir.path).empty());
}

TEST(Safetensors, MetadataRoundTripAndHeaderLayout) {
  TempDir dir;
  const std::string path = dir / "m.safetensors";
  const std::map<std::string, std::string> md = {{"format", "pt"}, {"note", "\"quoted\" \xc3\xa9"}};
  // Given order: a 1-byte tensor of odd size first, then wider ones.
  save_safetensors(path,
                   {{"z_u8", torch::arange(3, torch::kUInt8)},
                    {"a_f64", torch::arange(2, torch::kFloat64)},
                    {"m_f16", torch::ones({3}, torch::kFloat16)},
                    {"b_i32", torch::full({1}, 7, torch::kInt32)}},
                   md);
  const std::string raw = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(raw[i]);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = raw.substr(8, n);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\",\"note\":", 0), 0u) << header;
  EXPECT_LT(header.find("\"z_u8\""), header.find("\"a_f64\""));
  EXPECT_LT(header.find("\"a_f64\""), header.find("\"m_f16\""));
  EXPECT_LT(header.find("\"m_f16\""), header.find("\"b_i32\""));
  EXPECT_EQ(header.find_last_not_of(' '), header.find_last_of('}'));

  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata(), md);
  EXPECT_EQ(f.keys(), (std::vector<std::string>{"a_f64", "b_i32", "m_f16", "z_u8"}));
  // Data ordered by element size (stable): every tensor aligned, no gaps.
  EXPECT_EQ(f.info("a_f64").begin, 0u);
  EXPECT_EQ(f.info("b_i32").begin, 16u);
  EXPECT_EQ(f.info("m_f16").begin, 20u);
  EXPECT_EQ(f.info("z_u8").begin, 26u);
  EXPECT_EQ(raw.size(), 8 + n + 29);
  for (const auto& k : f.keys()) {
    const torch::Tensor t = f.get(k);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % t.element_size(), 0u) << k;
  }
  EXPECT_TRUE(same_bits(f.get("z_u8"), torch::arange(3, torch::kUInt8)));
}

TEST(Safetensors, EmptyFileAndEmptyHeader) {
  TempDir dir;
  save_safetensors(dir / "none.safetensors", {});
  EXPECT_EQ(read_bytes(dir / "none.safetensors"), le64(8) + "{}      ");
  EXPECT_TRUE(SafetensorsFile::open(dir / "none.safetensors").keys().empty());
  write_bytes(dir / "bare.safetensors", craft("{}", "", false));
  const SafetensorsFile f = SafetensorsFile::open(dir / "bare.safetensors");
  EXPECT_TRUE(f.keys().empty());
  EXPECT_FALSE(f.contains("x"));
  write_bytes(dir / "md.safetensors", craft(R"({"__metadata__":{"a":"b"}})", ""));
  EXPECT_EQ(SafetensorsFile::open(dir / "md.safetensors").metadata().at("a"), "b");
}

TEST(Safetensors, RewritesPythonFixtureByteForByte) {
  // Python writes __metadata__ first, then tensors in data order (here: sorted names).
  const std::string src = kLlama + "/model.safetensors";
  const SafetensorsFile f = SafetensorsFile::open(src);
  NamedTensors all;
  for (const auto& k : f.keys()) all.emplace_back(k, f.get(k));
  TempDir dir;
  save_safetensors(dir / "copy.safetensors", all, f.metadata());
  EXPECT_TRUE(read_bytes(dir / "copy.safetensors") == read_bytes(src));
}

TEST(Safetensors, NonCpuInputIsCopiedToCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  TempDir dir;
  const torch::Tensor t = torch::randn({5, 7}).to(torch::kCUDA).t();
  save_safetensors(dir / "gpu.safetensors", {{"t", t}});
  EXPECT_TRUE(same_bits(SafetensorsFile::open(dir / "gpu.safetensors").get("t"), t.cpu()));
}

// ---------------------------------------------------------------- Python-written fixtures

TEST(Safetensors, ReadsPythonModelFixture) {
  const SafetensorsFile f = SafetensorsFile::open(kLlama + "/model.safetensors");
  EXPECT_EQ(f.keys().size(), 21u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.info("lm_head.weight").shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(f.info("model.layers.0.mlp.down_proj.weight").shape, (std::vector<int64_t>{64, 176}));
  EXPECT_EQ(f.info("model.layers.1.self_attn.k_proj.weight").shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(f.info("model.norm.weight").shape, (std::vector<int64_t>{64}));
  for (const auto& k : f.keys()) EXPECT_EQ(f.info(k).dtype, torch::kFloat32) << k;
  const torch::Tensor w = f.get("model.embed_tokens.weight");
  EXPECT_EQ(w.sizes(), (std::vector<int64_t>{512, 64}));
  EXPECT_TRUE(torch::isfinite(w).all().item<bool>());
  EXPECT_GT(w.abs().sum().item<double>(), 0.0);
}

TEST(Safetensors, ReadsPythonExpectedFixture) {
  const SafetensorsFile f = SafetensorsFile::open(kLlama + "/expected.safetensors");
  EXPECT_EQ(f.keys(), (std::vector<std::string>{"attention_mask", "input_ids", "last_hidden_state", "logits"}));
  const torch::Tensor ids = f.get("input_ids");
  EXPECT_EQ(ids.scalar_type(), torch::kInt64);
  EXPECT_EQ(ids.sizes(), (std::vector<int64_t>{3, 11}));
  EXPECT_TRUE((ids >= 0).all().item<bool>() && (ids < 512).all().item<bool>());
  const torch::Tensor mask = f.get("attention_mask");
  EXPECT_EQ(mask.scalar_type(), torch::kInt64);
  EXPECT_TRUE(((mask == 0) | (mask == 1)).all().item<bool>());
  EXPECT_EQ(f.info("logits").dtype, torch::kFloat32);
  EXPECT_EQ(f.info("logits").shape, (std::vector<int64_t>{3, 11, 512}));
  EXPECT_EQ(f.info("last_hidden_state").shape, (std::vector<int64_t>{3, 11, 64}));
}

TEST(Safetensors, EveryFixtureOpensZeroCopy) {
  size_t files = 0;
  for (const auto& path : find_files(kFixtures + "/hf", ".safetensors")) {
    SCOPED_TRACE(path);
    const SafetensorsFile f = SafetensorsFile::open(path);
    const auto keys = f.keys();
    ASSERT_FALSE(keys.empty());
    // Pointer distances equal offset distances: every tensor is a view on one mapping.
    const auto* base = static_cast<const char*>(f.get(keys[0]).data_ptr()) - f.info(keys[0]).begin;
    for (const auto& k : keys) EXPECT_EQ(static_cast<const char*>(f.get(k).data_ptr()), base + f.info(k).begin) << k;
    ++files;
  }
  EXPECT_GT(files, 10u);
}

// ---------------------------------------------------------------- zero-copy

TEST(Safetensors, ZeroCopyAndCopyOnWrite) {
  TempDir dir;
  const std::string path = dir / "model.safetensors";
  write_bytes(path, read_bytes(kLlama + "/model.safetensors"));
  const std::string before = read_bytes(path);
  torch::Tensor kept;
  {
    const SafetensorsFile f = SafetensorsFile::open(path);
    const torch::Tensor a = f.get("lm_head.weight");
    const torch::Tensor b = f.get("lm_head.weight");
    EXPECT_EQ(a.data_ptr(), b.data_ptr());
    const torch::Tensor e = f.get("model.embed_tokens.weight");
    EXPECT_EQ(static_cast<char*>(e.data_ptr()) - static_cast<char*>(a.data_ptr()), 131072);
    kept = f.get("model.norm.weight");
    const torch::Tensor expect = kept.clone();
    a.fill_(42.0f);  // copy-on-write: visible through this mapping only
    EXPECT_EQ(b[0][0].item<float>(), 42.0f);
    EXPECT_TRUE(same_bits(kept, expect));
  }
  // The mapping outlives the SafetensorsFile through the tensor.
  EXPECT_TRUE(torch::isfinite(kept).all().item<bool>());
  kept.mul_(2);
  EXPECT_TRUE(read_bytes(path) == before);
  EXPECT_NE(SafetensorsFile::open(path).get("lm_head.weight")[0][0].item<float>(), 42.0f);
}

TEST(Safetensors, UnalignedDataIsCopied) {
  TempDir dir;
  const torch::Tensor vals = torch::tensor({1.5f, -2.25f});
  const std::string path = dir / "odd.safetensors";
  write_bytes(path, craft(R"({"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                          R"("f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})",
                          std::string(1, '\x05') + bytes_of(vals)));
  const SafetensorsFile f = SafetensorsFile::open(path);
  torch::Tensor a = f.get("f");
  EXPECT_TRUE(same_bits(a, vals));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data_ptr()) % 4, 0u);
  a.fill_(0);
  EXPECT_TRUE(same_bits(f.get("f"), vals));  // each get() made its own copy
  EXPECT_EQ(f.get("u").item<uint8_t>(), 5);
}

TEST(Safetensors, UnknownKeyListsAvailable) {
  const SafetensorsFile f = SafetensorsFile::open(kLlama + "/expected.safetensors");
  expect_error([&] { f.get("nope"); }, {"expected.safetensors", "'nope'", "4 tensors", "'attention_mask'"});
}

// ---------------------------------------------------------------- corruption matrix

TEST(Safetensors, CorruptFilesAreRejected) {
  TempDir dir;
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"I8","shape":[3],"data_offsets":[8,11]}})";
  const std::string data(11, '\0');
  const std::string good = craft(ok_header, data);
  const uint64_t n = good.size() - 8 - data.size();
  write_bytes(dir / "good.safetensors", good);
  ASSERT_EQ(SafetensorsFile::open(dir / "good.safetensors").keys().size(), 2u);

  auto entry = [](const std::string& a) { return R"({"a":)" + a + "}"; };
  const std::vector<std::tuple<std::string, std::string, std::vector<std::string>>> cases = {
      {"len0", "", {"shorter than"}},
      {"len4", good.substr(0, 4), {"shorter than"}},
      {"len8", good.substr(0, 8), {"exceeds the file size"}},
      {"mid_header", good.substr(0, 8 + n / 2), {"exceeds the file size"}},
      {"mid_data", good.substr(0, good.size() - 2), {"'b'", "beyond the data buffer"}},
      {"header_len_zero", le64(0) + "{}", {"header length is 0"}},
      {"header_len_huge", le64(1ULL << 62) + good.substr(8), {"100 MB"}},
      {"header_len_max", le64(~0ULL) + good.substr(8), {"100 MB"}},
      {"header_len_200mb", le64(200000000) + good.substr(8), {"100 MB"}},
      {"header_len_past_end", le64(good.size() - 7) + good.substr(8), {"exceeds the file size"}},
      {"invalid_json", craft(R"({"a":{"dtype":)", ""), {"not valid JSON"}},
      {"trailing_garbage", craft("{} x", ""), {"not valid JSON"}},
      {"bad_utf8", craft("{\"\xff\":1}", ""), {"not valid JSON"}},
      {"not_object", craft("[1,2]", ""), {"JSON object"}},
      {"deep_nesting", craft(R"({"a":)" + std::string(5000, '[') + std::string(5000, ']') + "}", ""), {"nests deeper"}},
      {"duplicate_key",
       craft(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
             R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
             "xx"),
       {"duplicate key 'a'"}},
      {"entry_not_object", craft(entry("5"), ""), {"'a'", "must be an object"}},
      {"unknown_dtype", craft(entry(R"({"dtype":"F33","shape":[2],"data_offsets":[0,8]})"), data), {"'a'", "'F33'"}},
      {"unsupported_dtype",
       craft(entry(R"({"dtype":"U16","shape":[1],"data_offsets":[0,2]})"), data),
       {"'a'", "'U16'"}},
      {"dtype_not_string", craft(entry(R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})"), data), {"'a'", "dtype"}},
      {"missing_dtype", craft(entry(R"({"shape":[2],"data_offsets":[0,8]})"), data), {"'a'", "missing 'dtype'"}},
      {"missing_shape", craft(entry(R"({"dtype":"F32","data_offsets":[0,8]})"), data), {"'a'", "missing 'shape'"}},
      {"missing_offsets", craft(entry(R"({"dtype":"F32","shape":[2]})"), data), {"'a'", "missing 'data_offsets'"}},
      {"shape_not_array",
       craft(entry(R"({"dtype":"F32","shape":"2","data_offsets":[0,8]})"), data),
       {"'a'", "'shape'"}},
      {"shape_float",
       craft(entry(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), data),
       {"'a'", "integer, got 2.0"}},
      {"shape_negative",
       craft(entry(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), data),
       {"'a'", "negative"}},
      {"shape_overflow",
       craft(entry(R"({"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,8]})"), data),
       {"'a'", "too large"}},
      {"shape_bigger_than_u64", craft(entry(R"({"dtype":"F32","shape":[1e30],"data_offsets":[0,8]})"), data), {"'a'"}},
      {"offsets_three",
       craft(entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,4,8]})"), data),
       {"'a'", "data_offsets"}},
      {"offsets_negative",
       craft(entry(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"), data),
       {"'a'", "negative"}},
      {"begin_after_end", craft(entry(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), data), {"'a'", "> end"}},
      {"shape_bytes_mismatch",
       craft(entry(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), data),
       {"'a'", "needs 12 bytes", "span 8"}},
      {"offsets_out_of_bounds",
       craft(entry(R"({"dtype":"F32","shape":[250],"data_offsets":[0,1000]})"), data),
       {"'a'", "beyond the data buffer"}},
      {"offsets_huge",
       craft(entry(R"({"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]})"), data),
       {"'a'", "beyond the data buffer"}},
      {"overlapping",
       craft(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
             R"("b":{"dtype":"I8","shape":[3],"data_offsets":[4,7]}})",
             data),
       {"'a'", "'b'", "overlapping"}},
      {"overlapping_contained",
       craft(R"({"a":{"dtype":"U8","shape":[10],"data_offsets":[0,10]},)"
             R"("b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]},)"
             R"("c":{"dtype":"U8","shape":[1],"data_offsets":[5,6]}})",
             data),
       {"overlapping"}},
      {"metadata_not_object", craft(R"({"__metadata__":["x"]})", ""), {"__metadata__"}},
      {"metadata_value_number", craft(R"({"__metadata__":{"k":1}})", ""), {"__metadata__", "'k'"}},
      {"metadata_value_object", craft(R"({"__metadata__":{"k":{"x":"y"}}})", ""), {"__metadata__", "'k'"}},
  };
  for (const auto& [name, bytes, needles] : cases) {
    SCOPED_TRACE(name);
    const std::string path = dir / (name + ".safetensors");
    write_bytes(path, bytes);
    std::vector<std::string> all = needles;
    all.push_back(name + ".safetensors");
    expect_error([&] { SafetensorsFile::open(path); }, all);
  }
}

TEST(Safetensors, RandomMutationsNeverCrash) {
  // Every mutated file either opens (and all its tensors read) or throws SafetensorsError.
  TempDir dir;
  const std::string seed_path = dir / "seed.safetensors";
  save_safetensors(seed_path,
                   {{"a", torch::randn({3, 2})},
                    {"b", torch::ones({2}, torch::kBool)},
                    {"c", torch::arange(5, torch::kInt16)},
                    {"s", torch::tensor(1.5)}},
                   {{"format", "pt"}});
  const std::string seed = read_bytes(seed_path);
  std::mt19937 rng(1234);
  int opened = 0, rejected = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string m = seed;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % std::min<size_t>(m.size(), rng() % 2 ? 24 : m.size());
      m[pos] = rng() % 3 ? static_cast<char>(rng()) : "0123456789[]{}\",-:"[rng() % 18];
    }
    if (rng() % 8 == 0) m.resize(rng() % m.size());
    const std::string path = dir / "m.safetensors";
    write_bytes(path, m);
    try {
      const SafetensorsFile f = SafetensorsFile::open(path);
      for (const auto& k : f.keys()) f.get(k).sum();
      ++opened;
    } catch (const SafetensorsError&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 1000);
  EXPECT_GT(opened, 10);
}

TEST(Safetensors, ValidEdgeCasesAreAccepted) {
  TempDir dir;
  // Zero-size tensors may share offsets with data-bearing ones; scalars have shape [].
  const std::string path = dir / "edge.safetensors";
  write_bytes(path, craft(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("z":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]},)"
                          R"("s":{"dtype":"I64","shape":[],"data_offsets":[8,16]}})",
                          bytes_of(torch::tensor({1.0f, 2.0f})) + bytes_of(torch::tensor(int64_t{-9}))));
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.get("z").sizes(), (std::vector<int64_t>{0, 5}));
  EXPECT_EQ(f.get("s").dim(), 0);
  EXPECT_EQ(f.get("s").item<int64_t>(), -9);
}

TEST(Safetensors, OpenErrorsNameTheFile) {
  TempDir dir;
  expect_error([&] { SafetensorsFile::open(dir / "missing.safetensors"); },
               {"missing.safetensors", "No such file or directory"});
  expect_error([&] { SafetensorsFile::open(dir.path); }, {dir.path, "not a regular file"});
  // BOOL bytes other than 0/1 are caught when the tensor is read.
  const std::string path = dir / "bool.safetensors";
  write_bytes(path, craft(R"({"m":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", std::string("\x01\x02", 2)));
  const SafetensorsFile f = SafetensorsFile::open(path);
  expect_error([&] { f.get("m"); }, {"bool.safetensors", "'m'", "BOOL"});
}

// ---------------------------------------------------------------- writer validation and failures

TEST(Safetensors, WriterRejectsBadInput) {
  TempDir dir;
  const std::string path = dir / "bad.safetensors";
  const torch::Tensor t = torch::ones({2});
  expect_error(
      [&] {
        save_safetensors(path, {{"x", t}, {"y", t}, {"x", t}});
      },
      {"bad.safetensors", "duplicate", "'x'"});
  expect_error(
      [&] {
        save_safetensors(path, {{"c", torch::ones({2}, torch::kComplexFloat)}});
      },
      {"bad.safetensors", "'c'", "unsupported dtype"});
  expect_error([&] { save_safetensors(path, {{"u", torch::Tensor()}}); }, {"'u'", "undefined"});
  expect_error([&] { save_safetensors(path, {{"__metadata__", t}}); }, {"reserved"});
  expect_error([&] { save_safetensors(path, {{"sp", torch::ones({2, 2}).to_sparse()}}); }, {"'sp'", "dense"});
  expect_error([&] { save_safetensors(path, {{std::string("\xff"), t}}); }, {"UTF-8"});
  EXPECT_TRUE(list_dir(dir.path).empty());
}

TEST(Safetensors, SaveIntoMissingDirectoryLeavesNothing) {
  TempDir dir;
  const std::string path = dir / "no_such_dir/x.safetensors";
  expect_error(
      [&] {
        save_safetensors(path, {{"a", torch::ones({2})}});
      },
      {"x.safetensors", "No such file or directory"});
  EXPECT_FALSE(exists(dir / "no_such_dir"));
  EXPECT_TRUE(list_dir(dir.path).empty());
}

TEST(Safetensors, OverwriteIsAtomicAndFailureKeepsOriginal) {
  TempDir dir;
  const std::string path = dir / "w.safetensors";
  save_safetensors(path, {{"a", torch::zeros({4})}});
  save_safetensors(path, {{"a", torch::ones({4})}});
  EXPECT_TRUE(same_bits(SafetensorsFile::open(path).get("a"), torch::ones({4})));
  const std::string original = read_bytes(path);

  // Disk-full stand-in: a file-size limit makes write() fail with EFBIG mid-file.
  struct rlimit old {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string message;
  try {
    save_safetensors(path, {{"big", torch::ones({1 << 16})}});
  } catch (const SafetensorsError& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(message.find("w.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("File too large"), std::string::npos) << message;
  EXPECT_TRUE(read_bytes(path) == original);
  EXPECT_TRUE(tmp_leftovers(dir.path).empty());

  // Destination is a directory: rename fails, the temp file is removed.
  ASSERT_EQ(::mkdir((dir / "d.safetensors").c_str(), 0755), 0);
  expect_error(
      [&] {
        save_safetensors(dir / "d.safetensors", {{"a", torch::ones({1})}});
      },
      {"rename", "d.safetensors"});
  EXPECT_TRUE(tmp_leftovers(dir.path).empty());
}

TEST(Safetensors, SaveIntoUnwritableDirectory) {
  if (geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  TempDir dir;
  ASSERT_EQ(::mkdir((dir / "ro").c_str(), 0755), 0);
  const std::string path = dir / "ro/x.safetensors";
  save_safetensors(path, {{"a", torch::zeros({1})}});
  const std::string original = read_bytes(path);
  ::chmod((dir / "ro").c_str(), 0500);
  expect_error([&] { save_safetensors(path, {{"a", torch::ones({1})}}); }, {"x.safetensors", "Permission denied"});
  ::chmod((dir / "ro").c_str(), 0700);
  EXPECT_TRUE(read_bytes(path) == original);
  EXPECT_TRUE(tmp_leftovers(dir / "ro").empty());
}

// ---------------------------------------------------------------- checkpoints

namespace {

// Two shards plus an index; `weight_map` is the index's weight_map JSON object.
void write_sharded(const TempDir& dir, const std::string& weight_map) {
  save_safetensors(dir / "model-00001-of-00002.safetensors",
                   {{"a", torch::arange(6, torch::kFloat32).view({2, 3})}, {"b", torch::arange(4, torch::kInt64)}});
  save_safetensors(dir / "model-00002-of-00002.safetensors", {{"c", torch::ones({5}, torch::kBFloat16)}});
  write_bytes(dir / "model.safetensors.index.json",
              R"({"metadata": {"total_size": 66}, "weight_map": )" + weight_map + "}");
}

const char* kGoodMap = R"({"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                           "c": "model-00002-of-00002.safetensors"})";

}  // namespace

TEST(Checkpoint, FolderWithSingleModelFile) {
  const Checkpoint c = Checkpoint::open(kLlama);  // also holds expected.safetensors
  EXPECT_EQ(c.keys().size(), 21u);
  EXPECT_TRUE(c.contains("lm_head.weight"));
  EXPECT_FALSE(c.contains("input_ids"));
  EXPECT_EQ(c.get("lm_head.weight").sizes(), (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(c.load_all().size(), 21u);
  const Checkpoint direct = Checkpoint::open(kLlama + "/expected.safetensors");
  EXPECT_EQ(direct.get("input_ids").scalar_type(), torch::kInt64);
  expect_error([&] { c.get("missing.weight"); }, {kLlama, "'missing.weight'", "21 tensors", "e.g."});
}

TEST(Checkpoint, ShardedLoadsAllKeys) {
  TempDir dir;
  write_sharded(dir, kGoodMap);
  for (const std::string& src : {dir.path, dir / "model.safetensors.index.json"}) {
    SCOPED_TRACE(src);
    const Checkpoint c = Checkpoint::open(src);
    EXPECT_EQ(c.source(), src);
    EXPECT_EQ(c.keys(), (std::vector<std::string>{"a", "b", "c"}));
    EXPECT_TRUE(same_bits(c.get("a"), torch::arange(6, torch::kFloat32).view({2, 3})));
    EXPECT_EQ(c.info("c").dtype, torch::kBFloat16);
    const auto all = c.load_all();
    ASSERT_EQ(all.size(), 3u);
    EXPECT_TRUE(same_bits(all.at("b"), torch::arange(4, torch::kInt64)));
    expect_error([&] { c.get("zzz"); }, {src, "'zzz'", "3 tensors"});
  }
}

TEST(Checkpoint, ShardedErrorsNameIndexAndKey) {
  const std::vector<std::tuple<std::string, std::string, std::vector<std::string>>> cases = {
      {"missing_shard",
       R"({"a": "model-00001-of-00002.safetensors", "d": "model-00003-of-00003.safetensors"})",
       {"'d'", "model-00003-of-00003.safetensors", "does not exist"}},
      {"key_not_in_shard",
       R"({"a": "model-00001-of-00002.safetensors", "d": "model-00001-of-00002.safetensors"})",
       {"'d'", "model-00001-of-00002.safetensors", "does not contain"}},
      {"wrong_shard", R"({"c": "model-00001-of-00002.safetensors"})", {"'c'", "does not contain"}},
      {"escaping_path", R"({"a": "../model-00001-of-00002.safetensors"})", {"'a'", "relative path"}},
      {"shard_not_string", R"({"a": 3})", {"'a'"}},
      {"weight_map_not_object", R"([])", {"weight_map"}},
  };
  for (const auto& [name, map, needles] : cases) {
    SCOPED_TRACE(name);
    TempDir dir;
    write_sharded(dir, map);
    std::vector<std::string> all = needles;
    all.push_back(dir / "model.safetensors.index.json");
    expect_error([&] { Checkpoint::open(dir.path); }, all);
  }
  TempDir dir;
  write_sharded(dir, kGoodMap);
  write_bytes(dir / "model.safetensors.index.json", "{\"weight_map\": ");
  expect_error([&] { Checkpoint::open(dir.path); }, {"model.safetensors.index.json", "not valid JSON"});
}

TEST(Checkpoint, FolderDiscovery) {
  TempDir dir;
  expect_error([&] { Checkpoint::open(dir.path); }, {dir.path, "no model.safetensors"});
  expect_error([&] { Checkpoint::open(dir / "nothing"); }, {"nothing", "no such"});
  save_safetensors(dir / "weights.safetensors", {{"w", torch::ones({2})}});
  EXPECT_EQ(Checkpoint::open(dir.path).keys(), (std::vector<std::string>{"w"}));
  save_safetensors(dir / "other.safetensors", {{"v", torch::ones({2})}});
  expect_error([&] { Checkpoint::open(dir.path); }, {dir.path, "2 *.safetensors files"});
  save_safetensors(dir / "model.safetensors", {{"m", torch::ones({2})}});
  EXPECT_EQ(Checkpoint::open(dir.path).keys(), (std::vector<std::string>{"m"}));
}
