// The engine's weights: config, memory-mapped safetensors files and views into them. Loaded
// once and shared read-only by every execution context and sequence.
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "cpu/kernels.h"

namespace weft {

enum class Activation : uint8_t { Silu, GeluTanh };
enum class RopeScaling : uint8_t { None, Llama3, Linear, LongRope };

struct ModelConfig {
  int hidden = 0, numLayers = 0, numHeads = 0, numKvHeads = 0, headDim = 0, ffn = 0, vocab = 0;
  int maxPositions = 0;
  float rmsEps = 1e-6f;
  // RoPE
  double ropeTheta = 10000.0;
  RopeScaling ropeScaling = RopeScaling::None;
  double ropeFactor = 1, ropeLowFreqFactor = 1, ropeHighFreqFactor = 4, ropeOriginalMax = 8192;
  std::vector<double> ropeShortFactor, ropeLongFactor;  // LongRoPE: per-frequency divisors (rotaryDim / 2)
  double ropeAttnFactor = 1;     // LongRoPE: cos and sin are scaled by it
  int rotaryDim = 0;             // dims rotated per head (0: headDim)
  bool ropeInterleaved = false;  // pairs (2i, 2i + 1) instead of (i, i + rotaryDim / 2)
  double ropeLocalTheta = 0;     // sliding-window layers' own base, plain RoPE (Gemma 3); 0: the global table
  // attention
  std::vector<int> layerWindow;  // per layer: position p attends to (p - window, p]; 0 (or empty): all
  double queryPreAttnScalar = 0; // scores scaled by its -1/2 power; 0: headDim
  float attnSoftcap = 0, finalSoftcap = 0;  // tanh(x / c) * c on attention scores / logits; 0: none
  bool attentionBias = false, outputBias = false, qkNorm = false;
  // blocks
  Activation activation = Activation::Silu;
  float normOffset = 0;          // norms multiply by (normOffset + w): 1 for Gemma, folded in at load
  bool sandwichNorms = false;    // Gemma: attention and MLP outputs normed before the residual add
  bool embedScale = false;       // embeddings times sqrt(hidden), rounded to the embedding dtype
};

// The scales of an F8_E4M3 weight [N, K]: a row-major grid [ceil(N / blockRows), ceil(K / blockCols)]
// of f32, bf16 or f16 in `file`; element (r, c) of the weight is fp8(r, c) * grid[r / blockRows][c / blockCols]
// (per tensor: a 1 x 1 grid; per output row: N x 1).
struct ScaleSpec {
  int file = -1;
  uint64_t offset = 0, nbytes = 0;
  DType dtype = DType::F32;
  int64_t gridRows = 0, gridCols = 0, blockRows = 0, blockCols = 0;
};

// Where the JS side found a tensor (it parsed and validated the safetensors headers).
struct TensorSpec {
  std::string name;
  int file = -1;
  uint64_t offset = 0, nbytes = 0;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  bool hasScale = false;  // F8_E4M3 weights only
  ScaleSpec scale;
};

class MappedFile {
 public:
  MappedFile(const std::string& path);
  ~MappedFile();
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// q/k/v and gate/up may be row ranges of one fused tensor (Phi-3's qkv_proj, gate_up_proj).
struct LayerWeights {
  cpu::WeightView q, k, v, o, gate, up, down;
  // small: kept as f32. postNorm is the one before the MLP (HF Llama's post_attention_layernorm).
  std::vector<float> inputNorm, postNorm, qBias, kBias, vBias, oBias;
  std::vector<float> qNorm, kNorm;               // per head (headDim), when qkNorm
  std::vector<float> attnOutNorm, ffnOutNorm;    // when sandwichNorms
};

struct Model {
  ModelConfig cfg;
  std::vector<std::unique_ptr<MappedFile>> files;
  cpu::WeightView embed, lmHead;
  std::vector<float> finalNorm;
  std::vector<LayerWeights> layers;
  std::vector<double> invFreq;       // (rotaryDim / 2) RoPE inverse frequencies, scaling applied (LongRoPE: short)
  std::vector<double> invFreqLong;   // LongRoPE's long factors (used when the context exceeds ropeOriginalMax)
  std::vector<double> invFreqLocal;  // sliding layers' table when ropeLocalTheta is set
  float embedScale = 1;
  DType weightDtype = DType::F32;
  uint64_t weightBytes = 0;     // bytes of the matrices read per step (embedding rows excluded)
  // FP8 checkpoints (what the views above point at instead of the mapped file): per-row scales of
  // F8_E4M3 views (CUDA), dequantized matrices (CPU: f32; CUDA, block-scaled weights: bf16 bits)
  std::deque<std::vector<float>> ownedF32;
  std::deque<std::vector<uint16_t>> ownedBf16;
};

struct EngineOptions;

// Maps the files and resolves every tensor; `tensors` maps names to specs (layer tensors named
// "layers.{i}.q" ... (or "layers.{i}.qkv", "layers.{i}.gate_up" fused) and "embed", "lm_head", "norm").
// FP8 (F8_E4M3) weights by backend (opt.backend): CUDA keeps the mapped fp8 bytes with one scale per
// row, or, for block scales, a bf16 copy (requantized per row on the device: opt.fp8Weights); the CPU
// gets f32 copies (fp8 value x scale, rounded once), so its kernels never see F8_E4M3.
std::unique_ptr<Model> loadModel(const ModelConfig& cfg, const std::vector<std::string>& files,
                                 const std::vector<TensorSpec>& tensors, const EngineOptions& opt);

}  // namespace weft
