#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "backend.h"

namespace weft::cuda {

namespace {
int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launches of this thread use PDL while one of these lives (the forward pass of a context with it).
struct PdlScope {
  bool saved;
  explicit PdlScope(bool on) : saved(pdlOnThisThread()) { pdlOnThisThread() = on; }
  ~PdlScope() { pdlOnThisThread() = saved; }
};

int64_t nowNs() {
  return int64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}
}  // namespace

CudaContext::CudaContext(CudaBackend& backend, const Model& model, const EngineOptions& opt, KvPool& kv)
    : be_(backend), model_(model), opt_(opt) {
  try {
    init(model, opt, kv);
  } catch (...) {
    release();  // the destructor does not run for a constructor that throws
    throw;
  }
}

void CudaContext::init(const Model& model, const EngineOptions& opt, KvPool& kv) {
  const ModelConfig& c = model.cfg;
  const int64_t T = opt.maxBatchTokens, R = opt.maxLogitRows, H = c.hidden, D = c.headDim;
  const int64_t qDim = int64_t(c.numHeads) * D, kvDim = int64_t(c.numKvHeads) * D;
  qkvDim_ = int(qDim + 2 * kvDim);
  maxTokens_ = int(T);
  maxRows_ = int(R);
  kvl_ = KvLayout{be_.kvMemory.as<uint8_t>(), kv.pageBytes(), kv.blockBytes(), kv.pageTokens(), c.numKvHeads, c.headDim,
                  kv.dtype() == DType::F16};
  scratchPage_ = kv.numPages();
  // Two streams of different priority: when a context runs a long prefill while another decodes,
  // the GPU's block scheduler starts the decode's blocks first.
  int leastPriority = 0, greatestPriority = 0;
  WEFT_CU(cudaDeviceGetStreamPriorityRange(&leastPriority, &greatestPriority));
  WEFT_CU(cudaStreamCreateWithPriority(&decodeStream_, cudaStreamNonBlocking, greatestPriority));
  WEFT_CU(cudaStreamCreateWithPriority(&prefillStream_, cudaStreamNonBlocking, leastPriority));
  stream_ = decodeStream_;
  pdl_ = pdlAllowed();
  // WEFT_CUDA_WATCHDOG_MS: how long a step's GPU work may take (default 10 s; 0: no limit)
  const char* wd = getenv("WEFT_CUDA_WATCHDOG_MS");
  double wdMs = 10000.0;
  if (wd && *wd) {
    char* end = nullptr;
    wdMs = std::strtod(wd, &end);
    if (end == wd || *end != '\0' || !(wdMs >= 0) || !std::isfinite(wdMs))
      throw WeftError(Err::BadArgument, std::string("WEFT_CUDA_WATCHDOG_MS must be a number of milliseconds (0: no watchdog), got \"") + wd + "\"");
  }
  watchdogNs_ = int64_t(wdMs * 1e6);
  hangFlag_.alloc(64);
  std::memset(hangFlag_.ptr, 0, 64);
  if (be_.weights.fp8) wscratch_.alloc(be_.weights.maxMatrixElems * 2);
  if (D % 8 != 0) throw WeftError(Err::UnsupportedArch, "the CUDA backend needs a head dimension divisible by 8 (got " + std::to_string(D) + ")");
  WEFT_CU(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  check(cublasCreate(&blas_), "cublasCreate");
  check(cublasSetStream(blas_, stream_), "cublasSetStream");
  blasWorkspace_.alloc(32ull << 20);
  check(cublasSetWorkspace(blas_, blasWorkspace_.ptr, blasWorkspace_.bytes), "cublasSetWorkspace");

  x_.alloc(T * H * 4);
  xb_.alloc(std::max(T, R) * H * 2);
  qkv_.alloc(T * qkvDim_ * 4);
  att_.alloc(T * qDim * 2);
  gateUp_.alloc(T * c.ffn * 2 * 4);
  h_.alloc(T * c.ffn * 2);
  cos_.alloc(T * (D / 2) * 4);
  sin_.alloc(T * (D / 2) * 4);
  logits_.alloc(R * int64_t(c.vocab) * 4);
  probs_.alloc(R * int64_t(c.vocab) * 4);

  // index segments (ints): tok, pos, tokPages (T each), pageIdx, rowToken (R), tile first/count (T each)
  // the step's sequences own disjoint pages: at most the pool's, plus the padding page
  pageCap_ = int(std::min<int64_t>(int64_t(opt.maxBatchSequences) * ceilDiv(opt.maxContext, kv.pageTokens()), kv.numPages()) + 1);
  segTok_ = 0;
  segPos_ = segTok_ + T;
  segTokPages_ = segPos_ + T;
  segPageIdx_ = segTokPages_ + T;
  segRowToken_ = segPageIdx_ + pageCap_;
  segTile0_ = segRowToken_ + std::max(T, R);
  segTileN_ = segTile0_ + T;
  segTileSlot_ = segTileN_ + T;
  const size_t indexInts = segTileSlot_ + T;
  hostIndex_.alloc(indexInts * 4);
  const size_t packedBytes = indexInts * 4 + 16 + R * sizeof(SampleRow);
  index_.alloc(packedBytes);
  hostPacked_.alloc(packedBytes);

  hostSampleRows_.alloc(R * sizeof(SampleRow));
  out_.alloc(R * 8);
  hostOut_.alloc(R * 8);
  hostLogits_.alloc(R * int64_t(c.vocab) * 4);
  ensurePenaltyCapacity(size_t(R) * 256);

  // attention tiles: as many tokens as fit in shared memory (at most 16)
  const int group = c.numHeads / c.numKvHeads;
  int dev = be_.device, maxSmem = 0;
  WEFT_CU(cudaDeviceGetAttribute(&maxSmem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  mma_ = attentionMmaSupported(kvl_, c.numHeads) && getenv("WEFT_CUDA_NO_MMA") == nullptr;
  if (mma_) {  // multi-token tiles on tensor cores; the CUDA-core kernel takes single tokens only
    maxTileTokens_ = attentionMmaTileTokens(c.numHeads, c.numKvHeads);
    setAttentionSmemLimit(attentionSmem(1, group, int(D)));
  } else {
    maxTileTokens_ = 16;
    while (maxTileTokens_ > 1 && attentionSmem(maxTileTokens_, group, int(D)) > size_t(maxSmem)) maxTileTokens_ /= 2;
    if (attentionSmem(maxTileTokens_, group, int(D)) > size_t(maxSmem))
      throw WeftError(Err::UnsupportedArch, "head dimension " + std::to_string(D) + " needs more shared memory than this GPU has");
    setAttentionSmemLimit(attentionSmem(maxTileTokens_, group, int(D)));
  }
  // split-attention partials: one slot per single-token tile (one per sequence, or per token when
  // tiles hold one token)
  const int64_t slotCap = maxTileTokens_ == 1 ? std::max<int64_t>(T, opt.maxBatchSequences) : opt.maxBatchSequences;
  partial_.alloc(slotCap * c.numHeads * kAttentionSplits * (D + 2) * 4);
  captureGraphsOnce();
}

// Captures the decode graphs with PDL; should this driver refuse PDL in a capture, without it.
void CudaContext::captureGraphsOnce() {
  try {
    captureGraphs();
  } catch (const WeftError& e) {
    if (!pdl_ || e.code == Err::DeviceOutOfMemory || e.code == Err::DeviceLost) throw;
    fprintf(stderr, "weft cuda: capturing the decode graphs with programmatic dependent launch failed (%s); capturing without it\n", e.what());
    for (auto& g : graphs_) cudaGraphExecDestroy(g.second);
    graphs_.clear();
    pdl_ = false;
    captureGraphs();
  }
}

CudaContext::~CudaContext() { release(); }

void CudaContext::release() {
  cudaSetDevice(be_.device);
  if (stuckStream_) {
    releaseFault();  // a hang of our own making ends now
    // a real hang: its kernels may still run against this context's memory, and destroying or
    // freeing would wait for them (device-wide): give it all up instead
    for (int i = 0; i < 200 && !drained(); i++) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (stuckStream_) {
      for (DeviceBuffer* b : {&blasWorkspace_, &x_, &xb_, &qkv_, &att_, &gateUp_, &h_, &cos_, &sin_, &logits_, &probs_, &partial_, &index_,
                              &penalties_, &penaltyOrig_, &out_, &wscratch_})
        b->leak();
      for (PinnedBuffer* b : {&hostIndex_, &hostPacked_, &hostSampleRows_, &hostPenalties_, &hostOut_, &hostLogits_, &hangFlag_}) b->leak();
      graphs_.clear();
      blas_ = nullptr;
      done_ = nullptr;
      decodeStream_ = prefillStream_ = stream_ = nullptr;
      be_.leakOnDestroy = true;
      return;
    }
  }
  for (cudaStream_t s : {decodeStream_, prefillStream_})
    if (s && !(stuckStream_ == s && cudaStreamQuery(s) == cudaErrorNotReady) && stickyError() == cudaSuccess) cudaStreamSynchronize(s);
  for (auto& g : graphs_) cudaGraphExecDestroy(g.second);
  if (blas_) cublasDestroy(blas_);
  if (done_) cudaEventDestroy(done_);
  for (cudaStream_t s : {decodeStream_, prefillStream_})
    if (s) cudaStreamDestroy(s);
  graphs_.clear();
  blas_ = nullptr;
  done_ = nullptr;
  decodeStream_ = prefillStream_ = stream_ = nullptr;
}

// Grows the penalty buffers; on failure (out of memory) the old ones stay as they were.
void CudaContext::ensurePenaltyCapacity(size_t n) {
  if (n <= penaltyCap_) return;
  const size_t cap = std::max(n, penaltyCap_ * 2);
  DeviceBuffer pen(cap * sizeof(int2)), orig(cap * 4);
  PinnedBuffer host(cap * sizeof(int2));
  penalties_ = std::move(pen);
  penaltyOrig_ = std::move(orig);
  hostPenalties_ = std::move(host);
  penaltyCap_ = cap;
}

bool CudaContext::drained() {
  if (!stuckStream_) return true;
  const cudaError_t e = cudaStreamQuery(stuckStream_);
  if (e == cudaErrorNotReady) return false;
  if (isStickyError(e)) noteStickyError(e);
  cudaGetLastError();
  stuckStream_ = nullptr;
  std::memset(hangFlag_.ptr, 0, 64);
  return true;
}

void CudaContext::injectFault(const std::string& kind) {
  if (kind != "launch" && kind != "oom" && kind != "hang" && kind != "trap")
    throw WeftError(Err::BadArgument, "fault must be launch, oom, hang or trap (got \"" + kind + "\")");
  fault_ = kind;
}

void CudaContext::releaseFault() { reinterpret_cast<volatile int*>(hangFlag_.ptr)[0] = 1; }

// The injected fault meets this step where a real one would: a launch the runtime refuses, a
// workspace that cannot grow, GPU work that does not finish, a kernel that faults.
void CudaContext::enqueueFault() {
  const std::string kind = std::move(fault_);
  fault_.clear();
  if (kind == "launch") {
    check(faultBadLaunch(stream_), "launching a kernel (injected)");
  } else if (kind == "oom") {
    size_t freeBytes = 0, total = 0;
    WEFT_CU(cudaMemGetInfo(&freeBytes, &total));
    ensurePenaltyCapacity(total / sizeof(int2) + 1);  // more than the device has
  } else if (kind == "hang") {
    reinterpret_cast<volatile int*>(hangFlag_.ptr)[0] = 0;
    faultHang(hangFlag_.as<int>(), 120.0, stream_);
  } else if (kind == "trap") {
    faultTrap(stream_);
  }
}

// The same for a layer matrix: FP8 ones run the FP8 GEMV, or are dequantized into the workspace
// for cuBLAS when the step has more rows than the GEMV takes.
void CudaContext::gemm(const DeviceMatrix& W, const void* X, float* Y, float beta) {
  const int N = int(W.rows), K = int(W.cols);
  if (!W.fp8()) return gemm(W.w.ptr, X, Y, N, curT_, K, beta);
  if (curT_ <= kGemvMaxTokens) {
    gemvFp8(W.w.as<uint8_t>(), W.scale.as<float>(), X, Y, N, curT_, K, beta != 0.f, be_.weights.bf16, stream_);
    return;
  }
  dequantFp8(W.w.as<uint8_t>(), W.scale.as<float>(), wscratch_.ptr, N, K, be_.weights.bf16, stream_);
  gemm(wscratch_.ptr, X, Y, N, curT_, K, beta);
}

// Y[T, N] (f32) = X[T, K] . W[N, K]^T (+ beta Y): column-major Y^T = W^T' X^T with W as K x N.
void CudaContext::gemm(const void* W, const void* X, float* Y, int N, int T, int K, float beta) {
  if (T <= kGemvMaxTokens && K % 8 == 0) {  // decode: bandwidth-bound, our own kernel
    gemv(W, X, Y, N, T, K, beta != 0.f, be_.weights.bf16, stream_);
    return;
  }
  const float alpha = 1.f;
  const cudaDataType dt = be_.weights.bf16 ? CUDA_R_16BF : CUDA_R_16F;
  check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &alpha, W, dt, K, X, dt, K, &beta, Y, CUDA_R_32F, N,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

StepIndex CudaContext::indexFor(int nT, int nR, int nTiles) const {
  const int* b = index_.as<int>();
  return StepIndex{b, b + nT, b + 2 * nT, b + 3 * nT + nR + 3 * nTiles, b + 3 * nT, b + 3 * nT + nR, b + 3 * nT + nR + nTiles,
                   b + 3 * nT + nR + 2 * nTiles};
}

// The forward pass of T tokens, logits for R rows, over buffers at fixed addresses (so that it can
// be captured into a graph and replayed with a new step index). GEMMs of at most kGemvMaxTokens
// rows run on our GEMV kernel, larger ones on cuBLAS.
void CudaContext::enqueueForward(const StepIndex& ix, int T, int R, int numTiles, int tileTokens, bool anySplit, bool anyMulti,
                                 bool shareGpu) {
  const ModelConfig& c = model_.cfg;
  const DeviceWeights& w = be_.weights;
  const bool bf = w.bf16;
  const int H = c.hidden, D = c.headDim;
  float* x = x_.as<float>();
  curT_ = T;
  // sharing: cuBLAS and the attention grid keep to about half of the SMs, the decode steps of the
  // other contexts (on higher-priority streams) get the rest
  check(cublasSetSmCountTarget(blas_, shareGpu ? std::max(1, be_.smCount / 2) : 0), "cublasSetSmCountTarget");
  const int attnBlocks = shareGpu ? be_.smCount : 0;
  ropeTable(ix.pos, w.invFreq.as<float>(), cos_.as<float>(), sin_.as<float>(), T, D / 2, stream_);
  embed(ix.tok, w.embed.ptr, x, T, H, bf, stream_);
  for (int l = 0; l < c.numLayers; l++) {
    const DeviceLayer& L = w.layers[l];
    // attention: norm, q|k|v in one GEMM, RoPE + KV store, paged attention, output projection
    // added into the residual stream (accumulate / cuBLAS beta = 1)
    rmsnorm(x, nullptr, L.inputNorm.as<float>(), xb_.ptr, T, H, c.rmsEps, bf, stream_);
    gemm(L.qkv, xb_.ptr, qkv_.as<float>(), 0.f);
    ropeStoreKv(qkv_.as<float>(), L.qkvBias.as<float>(), cos_.as<float>(), sin_.as<float>(), ix, kvl_, l, T, c.numHeads, stream_);
    if (mma_ && anyMulti) {
      attentionMma(qkv_.as<float>(), qkvDim_, kvl_, l, ix, numTiles, c.numHeads, att_.ptr, bf, stream_);
      if (anySplit)
        attention(qkv_.as<float>(), qkvDim_, kvl_, l, ix, numTiles, 1, c.numHeads, att_.ptr, bf, partial_.as<float>(), true, true, 0, stream_);
    } else {
      attention(qkv_.as<float>(), qkvDim_, kvl_, l, ix, numTiles, tileTokens, c.numHeads, att_.ptr, bf, partial_.as<float>(), anySplit,
                false, attnBlocks, stream_);
    }
    gemm(L.o, att_.ptr, x, 1.f);
    // MLP: norm, gate|up in one GEMM, SwiGLU, down projection added into the residual stream
    rmsnorm(x, nullptr, L.postNorm.as<float>(), xb_.ptr, T, H, c.rmsEps, bf, stream_);
    gemm(L.gateUp, xb_.ptr, gateUp_.as<float>(), 0.f);
    siluMul(gateUp_.as<float>(), h_.ptr, T, c.ffn, bf, stream_);
    gemm(L.down, h_.ptr, x, 1.f);
  }
  if (R == 0) return;
  rmsnorm(x, ix.rowToken, w.finalNorm.as<float>(), xb_.ptr, R, H, c.rmsEps, bf, stream_);
  gemm(w.lmHeadPtr, xb_.ptr, logits_.as<float>(), c.vocab, R, H, 0.f);
}

void CudaContext::captureGraphs() {
  const int limit = std::min({maxTokens_, maxRows_, opt_.maxBatchSequences});
  for (int b : kGraphBatchSizes) {
    if (b > limit) break;
    cudaGraph_t graph = nullptr;
    PdlScope pdl(pdl_);
    WEFT_CU(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      enqueueForward(indexFor(b, b, b), b, b, b, 1, true, false, false);
    } catch (...) {
      if (cudaStreamEndCapture(stream_, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    WEFT_CU(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec;
    const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    check(e, "cudaGraphInstantiate");
    graphs_[b] = exec;
  }
}

void CudaContext::beforeStep() {
  WEFT_CU(cudaStreamWaitEvent(decodeStream_, be_.transferDone, 0));
  WEFT_CU(cudaStreamWaitEvent(prefillStream_, be_.transferDone, 0));
}

void CudaContext::forward(const Model& model, KvPool& kv, std::vector<StepEntry>& entries, std::vector<StepOutput>& out) {
  if (const cudaError_t lost = stickyError(); lost != cudaSuccess)
    throw WeftError(Err::DeviceLost, std::string("the GPU context was lost to ") + cudaGetErrorName(lost) + " in an earlier step; restart the process");
  if (stuckStream_ && !drained())
    throw WeftError(Err::DeviceTimeout, "this context's previous step is still running on the GPU");
  WEFT_CU(cudaSetDevice(be_.device));
  PdlScope pdlScope(pdl_);
  const ModelConfig& c = model.cfg;
  const int V = c.vocab, PT = kv.pageTokens();
  int* hi = hostIndex_.as<int>();
  int* tok = hi + segTok_;
  int* pos = hi + segPos_;
  int* tokPages = hi + segTokPages_;
  int* pageIdx = hi + segPageIdx_;
  int* rowToken = hi + segRowToken_;
  int* tile0 = hi + segTile0_;
  int* tileN = hi + segTileN_;
  int* tileSlot = hi + segTileSlot_;

  // Flatten the batch (as the CPU backend does) and lay out the page lists and attention tiles.
  int T = 0, R = 0, P = 0, tiles = 0, tileTokens = 1, slots = 0;
  bool decodeOnly = true, wantLogits = false;
  out.assign(entries.size(), StepOutput{});
  logitRowOf_.assign(entries.size(), -1);
  for (size_t e = 0; e < entries.size(); e++) {
    const StepEntry& en = entries[e];
    const Sequence& s = *en.seq;
    const int n = int(en.tokens.size());
    const int pageOff = P;
    const int usedPages = int(ceilDiv(en.startPos + n, PT));
    for (int i = 0; i < usedPages; i++) pageIdx[P++] = s.pages[i];
    for (int i = 0; i < n; i += maxTileTokens_) {
      tile0[tiles] = T + i;
      tileN[tiles] = std::min(maxTileTokens_, n - i);
      tileSlot[tiles] = tileN[tiles] == 1 ? slots++ : -1;  // at most one per entry: its last tile
      tileTokens = std::max(tileTokens, tileN[tiles]);
      tiles++;
    }
    const int first = T;
    for (int i = 0; i < n; i++, T++) {
      tok[T] = en.tokens[i];
      pos[T] = en.startPos + i;
      tokPages[T] = pageOff;
    }
    logitRowOf_[e] = R;
    if (en.logits == LogitsMode::All) {
      for (int t = first; t < T; t++) rowToken[R++] = t;
    } else if (en.logits == LogitsMode::Last || en.sample) {
      rowToken[R++] = T - 1;
    }
    if (n != 1 || !(en.sample || en.logits == LogitsMode::Last) || en.logits == LogitsMode::All) decodeOnly = false;
    if (en.logits != LogitsMode::None || (en.sample && en.seq->sampler.params.logprobs > 0)) wantLogits = true;
    out[e].seq = s.id;
  }
  // A decode step (one token and one logits row per sequence) replays the graph of the next batch
  // size up; the padding tokens write to the scratch page and their rows are ignored.
  int graphB = 0;
  if (decodeOnly && R == T) {
    for (const auto& g : graphs_)
      if (g.first >= T) { graphB = g.first; break; }
  }
  if (graphB > 0) {
    pageIdx[P] = scratchPage_;
    for (int t = T; t < graphB; t++) {
      tok[t] = 0;
      pos[t] = 0;
      tokPages[t] = P;
      rowToken[t] = t;
    }
    P++;
    for (int t = 0; t < graphB; t++) {
      tile0[t] = t;
      tileN[t] = 1;
      tileSlot[t] = t;
    }
  }
  const int TT = graphB ? graphB : T, RR = graphB ? graphB : R, tilesUsed = graphB ? graphB : tiles;

  // Sampler rows and their penalty lists (gathered, then copied to pinned memory at once).
  penaltyList_.clear();
  SampleRow* rows = hostSampleRows_.as<SampleRow>();
  sampleSlot_.assign(entries.size(), -1);
  int numSample = 0;
  size_t numPen = 0;
  for (size_t e = 0; e < entries.size(); e++) {
    const StepEntry& en = entries[e];
    if (!en.sample) continue;
    const SamplerState& st = en.seq->sampler;
    const SamplingParams& p = st.params;
    SampleRow& r = rows[numSample];
    r.logitRow = logitRowOf_[e] + (en.logits == LogitsMode::All ? int(en.tokens.size()) - 1 : 0);
    r.topK = p.topK;
    r.temperature = p.temperature;
    r.topP = p.topP;
    r.minP = p.minP;
    r.repetition = p.repetitionPenalty;
    r.presence = p.presencePenalty;
    r.frequency = p.frequencyPenalty;
    r.seed = p.seed;
    r.draw = st.draws;
    r.penaltyOffset = int(numPen);
    r.penaltyCount = 0;
    const bool rep = p.repetitionPenalty != 1.f, presence = p.presencePenalty != 0 || p.frequencyPenalty != 0;
    if (rep || presence) {
      // distinct tokens of the history (this step's included), flagged, with their sampled counts
      std::map<int32_t, int32_t> pen;
      if (rep) {
        for (int32_t t : en.seq->tokens) pen[t] = 1;
        for (int32_t t : en.tokens) pen[t] = 1;
      }
      if (presence)
        for (const auto& [id, count] : st.sampledCounts) pen[id] |= count << 1;
      for (const auto& [id, v] : pen) penaltyList_.push_back(make_int2(id, v));
      numPen = penaltyList_.size();
      r.penaltyCount = int(numPen) - r.penaltyOffset;
    }
    sampleSlot_[e] = numSample++;
  }
  if (numPen > 0) {
    ensurePenaltyCapacity(numPen);
    std::memcpy(hostPenalties_.ptr, penaltyList_.data(), numPen * sizeof(int2));
  }

  stream_ = decodeOnly ? decodeStream_ : prefillStream_;
  // A prefill shares the GPU when another step is in flight or a decode step ran in the last 50 ms
  // (a decode loop has short gaps between its steps).
  const int othersInFlight = be_.stepsInFlight.fetch_add(1);
  if (decodeOnly) be_.lastDecodeNs = nowNs();
  const bool shareGpu = !decodeOnly && (othersInFlight > 0 || nowNs() - be_.lastDecodeNs.load() < 50'000'000);
  struct Leave {
    CudaBackend& be;
    bool decode;
    int64_t (*now)();
    ~Leave() {
      if (decode) be.lastDecodeNs = now();
      be.stepsInFlight.fetch_sub(1);
    }
  } leave{be_, decodeOnly, &nowNs};
  check(cublasSetStream(blas_, stream_), "cublasSetStream");
  // WEFT_CUDA_TIMING=1: each step prints its GPU time (events around the forward) to stderr
  static const bool timing = getenv("WEFT_CUDA_TIMING") != nullptr;
  cudaEvent_t ev0 = nullptr, ev1 = nullptr;
  if (timing) {
    cudaEventCreate(&ev0);
    cudaEventCreate(&ev1);
  }
  try {
    // pack the index (and the sampler rows) and upload it with one copy
    const StepIndex ix = indexFor(TT, RR, tilesUsed);
    uint8_t* packed = hostPacked_.as<uint8_t>();
    int* pk = reinterpret_cast<int*>(packed);
    auto put = [&](const int* dev, size_t seg, int n) { std::memcpy(pk + (dev - index_.as<int>()), hi + seg, size_t(n) * 4); };
    put(ix.tok, segTok_, TT);
    put(ix.pos, segPos_, TT);
    put(ix.tokPages, segTokPages_, TT);
    put(ix.rowToken, segRowToken_, RR);
    put(ix.tileTok0, segTile0_, tilesUsed);
    put(ix.tileCount, segTileN_, tilesUsed);
    put(ix.tileSlot, segTileSlot_, tilesUsed);
    put(ix.pageIdx, segPageIdx_, P);
    const size_t rowsOff = ((size_t(ix.pageIdx - index_.as<int>()) + P) * 4 + 15) / 16 * 16;
    std::memcpy(packed + rowsOff, rows, numSample * sizeof(SampleRow));
    WEFT_CU(cudaMemcpyAsync(index_.ptr, packed, rowsOff + numSample * sizeof(SampleRow), cudaMemcpyHostToDevice, stream_));
    if (!fault_.empty()) enqueueFault();
    if (numPen > 0) WEFT_CU(cudaMemcpyAsync(penalties_.ptr, hostPenalties_.ptr, numPen * sizeof(int2), cudaMemcpyHostToDevice, stream_));
    if (timing) cudaEventRecord(ev0, stream_);
    if (graphB > 0) WEFT_CU(cudaGraphLaunch(graphs_[graphB], stream_));
    else enqueueForward(ix, T, R, tiles, tileTokens, slots > 0, tiles > slots, shareGpu);
    if (timing) cudaEventRecord(ev1, stream_);
    WEFT_CU(cudaGetLastError());
    // raw logits out before the sampler applies penalties in place
    if (wantLogits && R > 0)
      WEFT_CU(cudaMemcpyAsync(hostLogits_.ptr, logits_.ptr, size_t(R) * V * 4, cudaMemcpyDeviceToHost, stream_));
    if (numSample > 0) {
      sample(logits_.as<float>(), probs_.as<float>(), V, reinterpret_cast<const SampleRow*>(index_.as<uint8_t>() + rowsOff), numSample,
             penalties_.as<int2>(), penaltyOrig_.as<float>(), out_.as<int>(), stream_);
      WEFT_CU(cudaGetLastError());
      WEFT_CU(cudaMemcpyAsync(hostOut_.ptr, out_.ptr, numSample * 8, cudaMemcpyDeviceToHost, stream_));
    }
    WEFT_CU(cudaEventRecord(done_, stream_));
    // this (worker) thread polls until the GPU is done (lower latency than a blocking wait; the
    // JS thread never synchronizes)
    // the watchdog: GPU work still not done after watchdogNs_ fails the step with
    // WEFT_DEVICE_TIMEOUT; the context is then set aside until its stream drains (drained())
    cudaError_t st;
    const int64_t t0 = nowNs();
    int polls = 0;
    while ((st = cudaEventQuery(done_)) == cudaErrorNotReady) {
      if (++polls < 20000) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));  // a long step: stop spinning
        if (watchdogNs_ > 0 && nowNs() - t0 > watchdogNs_) {
          stuckStream_ = stream_;
          throw WeftError(Err::DeviceTimeout, "a step's GPU work did not finish within " + std::to_string(watchdogNs_ / 1000000) +
                                                  " ms (the watchdog); this context is set aside until its stream drains");
        }
      }
    }
    WEFT_CU(st);
    if (timing) {
      float ms = 0;
      cudaEventElapsedTime(&ms, ev0, ev1);
      fprintf(stderr, "weft cuda step: T %d R %d graph %d forward %.3f ms\n", T, R, graphB, ms);
      cudaEventDestroy(ev0);
      cudaEventDestroy(ev1);
    }
  } catch (...) {
    // nothing of this step may still run against the workspace (a timed-out step is waited for
    // by drained() instead; after a sticky error nothing runs any more)
    if (!stuckStream_ && stickyError() == cudaSuccess) {
      const cudaError_t e = cudaStreamSynchronize(stream_);
      if (isStickyError(e)) noteStickyError(e);
    }
    cudaGetLastError();
    if (stickyError() != cudaSuccess && !stuckStream_) {
      try {
        throw;
      } catch (const WeftError& e) {
        if (e.code == Err::DeviceLost) throw;
        throw WeftError(Err::DeviceLost, std::string(e.what()) + "; the GPU context is unusable: restart the process", e.sequence);
      }
    }
    throw;
  }
  const float* hl = hostLogits_.as<float>();
  for (size_t e = 0; e < entries.size(); e++) {
    if (entries[e].logits == LogitsMode::None) continue;
    const int count = entries[e].logits == LogitsMode::All ? int(entries[e].tokens.size()) : 1;
    out[e].logitRows = count;
    out[e].logits.assign(hl + int64_t(logitRowOf_[e]) * V, hl + int64_t(logitRowOf_[e] + count) * V);
  }
}

// The tokens were sampled on the GPU in forward(); this records them in the sequences' sampler
// state (draw counter, penalty counts) and adds top-n log-probabilities from the raw logits.
void CudaContext::sampleRows(std::vector<StepEntry>& entries, const std::vector<int>& rowOf, int vocab, std::vector<StepOutput>& out) {
  const int* outs = hostOut_.as<int>();
  const float* hl = hostLogits_.as<float>();
  // every result first (this may throw), then the sequences' sampler state (this may not)
  std::vector<SampleResult> results(entries.size());
  for (size_t i = 0; i < entries.size(); i++) {
    if (rowOf[i] < 0 || sampleSlot_[i] < 0) continue;
    const SamplingParams& p = entries[i].seq->sampler.params;
    SampleResult& res = results[i];
    res.token = outs[2 * sampleSlot_[i]];
    if (res.token < 0 || res.token >= vocab)
      throw WeftError(Err::Device, "sampler: no finite logit for sequence " + std::to_string(entries[i].seq->id) + " (non-finite activations?)",
                      entries[i].seq->id);
    std::memcpy(&res.logprob, &outs[2 * sampleSlot_[i] + 1], 4);
    if (p.logprobs > 0) {  // from the raw row copied back for this (the CPU sampler's code)
      const float* raw = hl + int64_t(rowOf[i]) * vocab;
      topScratch_.resize(vocab);
      topIds_.resize(vocab);
      topLogprobs(raw, vocab, p.logprobs, logSoftmaxNorm(raw, vocab, topScratch_.data()), topIds_.data(), res.top);
    }
    res.stop = std::find(p.stopTokens.begin(), p.stopTokens.end(), res.token) != p.stopTokens.end();
  }
  for (size_t i = 0; i < entries.size(); i++) {
    if (rowOf[i] < 0 || sampleSlot_[i] < 0) continue;
    SamplerState& st = entries[i].seq->sampler;
    st.sampledCounts[results[i].token]++;
    st.draws++;
    out[i].sampled = std::move(results[i]);
    out[i].hasSample = true;
  }
}

}  // namespace weft::cuda
