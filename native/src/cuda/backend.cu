#include "backend.h"

#include <algorithm>
#include <cstring>

namespace weft {

namespace cpu {
// native/src/cpu/quant.cpp (host code): a row of ggml blocks to f32.
void dequantizeRow(DType type, const void* src, float* dst, int64_t n);
}  // namespace cpu

namespace cuda {

const int kGraphBatchSizes[9] = {1, 2, 4, 8, 16, 32, 64, 128, 256};

namespace {

uint16_t f32ToBf16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}

// Copies rows [0, w.rows) of a host matrix into `dst` (device), converting to the device dtype.
void uploadMatrix(uint8_t* dst, const cpu::WeightView& w, bool bf16) {
  const uint64_t n = uint64_t(w.rows) * uint64_t(w.cols);
  const DType target = bf16 ? DType::BF16 : DType::F16;
  if (w.dtype == target) {
    WEFT_CU(cudaMemcpy(dst, w.data, n * 2, cudaMemcpyHostToDevice));
    return;
  }
  if (w.dtype == DType::F8_E4M3) {
    // an FP8 checkpoint's matrix where the device keeps bf16/f16: dequantized on the host
    const uint64_t cols = uint64_t(w.cols), rowsPer = std::max<uint64_t>(1, (1ull << 22) / cols);
    std::vector<uint16_t> staging(rowsPer * cols);
    const uint8_t* src = static_cast<const uint8_t*>(w.data);
    for (uint64_t r0 = 0; r0 < uint64_t(w.rows); r0 += rowsPer) {
      const uint64_t r1 = std::min<uint64_t>(uint64_t(w.rows), r0 + rowsPer);
      for (uint64_t r = r0; r < r1; r++) {
        const float sc = w.rowScale ? w.rowScale[r] : 1.f;
        for (uint64_t c = 0; c < cols; c++) {
          const float f = fp8e4m3ToF32(src[r * cols + c]) * sc;
          staging[(r - r0) * cols + c] = bf16 ? f32ToBf16(f) : f32ToF16(f);
        }
      }
      WEFT_CU(cudaMemcpy(dst + r0 * cols * 2, staging.data(), (r1 - r0) * cols * 2, cudaMemcpyHostToDevice));
    }
    return;
  }
  if (isQuant(w.dtype)) {
    // GGUF block formats: dequantized a row at a time on the host, uploaded as f16/bf16
    const uint64_t cols = uint64_t(w.cols), rb = rowBytes(w.dtype, w.cols);
    const uint64_t rowsPer = std::max<uint64_t>(1, (1ull << 22) / cols);
    std::vector<float> row(cols);
    std::vector<uint16_t> staging(rowsPer * cols);
    for (uint64_t r0 = 0; r0 < uint64_t(w.rows); r0 += rowsPer) {
      const uint64_t r1 = std::min<uint64_t>(uint64_t(w.rows), r0 + rowsPer);
      for (uint64_t r = r0; r < r1; r++) {
        cpu::dequantizeRow(w.dtype, static_cast<const uint8_t*>(w.data) + r * rb, row.data(), int64_t(cols));
        for (uint64_t c = 0; c < cols; c++) staging[(r - r0) * cols + c] = bf16 ? f32ToBf16(row[c]) : f32ToF16(row[c]);
      }
      WEFT_CU(cudaMemcpy(dst + r0 * cols * 2, staging.data(), (r1 - r0) * cols * 2, cudaMemcpyHostToDevice));
    }
    return;
  }
  const uint64_t chunk = 1ull << 24;
  std::vector<uint16_t> staging(std::min(n, chunk));
  for (uint64_t b = 0; b < n; b += chunk) {
    const uint64_t e = std::min(n, b + chunk);
    for (uint64_t i = b; i < e; i++) {
      const float f = loadScalar(w.data, w.dtype, i);
      staging[i - b] = bf16 ? f32ToBf16(f) : f32ToF16(f);
    }
    WEFT_CU(cudaMemcpy(dst + b * 2, staging.data(), (e - b) * 2, cudaMemcpyHostToDevice));
  }
}

void uploadFloats(DeviceBuffer& buf, const std::vector<float>& v) {
  buf.alloc(v.size() * 4);
  if (!v.empty()) WEFT_CU(cudaMemcpy(buf.ptr, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
}

// Stacks matrices with the same column count into one device matrix (q|k|v, gate|up). FP8 when
// `quantize` (--quantize fp8) or when every part is an FP8 checkpoint's (per-row scales): an FP8
// part is copied as it is (with its row scales), any other uploaded as bf16/f16 into `staging` and
// quantized per row on the device. Otherwise bf16/f16 (FP8 parts dequantized on the host).
void uploadStacked(DeviceMatrix& m, std::initializer_list<const cpu::WeightView*> parts, bool bf16, bool quantize, DeviceBuffer& staging) {
  uint64_t rows = 0;
  bool allFp8 = true;  // an FP8 checkpoint's matrix stays FP8 (the layers it left in bf16 stay bf16)
  for (auto* p : parts) {
    rows += uint64_t(p->rows);
    allFp8 = allFp8 && p->dtype == DType::F8_E4M3 && p->rowScale;
  }
  const bool fp8 = quantize || allFp8;
  const uint64_t cols = uint64_t((*parts.begin())->cols);
  m.rows = int64_t(rows);
  m.cols = int64_t(cols);
  if (!fp8) {
    m.w.alloc(rows * cols * 2);
    uint8_t* dst = m.w.as<uint8_t>();
    for (auto* p : parts) {
      uploadMatrix(dst, *p, bf16);
      dst += uint64_t(p->rows) * cols * 2;
    }
    return;
  }
  m.w.alloc(rows * cols);
  m.scale.alloc(rows * 4);
  uint64_t r0 = 0;
  for (auto* p : parts) {
    const uint64_t n = uint64_t(p->rows) * cols;
    uint8_t* dst = m.w.as<uint8_t>() + r0 * cols;
    float* sc = m.scale.as<float>() + r0;
    if (p->dtype == DType::F8_E4M3 && p->rowScale) {
      WEFT_CU(cudaMemcpy(dst, p->data, n, cudaMemcpyHostToDevice));
      WEFT_CU(cudaMemcpy(sc, p->rowScale, uint64_t(p->rows) * 4, cudaMemcpyHostToDevice));
    } else {
      if (staging.bytes < n * 2) staging.alloc(n * 2);
      uploadMatrix(staging.as<uint8_t>(), *p, bf16);
      quantizeFp8(staging.ptr, dst, sc, p->rows, int(cols), bf16, nullptr);
      WEFT_CU(cudaGetLastError());
    }
    r0 += uint64_t(p->rows);
  }
  WEFT_CU(cudaDeviceSynchronize());  // staging is reused by the next matrix
}

}  // namespace

CudaBackend::CudaBackend(const Model& model, const EngineOptions& opt) : model_(model), opt_(opt) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw WeftError(Err::BackendUnavailable, "backend cuda: no CUDA device is visible");
  }
  if (opt.cudaDevice < 0 || opt.cudaDevice >= count)
    throw WeftError(Err::BadArgument, "cudaDevice " + std::to_string(opt.cudaDevice) + " does not exist (" + std::to_string(count) + " visible)");
  device = opt.cudaDevice;
  WEFT_CU(cudaSetDevice(device));
  cudaDeviceProp prop;
  WEFT_CU(cudaGetDeviceProperties(&prop, device));
  deviceName_ = prop.name;
  smCount = prop.multiProcessorCount;

  const ModelConfig& c = model.cfg;
  DeviceWeights& w = weights;
  w.bf16 = model.weightDtype == DType::BF16;
  const uint64_t H = c.hidden;
  w.embed.alloc(uint64_t(c.vocab) * H * 2);
  uploadMatrix(w.embed.as<uint8_t>(), model.embed, w.bf16);
  if (model.lmHead.data == model.embed.data) {
    w.lmHeadPtr = w.embed.ptr;
  } else {
    w.lmHead.alloc(uint64_t(c.vocab) * H * 2);
    uploadMatrix(w.lmHead.as<uint8_t>(), model.lmHead, w.bf16);
    w.lmHeadPtr = w.lmHead.ptr;
  }
  uploadFloats(w.finalNorm, model.finalNorm);
  std::vector<float> invFreq(model.invFreq.begin(), model.invFreq.end());
  uploadFloats(w.invFreq, invFreq);
  w.layers.resize(c.numLayers);
  bool anyFp8 = opt.fp8Weights;
  for (const LayerWeights& L : model.layers)
    for (const cpu::WeightView* v : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      if (v->dtype == DType::F8_E4M3) anyFp8 = true;
  if (anyFp8 && (c.hidden % 16 != 0 || (c.numHeads * c.headDim) % 16 != 0 || c.ffn % 16 != 0))
    throw WeftError(Err::UnsupportedArch, "FP8 weights on the GPU need hidden size, query width and FFN width divisible by 16");
  DeviceBuffer staging;  // fp8: one matrix as bf16/f16 before it is quantized
  for (int l = 0; l < c.numLayers; l++) {
    const LayerWeights& L = model.layers[l];
    DeviceLayer& d = w.layers[l];
    uploadStacked(d.qkv, {&L.q, &L.k, &L.v}, w.bf16, opt.fp8Weights, staging);
    uploadStacked(d.o, {&L.o}, w.bf16, opt.fp8Weights, staging);
    uploadStacked(d.gateUp, {&L.gate, &L.up}, w.bf16, opt.fp8Weights, staging);
    uploadStacked(d.down, {&L.down}, w.bf16, opt.fp8Weights, staging);
    for (const DeviceMatrix* m : {&d.qkv, &d.o, &d.gateUp, &d.down}) {
      w.maxMatrixElems = std::max<uint64_t>(w.maxMatrixElems, uint64_t(m->rows * m->cols));
      w.fp8 = w.fp8 || m->fp8();
    }
    uploadFloats(d.inputNorm, L.inputNorm);
    uploadFloats(d.postNorm, L.postNorm);
    if (!L.qBias.empty()) {
      std::vector<float> b(L.qBias);
      b.insert(b.end(), L.kBias.begin(), L.kBias.end());
      b.insert(b.end(), L.vBias.begin(), L.vBias.end());
      uploadFloats(d.qkvBias, b);
    }
  }
  w.bytes = w.embed.bytes + w.lmHead.bytes;
  for (const DeviceLayer& d : w.layers) w.bytes += d.qkv.bytes() + d.o.bytes() + d.gateUp.bytes() + d.down.bytes();
  WEFT_CU(cudaStreamCreateWithFlags(&transfer, cudaStreamNonBlocking));
  WEFT_CU(cudaEventCreateWithFlags(&transferDone, cudaEventDisableTiming));
  WEFT_CU(cudaEventRecord(transferDone, transfer));
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device);
  if (leakOnDestroy) {  // a stuck stream may still use the weights and KV pages: freeing would wait for it
    for (DeviceLayer& d : weights.layers)
      for (DeviceMatrix* m : {&d.qkv, &d.o, &d.gateUp, &d.down}) {
        m->w.leak();
        m->scale.leak();
      }
    for (DeviceBuffer* b : {&weights.embed, &weights.lmHead, &weights.finalNorm, &weights.invFreq, &kvMemory}) b->leak();
    return;
  }
  if (transfer) cudaStreamSynchronize(transfer);
  for (auto& p : pendingTransfers_) cudaEventDestroy(p.first);
  if (transferDone) cudaEventDestroy(transferDone);
  if (transfer) cudaStreamDestroy(transfer);
}

// Workspace one context allocates (see CudaContext's constructor), to leave room for it.
uint64_t CudaBackend::contextBytes(const EngineOptions& opt) const {
  const ModelConfig& c = model_.cfg;
  const uint64_t T = opt.maxBatchTokens, R = opt.maxLogitRows, H = c.hidden, D = c.headDim;
  const uint64_t q = uint64_t(c.numHeads) * D, kv = uint64_t(c.numKvHeads) * D;
  const uint64_t act = T * H * 4 + std::max(T, R) * H * 2 + T * (q + 2 * kv) * 4 + T * q * 2 + T * c.ffn * 2 * 4 +
                       T * c.ffn * 2 + T * D * 4 + R * uint64_t(c.vocab) * 8;
  const uint64_t fp8Scratch = weights.fp8 ? weights.maxMatrixElems * 2 : 0;
  return act + fp8Scratch + (32ull << 20) + (64ull << 20);  // cuBLAS workspace, index and graphs
}

uint64_t CudaBackend::kvBudget(uint64_t requested) {
  WEFT_CU(cudaSetDevice(device));
  size_t freeBytes = 0, total = 0;
  WEFT_CU(cudaMemGetInfo(&freeBytes, &total));
  const uint64_t reserve = contextBytes(opt_) * uint64_t(opt_.numContexts) + (512ull << 20);
  if (freeBytes <= reserve)
    throw WeftError(Err::DeviceOutOfMemory, "device memory: " + std::to_string(freeBytes >> 20) + " MiB free after the weights, the " +
                                                std::to_string(opt_.numContexts) + " contexts need about " + std::to_string(reserve >> 20) + " MiB");
  return std::min<uint64_t>(requested, freeBytes - reserve);
}

void CudaBackend::attachKv(KvPool& kv) {
  WEFT_CU(cudaSetDevice(device));
  kvMemory.alloc((uint64_t(kv.numPages()) + 1) * kv.pageBytes());
  WEFT_CU(cudaMemset(kvMemory.ptr, 0, kvMemory.bytes));
}

std::unique_ptr<ExecContext> CudaBackend::makeContext(const Model& model, const EngineOptions& opt, KvPool& kv) {
  WEFT_CU(cudaSetDevice(device));
  // free memory read again: another process may have taken some since the KV pool was sized
  size_t freeBytes = 0, total = 0;
  WEFT_CU(cudaMemGetInfo(&freeBytes, &total));
  if (freeBytes < contextBytes(opt))
    throw WeftError(Err::DeviceOutOfMemory, "device memory: " + std::to_string(freeBytes >> 20) + " MiB free, a context needs about " +
                                                std::to_string(contextBytes(opt) >> 20) + " MiB (other processes on this GPU?)");
  return std::make_unique<CudaContext>(*this, model, opt, kv);
}

void CudaBackend::reapTransfers() {
  for (size_t i = 0; i < pendingTransfers_.size();) {
    if (cudaEventQuery(pendingTransfers_[i].first) == cudaSuccess) {
      cudaEventDestroy(pendingTransfers_[i].first);
      pendingTransfers_.erase(pendingTransfers_.begin() + long(i));
    } else {
      i++;
    }
  }
}

// Records the end of the transfers queued so far (every later step waits for it) and keeps the
// pinned buffer alive until they are done.
void CudaBackend::keepUntilDone(const HostBuffer& b) {
  cudaEventRecord(transferDone, transfer);
  cudaEvent_t e;
  if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess || cudaEventRecord(e, transfer) != cudaSuccess) {
    cudaGetLastError();
    cudaStreamSynchronize(transfer);  // cannot track it: wait (rare: out of resources)
    return;
  }
  pendingTransfers_.emplace_back(e, b);
}

// Parking copies the pages to pinned host memory on the transfer stream and returns at once; the
// pages go back to the pool, and every later step waits for the copy (CudaContext::beforeStep).
HostBuffer CudaBackend::parkPages(KvPool& kv, const std::vector<int>& pages) {
  WEFT_CU(cudaSetDevice(device));
  reapTransfers();
  const uint64_t pb = kv.pageBytes();
  HostBuffer b;
  b.size = pages.size() * pb;
  void* p = nullptr;
  WEFT_CU(cudaMallocHost(&p, b.size ? b.size : 1));
  b.data = std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [](uint8_t* q) { cudaFreeHost(q); });
  try {
    for (size_t i = 0; i < pages.size(); i++)
      WEFT_CU(cudaMemcpyAsync(b.data.get() + i * pb, kvMemory.as<uint8_t>() + uint64_t(pages[i]) * pb, pb, cudaMemcpyDeviceToHost, transfer));
  } catch (...) {
    keepUntilDone(b);  // copies already queued still read the pages and write the buffer
    throw;
  }
  keepUntilDone(b);
  return b;
}

void CudaBackend::restorePages(KvPool& kv, const std::vector<int>& pages, const HostBuffer& from) {
  WEFT_CU(cudaSetDevice(device));
  reapTransfers();
  const uint64_t pb = kv.pageBytes();
  try {
    for (size_t i = 0; i < pages.size(); i++)
      WEFT_CU(cudaMemcpyAsync(kvMemory.as<uint8_t>() + uint64_t(pages[i]) * pb, from.data.get() + i * pb, pb, cudaMemcpyHostToDevice, transfer));
  } catch (...) {
    keepUntilDone(from);
    throw;
  }
  keepUntilDone(from);
}

}  // namespace cuda

std::unique_ptr<Backend> makeCudaBackend(const Model& model, const EngineOptions& opt) {
  return std::make_unique<cuda::CudaBackend>(model, opt);
}

double cudaCopyBandwidth(int device, uint64_t bytes) {
  using cuda::check;
  WEFT_CU(cudaSetDevice(device));
  cuda::DeviceBuffer a(bytes), b(bytes);
  WEFT_CU(cudaMemset(a.ptr, 1, bytes));
  cudaEvent_t e0, e1;
  WEFT_CU(cudaEventCreate(&e0));
  WEFT_CU(cudaEventCreate(&e1));
  float best = 1e30f;
  for (int i = 0; i < 8; i++) {
    WEFT_CU(cudaEventRecord(e0));
    WEFT_CU(cudaMemcpyAsync(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice));
    WEFT_CU(cudaEventRecord(e1));
    WEFT_CU(cudaEventSynchronize(e1));
    float ms = 0;
    WEFT_CU(cudaEventElapsedTime(&ms, e0, e1));
    if (i > 0) best = std::min(best, ms);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * double(bytes) / (double(best) * 1e-3);
}

void cudaMemInfo(int device, uint64_t& freeBytes, uint64_t& total) {
  using cuda::check;
  WEFT_CU(cudaSetDevice(device));
  size_t f = 0, t = 0;
  WEFT_CU(cudaMemGetInfo(&f, &t));
  freeBytes = f;
  total = t;
}

int cudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace weft
