#include <algorithm>
#include <cmath>

#include "backend.h"

namespace weft::cuda {

namespace {
int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

CudaContext::CudaContext(CudaBackend& backend, const Model& model, const EngineOptions& opt, KvPool& kv)
    : be_(backend), model_(model), opt_(opt) {
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
  if (D % 8 != 0) throw WeftError(Err::UnsupportedArch, "the CUDA backend needs a head dimension divisible by 8 (got " + std::to_string(D) + ")");
  WEFT_CU(cudaEventCreateWithFlags(&done_, cudaEventBlockingSync | cudaEventDisableTiming));
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
  partial_.alloc(int64_t(opt.maxBatchSequences) * c.numHeads * kAttentionSplits * (D + 2) * 4);

  // index segments (ints): tok, pos, tokPages (T each), pageIdx, rowToken (R), tile first/count (T each)
  pageCap_ = int(int64_t(opt.maxBatchSequences) * ceilDiv(opt.maxContext, kv.pageTokens()) + 1);
  segTok_ = 0;
  segPos_ = segTok_ + T;
  segTokPages_ = segPos_ + T;
  segPageIdx_ = segTokPages_ + T;
  segRowToken_ = segPageIdx_ + pageCap_;
  segTile0_ = segRowToken_ + std::max(T, R);
  segTileN_ = segTile0_ + T;
  segTileSlot_ = segTileN_ + T;
  const size_t indexInts = segTileSlot_ + T;
  index_.alloc(indexInts * 4);
  hostIndex_.alloc(indexInts * 4);
  const int* base = index_.as<int>();
  ix_ = StepIndex{base + segTok_, base + segPos_, base + segTokPages_, base + segPageIdx_, base + segRowToken_, base + segTile0_, base + segTileN_,
                  base + segTileSlot_};

  sampleRows_.alloc(R * sizeof(SampleRow));
  hostSampleRows_.alloc(R * sizeof(SampleRow));
  outToken_.alloc(R * 4);
  outLogprob_.alloc(R * 4);
  hostOutToken_.alloc(R * 4);
  hostOutLogprob_.alloc(R * 4);
  hostLogits_.alloc(R * int64_t(c.vocab) * 4);
  ensurePenaltyCapacity(size_t(R) * 256);

  // attention tiles: as many tokens as fit in shared memory (at most 16)
  const int group = c.numHeads / c.numKvHeads;
  int dev = be_.device, maxSmem = 0;
  WEFT_CU(cudaDeviceGetAttribute(&maxSmem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  maxTileTokens_ = 16;
  while (maxTileTokens_ > 1 && attentionSmem(maxTileTokens_, group, int(D)) > size_t(maxSmem)) maxTileTokens_ /= 2;
  if (attentionSmem(maxTileTokens_, group, int(D)) > size_t(maxSmem))
    throw WeftError(Err::UnsupportedArch, "head dimension " + std::to_string(D) + " needs more shared memory than this GPU has");
  setAttentionSmemLimit(attentionSmem(maxTileTokens_, group, int(D)));
  captureGraphs();
}

CudaContext::~CudaContext() {
  cudaSetDevice(be_.device);
  for (cudaStream_t s : {decodeStream_, prefillStream_})
    if (s) cudaStreamSynchronize(s);
  for (auto& g : graphs_) cudaGraphExecDestroy(g.second);
  if (blas_) cublasDestroy(blas_);
  if (done_) cudaEventDestroy(done_);
  for (cudaStream_t s : {decodeStream_, prefillStream_})
    if (s) cudaStreamDestroy(s);
}

void CudaContext::ensurePenaltyCapacity(size_t n) {
  if (n <= penaltyCap_) return;
  penaltyCap_ = std::max(n, penaltyCap_ * 2);
  penalties_.alloc(penaltyCap_ * sizeof(int2));
  penaltyOrig_.alloc(penaltyCap_ * 4);
  hostPenalties_.alloc(penaltyCap_ * sizeof(int2));
}

// Y[T, N] (f32) = X[T, K] . W[N, K]^T (+ beta Y): column-major Y^T = W^T' X^T with W as K x N.
void CudaContext::gemm(const void* W, const void* X, float* Y, int N, int T, int K, float beta) {
  const float alpha = 1.f;
  const cudaDataType dt = be_.weights.bf16 ? CUDA_R_16BF : CUDA_R_16F;
  check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &alpha, W, dt, K, X, dt, K, &beta, Y, CUDA_R_32F, N,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

// The forward pass of T tokens, logits for R rows, over buffers at fixed addresses (so that it
// can be captured into a graph and replayed with a new step index).
void CudaContext::enqueueForward(int T, int R, int numTiles, int tileTokens) {
  const ModelConfig& c = model_.cfg;
  const DeviceWeights& w = be_.weights;
  const bool bf = w.bf16;
  const int H = c.hidden, D = c.headDim, F = c.ffn, qDim = c.numHeads * D;
  ropeTable(ix_.pos, w.invFreq.as<float>(), cos_.as<float>(), sin_.as<float>(), T, D / 2, stream_);
  embed(ix_.tok, w.embed.ptr, x_.as<float>(), T, H, bf, stream_);
  for (int l = 0; l < c.numLayers; l++) {
    const DeviceLayer& L = w.layers[l];
    // attention: norm, q|k|v in one GEMM, RoPE + KV store, paged attention, output projection
    // added into the residual stream (cuBLAS beta = 1)
    rmsnorm(x_.as<float>(), nullptr, L.inputNorm.as<float>(), xb_.ptr, T, H, c.rmsEps, bf, stream_);
    gemm(L.qkv.ptr, xb_.ptr, qkv_.as<float>(), qkvDim_, T, H, 0.f);
    ropeStoreKv(qkv_.as<float>(), L.qkvBias.as<float>(), cos_.as<float>(), sin_.as<float>(), ix_, kvl_, l, T, c.numHeads, stream_);
    attention(qkv_.as<float>(), qkvDim_, kvl_, l, ix_, numTiles, tileTokens, c.numHeads, att_.ptr, bf, partial_.as<float>(), stream_);
    gemm(L.o.ptr, att_.ptr, x_.as<float>(), H, T, qDim, 1.f);
    // MLP: norm, gate|up in one GEMM, SwiGLU, down projection added into the residual stream
    rmsnorm(x_.as<float>(), nullptr, L.postNorm.as<float>(), xb_.ptr, T, H, c.rmsEps, bf, stream_);
    gemm(L.gateUp.ptr, xb_.ptr, gateUp_.as<float>(), 2 * F, T, H, 0.f);
    siluMul(gateUp_.as<float>(), h_.ptr, T, F, bf, stream_);
    gemm(L.down.ptr, h_.ptr, x_.as<float>(), H, T, F, 1.f);
  }
  if (R == 0) return;
  rmsnorm(x_.as<float>(), ix_.rowToken, w.finalNorm.as<float>(), xb_.ptr, R, H, c.rmsEps, bf, stream_);
  gemm(w.lmHeadPtr, xb_.ptr, logits_.as<float>(), c.vocab, R, H, 0.f);
}

void CudaContext::captureGraphs() {
  const int limit = std::min({maxTokens_, maxRows_, opt_.maxBatchSequences});
  for (int b : kGraphBatchSizes) {
    if (b > limit) break;
    cudaGraph_t graph;
    WEFT_CU(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      enqueueForward(b, b, b, 1);
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
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
  WEFT_CU(cudaSetDevice(be_.device));
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

  // Sampler rows and their penalty lists.
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
      ensurePenaltyCapacity(numPen + pen.size());
      int2* hp = hostPenalties_.as<int2>();
      for (const auto& [id, v] : pen) hp[numPen++] = make_int2(id, v);
      r.penaltyCount = int(numPen) - r.penaltyOffset;
    }
    sampleSlot_[e] = numSample++;
  }

  stream_ = decodeOnly ? decodeStream_ : prefillStream_;
  check(cublasSetStream(blas_, stream_), "cublasSetStream");
  try {
    auto up = [&](size_t seg, int n) {
      if (n > 0) WEFT_CU(cudaMemcpyAsync(index_.as<int>() + seg, hi + seg, size_t(n) * 4, cudaMemcpyHostToDevice, stream_));
    };
    up(segTok_, TT);
    up(segPos_, TT);
    up(segTokPages_, TT);
    up(segPageIdx_, P);
    up(segRowToken_, RR);
    up(segTile0_, tilesUsed);
    up(segTileN_, tilesUsed);
    up(segTileSlot_, tilesUsed);
    if (numSample > 0) {
      WEFT_CU(cudaMemcpyAsync(sampleRows_.ptr, rows, numSample * sizeof(SampleRow), cudaMemcpyHostToDevice, stream_));
      if (numPen > 0) WEFT_CU(cudaMemcpyAsync(penalties_.ptr, hostPenalties_.ptr, numPen * sizeof(int2), cudaMemcpyHostToDevice, stream_));
    }
    if (graphB > 0) WEFT_CU(cudaGraphLaunch(graphs_[graphB], stream_));
    else enqueueForward(T, R, tiles, tileTokens);
    WEFT_CU(cudaGetLastError());
    // raw logits out before the sampler applies penalties in place
    if (wantLogits && R > 0)
      WEFT_CU(cudaMemcpyAsync(hostLogits_.ptr, logits_.ptr, size_t(R) * V * 4, cudaMemcpyDeviceToHost, stream_));
    if (numSample > 0) {
      sample(logits_.as<float>(), probs_.as<float>(), V, sampleRows_.as<SampleRow>(), numSample, penalties_.as<int2>(),
             penaltyOrig_.as<float>(), outToken_.as<int>(), outLogprob_.as<float>(), stream_);
      WEFT_CU(cudaGetLastError());
      WEFT_CU(cudaMemcpyAsync(hostOutToken_.ptr, outToken_.ptr, numSample * 4, cudaMemcpyDeviceToHost, stream_));
      WEFT_CU(cudaMemcpyAsync(hostOutLogprob_.ptr, outLogprob_.ptr, numSample * 4, cudaMemcpyDeviceToHost, stream_));
    }
    WEFT_CU(cudaEventRecord(done_, stream_));
    // this (worker) thread sleeps until the GPU is done: the JS thread never synchronizes
    WEFT_CU(cudaEventSynchronize(done_));
  } catch (...) {
    cudaStreamSynchronize(stream_);  // nothing of this step may still run against the workspace
    cudaGetLastError();
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
  const int* toks = hostOutToken_.as<int>();
  const float* lps = hostOutLogprob_.as<float>();
  const float* hl = hostLogits_.as<float>();
  for (size_t i = 0; i < entries.size(); i++) {
    if (rowOf[i] < 0 || sampleSlot_[i] < 0) continue;
    SamplerState& st = entries[i].seq->sampler;
    const SamplingParams& p = st.params;
    SampleResult res;
    res.token = toks[sampleSlot_[i]];
    res.logprob = lps[sampleSlot_[i]];
    if (p.logprobs > 0) {
      const float* raw = hl + int64_t(rowOf[i]) * vocab;
      const float mx = *std::max_element(raw, raw + vocab);
      double sum = 0;
      for (int v = 0; v < vocab; v++) sum += std::exp(double(raw[v]) - mx);
      const double logNorm = mx + std::log(sum);
      std::vector<int32_t> ids(vocab);
      for (int v = 0; v < vocab; v++) ids[v] = v;
      const int k = std::min(p.logprobs, vocab);
      std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                        [&](int32_t a, int32_t b) { return raw[a] > raw[b] || (raw[a] == raw[b] && a < b); });
      for (int j = 0; j < k; j++) res.top.emplace_back(ids[j], float(double(raw[ids[j]]) - logNorm));
    }
    st.sampledCounts[res.token]++;
    st.draws++;
    res.stop = std::find(p.stopTokens.begin(), p.stopTokens.end(), res.token) != p.stopTokens.end();
    out[i].sampled = std::move(res);
    out[i].hasSample = true;
  }
}

}  // namespace weft::cuda
