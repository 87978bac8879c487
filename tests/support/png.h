// A minimal PNG reader for screenshot checks: 8-bit greyscale / RGB / RGBA, not interlaced
// (what headless Chromium writes). Pixels come back as RGB.
#pragma once

#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace modula::testing {

struct Png {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> rgb;  // height × width × 3
  std::string error;         // why it could not be read ("" = fine)
};

inline Png read_png(const std::string& path) {
  Png png;
  std::ifstream in(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(in)), {});
  auto be32 = [&](size_t at) {
    return static_cast<uint32_t>(static_cast<uint8_t>(data[at])) << 24 |
           static_cast<uint32_t>(static_cast<uint8_t>(data[at + 1])) << 16 |
           static_cast<uint32_t>(static_cast<uint8_t>(data[at + 2])) << 8 | static_cast<uint8_t>(data[at + 3]);
  };
  if (data.size() < 8 || data.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) return png.error = "not a PNG", png;
  int depth = 0, colour = 0, interlace = 0;
  std::string idat;
  for (size_t at = 8; at + 12 <= data.size();) {
    uint32_t len = be32(at);
    std::string type = data.substr(at + 4, 4);
    if (at + 12 + len > data.size()) return png.error = "truncated chunk " + type, png;
    if (type == "IHDR") {
      png.width = be32(at + 8), png.height = be32(at + 12);
      depth = static_cast<uint8_t>(data[at + 16]), colour = static_cast<uint8_t>(data[at + 17]);
      interlace = static_cast<uint8_t>(data[at + 20]);
    } else if (type == "IDAT") {
      idat += data.substr(at + 8, len);
    }
    at += 12 + len;
  }
  const int channels = colour == 0 ? 1 : colour == 2 ? 3 : colour == 6 ? 4 : 0;
  if (depth != 8 || channels == 0 || interlace != 0)
    return png.error =
               "unsupported PNG (depth " + std::to_string(depth) + ", colour type " + std::to_string(colour) + ")",
           png;
  const size_t stride = static_cast<size_t>(png.width) * channels;
  std::vector<uint8_t> raw((stride + 1) * png.height);
  uLongf raw_len = raw.size();
  if (uncompress(raw.data(), &raw_len, reinterpret_cast<const Bytef*>(idat.data()), idat.size()) != Z_OK ||
      raw_len != raw.size())
    return png.error = "bad image data", png;
  // Undo the per-row filters (PNG spec §9: none, sub, up, average, Paeth).
  std::vector<uint8_t> pix(stride * png.height), zero(stride, 0);
  for (uint32_t y = 0; y < png.height; ++y) {
    const uint8_t filter = raw[y * (stride + 1)];
    const uint8_t* src = &raw[y * (stride + 1) + 1];
    uint8_t* row = &pix[y * stride];
    const uint8_t* up = y ? &pix[(y - 1) * stride] : zero.data();
    for (size_t i = 0; i < stride; ++i) {
      int a = i >= static_cast<size_t>(channels) ? row[i - channels] : 0, b = up[i],
          c = i >= static_cast<size_t>(channels) ? up[i - channels] : 0;
      int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
      int pred = filter == 1   ? a
                 : filter == 2 ? b
                 : filter == 3 ? (a + b) / 2
                 : filter == 4 ? (pa <= pb && pa <= pc ? a
                                  : pb <= pc           ? b
                                                       : c)
                               : 0;
      row[i] = static_cast<uint8_t>(src[i] + pred);
    }
  }
  png.rgb.resize(static_cast<size_t>(png.width) * png.height * 3);
  for (size_t i = 0; i < static_cast<size_t>(png.width) * png.height; ++i)
    for (int k = 0; k < 3; ++k) png.rgb[i * 3 + k] = pix[i * channels + (channels == 1 ? 0 : k)];
  return png;
}

}  // namespace modula::testing
