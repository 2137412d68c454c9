#include "model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <map>

#include "cpu/ops.h"
#include "engine.h"

namespace weft {

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw WeftError(Err::ModelNotFound, "cannot open " + path + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw WeftError(Err::ModelNotFound, "cannot stat " + path + ": " + std::strerror(errno));
  }
  size_ = uint64_t(st.st_size);
  if (size_ > 0) {
    // MAP_POPULATE: fault the weights in at load, not on the first request.
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw WeftError(Err::ModelFormat, "cannot mmap " + path + ": " + std::strerror(errno));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

namespace {

struct Resolver {
  const std::vector<std::unique_ptr<MappedFile>>& files;
  std::map<std::string, const TensorSpec*> byName;
  Model& model;      // owns what FP8 weights become
  bool cuda = false; // the backend the weights are for

  const TensorSpec& spec(const std::string& name) const {
    auto it = byName.find(name);
    if (it == byName.end()) throw WeftError(Err::TensorMissing, "tensor " + name + " is missing");
    return *it->second;
  }

  const void* data(const TensorSpec& t, const std::vector<int64_t>& shape) const {
    if (t.shape != shape) {
      auto str = [](const std::vector<int64_t>& s) {
        std::string r = "[";
        for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
        return r + "]";
      };
      throw WeftError(Err::TensorShape, "tensor " + t.name + " has shape " + str(t.shape) + ", expected " + str(shape));
    }
    if (t.file < 0 || size_t(t.file) >= files.size()) throw WeftError(Err::ModelFormat, "tensor " + t.name + " names no file");
    const MappedFile& f = *files[t.file];
    uint64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); i++) rows *= uint64_t(shape[i]);
    const int64_t cols = shape.empty() ? 1 : shape.back();
    if (cols % blockElems(t.dtype) != 0)
      throw WeftError(Err::TensorShape, "tensor " + t.name + ": " + std::to_string(cols) + " columns are not a whole number of " +
                                            dtypeName(t.dtype) + " blocks (" + std::to_string(blockElems(t.dtype)) + ")");
    if (t.nbytes != rows * rowBytes(t.dtype, cols) || t.offset + t.nbytes > f.size() || t.offset + t.nbytes < t.offset)
      throw WeftError(Err::ModelFormat, "tensor " + t.name + " lies outside " + f.path());
    return f.data() + t.offset;
  }

  cpu::WeightView matrix(const std::string& name, int64_t rows, int64_t cols) const {
    const TensorSpec& t = spec(name);
    const void* p = data(t, {rows, cols});
    if (t.dtype == DType::F8_E4M3) return fp8Matrix(t, static_cast<const uint8_t*>(p), rows, cols);
    if (t.hasScale) throw WeftError(Err::BadArgument, "tensor " + t.name + " is " + dtypeName(t.dtype) + ": only F8_E4M3 weights have scales");
    return cpu::WeightView{p, t.dtype, rows, cols};
  }

  // The scale grid of an FP8 weight as f32, checked: its shape against the weight's, every value finite and positive.
  std::vector<float> scales(const TensorSpec& t, int64_t rows, int64_t cols) const {
    if (!t.hasScale) throw WeftError(Err::TensorMissing, "FP8 weight " + t.name + " has no scale");
    const ScaleSpec& s = t.scale;
    if (s.dtype != DType::F32 && s.dtype != DType::BF16 && s.dtype != DType::F16)
      throw WeftError(Err::UnsupportedDtype, "the scale of " + t.name + " is " + dtypeName(s.dtype) + " (F32, BF16 or F16)");
    auto ceilDiv = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
    if (s.blockRows <= 0 || s.blockCols <= 0 || s.gridRows != ceilDiv(rows, s.blockRows) || s.gridCols != ceilDiv(cols, s.blockCols))
      throw WeftError(Err::TensorShape, "the scale of " + t.name + " is a " + std::to_string(s.gridRows) + " x " + std::to_string(s.gridCols) +
                                            " grid of " + std::to_string(s.blockRows) + " x " + std::to_string(s.blockCols) + " blocks, which does not tile [" +
                                            std::to_string(rows) + ", " + std::to_string(cols) + "]");
    if (s.file < 0 || size_t(s.file) >= files.size()) throw WeftError(Err::ModelFormat, "the scale of " + t.name + " names no file");
    const MappedFile& f = *files[s.file];
    const uint64_t n = uint64_t(s.gridRows) * uint64_t(s.gridCols);
    if (s.nbytes != n * dtypeSize(s.dtype) || s.offset + s.nbytes > f.size() || s.offset + s.nbytes < s.offset)
      throw WeftError(Err::ModelFormat, "the scale of " + t.name + " lies outside " + f.path());
    std::vector<float> out(n);
    for (uint64_t i = 0; i < n; i++) {
      out[i] = loadScalar(f.data() + s.offset, s.dtype, i);
      if (!(out[i] > 0) || !std::isfinite(out[i]))
        throw WeftError(Err::ModelFormat, "the scale of " + t.name + " holds " + std::to_string(out[i]) + " (at " + std::to_string(i) +
                                              "): FP8 scales must be finite and positive");
    }
    return out;
  }

  // An F8_E4M3 weight for the backend (model.h, loadModel).
  cpu::WeightView fp8Matrix(const TensorSpec& t, const uint8_t* q, int64_t rows, int64_t cols) const {
    const std::vector<float> grid = scales(t, rows, cols);
    const ScaleSpec& s = t.scale;
    float lut[256];
    for (int b = 0; b < 256; b++) lut[b] = fp8e4m3ToF32(uint8_t(b));
    auto scaleAt = [&](int64_t r, int64_t c) { return grid[size_t((r / s.blockRows) * s.gridCols + c / s.blockCols)]; };
    const size_t numel = size_t(rows) * size_t(cols);
    if (cuda && s.gridCols == 1) {  // one scale per row: the mapped bytes as they are
      std::vector<float>& rowScale = model.ownedF32.emplace_back(size_t(rows));
      for (int64_t r = 0; r < rows; r++) rowScale[r] = scaleAt(r, 0);
      cpu::WeightView v{q, DType::F8_E4M3, rows, cols};
      v.rowScale = rowScale.data();
      return v;
    }
    if (cuda) {  // block scales: bf16 here (and on the device, unless quantize fp8 requantizes it per row)
      std::vector<uint16_t>& w = model.ownedBf16.emplace_back(numel);
      for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) w[size_t(r) * cols + c] = f32ToBf16Bits(lut[q[size_t(r) * cols + c]] * scaleAt(r, c));
      return cpu::WeightView{w.data(), DType::BF16, rows, cols};
    }
    std::vector<float>& w = model.ownedF32.emplace_back(numel);  // CPU: f32, fp8 value x scale
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++) w[size_t(r) * cols + c] = lut[q[size_t(r) * cols + c]] * scaleAt(r, c);
    return cpu::WeightView{w.data(), DType::F32, rows, cols};
  }

  static uint16_t f32ToBf16Bits(float x) {  // round to nearest even (finite inputs)
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }

  std::vector<float> vector(const std::string& name, int64_t n) const {
    const TensorSpec& t = spec(name);
    if (t.dtype == DType::F8_E4M3) throw WeftError(Err::UnsupportedDtype, "tensor " + name + " is F8_E4M3: only the layers' matrices may be FP8");
    const void* p = data(t, {n});
    std::vector<float> out(n);
    for (int64_t i = 0; i < n; i++) out[i] = loadScalar(p, t.dtype, i);
    return out;
  }
};

void validateConfig(const ModelConfig& c) {
  auto bad = [](const std::string& what) { throw WeftError(Err::ModelFormat, "config: " + what); };
  if (c.hidden <= 0 || c.numLayers <= 0 || c.numHeads <= 0 || c.numKvHeads <= 0 || c.headDim <= 0 || c.ffn <= 0 ||
      c.vocab <= 0 || c.maxPositions <= 0)
    bad("sizes must be positive");
  if (c.numHeads % c.numKvHeads != 0) bad("num_attention_heads must be a multiple of num_key_value_heads");
  if (c.headDim % 2 != 0) bad("head_dim must be even");
  if (!(c.rmsEps > 0) || !std::isfinite(c.rmsEps)) bad("rms_norm_eps must be positive");
  if (!(c.ropeTheta > 0) || !std::isfinite(c.ropeTheta)) bad("rope_theta must be positive");
  if (!(c.ropeLocalTheta >= 0) || !std::isfinite(c.ropeLocalTheta)) bad("rope_local_base_freq must be positive");
  if (c.rotaryDim < 0 || c.rotaryDim > c.headDim || c.rotaryDim % 2 != 0) bad("the rotary dimension must be even and at most head_dim");
  if (!(c.ropeFactor > 0) || !std::isfinite(c.ropeFactor)) bad("rope scaling factor must be positive");
  const size_t numFreq = size_t(c.rotaryDim > 0 ? c.rotaryDim : c.headDim) / 2;
  if (c.ropeScaling == RopeScaling::LongRope && (c.ropeShortFactor.size() != numFreq || c.ropeLongFactor.size() != numFreq))
    bad("LongRoPE short_factor and long_factor must have rotary_dim / 2 = " + std::to_string(numFreq) + " entries");
  if (!c.layerWindow.empty() && c.layerWindow.size() != size_t(c.numLayers)) bad("one sliding window per layer");
  for (int w : c.layerWindow)
    if (w < 0) bad("sliding_window must be positive");
  if (!(c.queryPreAttnScalar >= 0) || !(c.attnSoftcap >= 0) || !(c.finalSoftcap >= 0)) bad("query_pre_attn_scalar and soft-caps must be positive");
  if (c.attnSoftcap > 0 && c.headDim > cpu::kMaxSoftcapHeadDim)
    throw WeftError(Err::UnsupportedArch, "attention soft-capping supports head_dim up to " + std::to_string(cpu::kMaxSoftcapHeadDim));
}

// Hugging Face's inverse frequencies for `dim` rotated dims of base `theta`, computed in float32
// as it does, then widened. Scaling: Llama 3 (long wavelengths divided by the factor, short ones
// kept, the band between interpolated), linear (all divided), LongRoPE (each by its own factor).
std::vector<double> ropeInvFreq(const ModelConfig& c, double theta, RopeScaling scaling, const std::vector<double>* extFactors) {
  const int dim = c.rotaryDim > 0 ? c.rotaryDim : c.headDim;
  std::vector<double> inv(dim / 2);
  for (int i = 0; i < dim / 2; i++) {
    const float base = std::pow(float(theta), float(2 * i) / float(dim));
    if (scaling == RopeScaling::LongRope) {
      inv[i] = 1.0f / (float((*extFactors)[i]) * base);
    } else if (scaling == RopeScaling::Linear) {
      inv[i] = (1.0f / base) / float(c.ropeFactor);
    } else {
      inv[i] = 1.0f / base;
    }
  }
  if (scaling == RopeScaling::Llama3) {
    const double lowWavelen = c.ropeOriginalMax / c.ropeLowFreqFactor;
    const double highWavelen = c.ropeOriginalMax / c.ropeHighFreqFactor;
    for (double& f : inv) {
      const double wavelen = 2 * M_PI / f;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        f = f / c.ropeFactor;
      } else {
        const double smooth = (c.ropeOriginalMax / wavelen - c.ropeLowFreqFactor) / (c.ropeHighFreqFactor - c.ropeLowFreqFactor);
        f = (1 - smooth) * f / c.ropeFactor + smooth * f;
      }
    }
  }
  return inv;
}

// Hugging Face multiplies the embeddings by sqrt(hidden) cast to the embedding dtype.
float embeddingScale(int hidden, DType dtype) {
  const float s = float(std::sqrt(double(hidden)));
  if (dtype == DType::BF16) return cpu::roundToBf16(s);
  if (dtype == DType::F16) return f16ToF32(f32ToF16(s));
  return s;
}

cpu::WeightView rowRange(const cpu::WeightView& w, int64_t first, int64_t count) {
  cpu::WeightView v{static_cast<const uint8_t*>(w.data) + uint64_t(first) * rowBytes(w.dtype, w.cols), w.dtype, count, w.cols};
  if (w.rowScale) v.rowScale = w.rowScale + first;
  return v;
}

}  // namespace

std::unique_ptr<Model> loadModel(const ModelConfig& cfg, const std::vector<std::string>& files,
                                 const std::vector<TensorSpec>& tensors, const EngineOptions& opt) {
  validateConfig(cfg);
  auto m = std::make_unique<Model>();
  m->cfg = cfg;
  for (const auto& f : files) m->files.push_back(std::make_unique<MappedFile>(f));
  Resolver r{m->files, {}, *m, opt.backend == BackendKind::Cuda};
  for (const auto& t : tensors) r.byName[t.name] = &t;

  const int64_t H = cfg.hidden, D = cfg.headDim, qDim = int64_t(cfg.numHeads) * D, kvDim = int64_t(cfg.numKvHeads) * D;
  for (const char* name : {"embed", "lm_head"})
    if (r.byName.count(name) && r.spec(name).dtype == DType::F8_E4M3)
      throw WeftError(Err::UnsupportedDtype, std::string("tensor ") + name + " is F8_E4M3: embeddings and the LM head stay in float in FP8 checkpoints");
  m->embed = r.matrix("embed", cfg.vocab, H);
  m->lmHead = r.byName.count("lm_head") ? r.matrix("lm_head", cfg.vocab, H) : m->embed;
  // norm weights as f32, with Gemma's (1 + w) folded in
  auto norm = [&](const std::string& name, int64_t n) {
    std::vector<float> w = r.vector(name, n);
    if (cfg.normOffset != 0)
      for (float& x : w) x = cfg.normOffset + x;
    return w;
  };
  m->finalNorm = norm("norm", H);
  if (cfg.embedScale) m->embedScale = embeddingScale(cfg.hidden, m->embed.dtype);
  m->weightDtype = m->lmHead.dtype;
  uint64_t bytes = uint64_t(m->lmHead.rows) * rowBytes(m->lmHead.dtype, m->lmHead.cols);
  for (int l = 0; l < cfg.numLayers; l++) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerWeights L;
    if (r.byName.count(p + "qkv")) {  // fused: zero-copy row ranges of one tensor
      const cpu::WeightView qkv = r.matrix(p + "qkv", qDim + 2 * kvDim, H);
      L.q = rowRange(qkv, 0, qDim);
      L.k = rowRange(qkv, qDim, kvDim);
      L.v = rowRange(qkv, qDim + kvDim, kvDim);
    } else {
      L.q = r.matrix(p + "q", qDim, H);
      L.k = r.matrix(p + "k", kvDim, H);
      L.v = r.matrix(p + "v", kvDim, H);
    }
    L.o = r.matrix(p + "o", H, qDim);
    if (r.byName.count(p + "gate_up")) {
      const cpu::WeightView gateUp = r.matrix(p + "gate_up", 2 * int64_t(cfg.ffn), H);
      L.gate = rowRange(gateUp, 0, cfg.ffn);
      L.up = rowRange(gateUp, cfg.ffn, cfg.ffn);
    } else {
      L.gate = r.matrix(p + "gate", cfg.ffn, H);
      L.up = r.matrix(p + "up", cfg.ffn, H);
    }
    L.down = r.matrix(p + "down", H, cfg.ffn);
    L.inputNorm = norm(p + "input_norm", H);
    L.postNorm = norm(p + "post_norm", H);
    if (cfg.attentionBias) {
      L.qBias = r.vector(p + "q_bias", qDim);
      L.kBias = r.vector(p + "k_bias", kvDim);
      L.vBias = r.vector(p + "v_bias", kvDim);
    }
    if (cfg.outputBias) L.oBias = r.vector(p + "o_bias", H);
    if (cfg.qkNorm) {
      L.qNorm = norm(p + "q_norm", D);
      L.kNorm = norm(p + "k_norm", D);
    }
    if (cfg.sandwichNorms) {
      L.attnOutNorm = norm(p + "attn_out_norm", H);
      L.ffnOutNorm = norm(p + "ffn_out_norm", H);
    }
    for (const auto* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      bytes += uint64_t(w->rows) * rowBytes(w->dtype, w->cols);
    m->layers.push_back(std::move(L));
  }
  m->weightBytes = bytes;
  m->invFreq = ropeInvFreq(cfg, cfg.ropeTheta, cfg.ropeScaling, &cfg.ropeShortFactor);
  if (cfg.ropeScaling == RopeScaling::LongRope) m->invFreqLong = ropeInvFreq(cfg, cfg.ropeTheta, cfg.ropeScaling, &cfg.ropeLongFactor);
  if (cfg.ropeLocalTheta > 0) m->invFreqLocal = ropeInvFreq(cfg, cfg.ropeLocalTheta, RopeScaling::None, nullptr);
  return m;
}

}  // namespace weft
