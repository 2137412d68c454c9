// The engine's weights: config, memory-mapped safetensors files and views into them. Loaded
// once and shared read-only by every execution context and sequence.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "cpu/kernels.h"

namespace weft {

struct ModelConfig {
  int hidden = 0, numLayers = 0, numHeads = 0, numKvHeads = 0, headDim = 0, ffn = 0, vocab = 0;
  int maxPositions = 0;
  float rmsEps = 1e-6f;
  double ropeTheta = 10000.0;
  bool ropeLlama3 = false;
  double ropeFactor = 1, ropeLowFreqFactor = 1, ropeHighFreqFactor = 4, ropeOriginalMax = 8192;
  bool attentionBias = false;
};

// Where the JS side found a tensor (it parsed and validated the safetensors headers).
struct TensorSpec {
  std::string name;
  int file = -1;
  uint64_t offset = 0, nbytes = 0;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
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

struct LayerWeights {
  cpu::WeightView q, k, v, o, gate, up, down;
  std::vector<float> inputNorm, postNorm, qBias, kBias, vBias;  // small: kept as f32
};

struct Model {
  ModelConfig cfg;
  std::vector<std::unique_ptr<MappedFile>> files;
  cpu::WeightView embed, lmHead;
  std::vector<float> finalNorm;
  std::vector<LayerWeights> layers;
  std::vector<double> invFreq;  // (headDim / 2) RoPE inverse frequencies, scaling applied
  DType weightDtype = DType::F32;
  uint64_t weightBytes = 0;     // bytes of the matrices read per step (embedding rows excluded)
};

// Maps the files and resolves every tensor; `tensors` maps names to specs (layer tensors named
// "layers.{i}.q" ... and "embed", "lm_head", "norm").
std::unique_ptr<Model> loadModel(const ModelConfig& cfg, const std::vector<std::string>& files,
                                 const std::vector<TensorSpec>& tensors);

}  // namespace weft
