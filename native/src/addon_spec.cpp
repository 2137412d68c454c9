// The engine spec and the bandwidth probe: Node-API code kept apart from the EngineWrap class.
#include <algorithm>
#include <chrono>

#include "addon_util.h"
#include "cpu/simd.h"
#include "thread_pool.h"

namespace weft {

void parseEngineSpec(const Napi::Object& spec, ModelConfig& cfg_, EngineOptions& opt_, std::vector<std::string>& files_,
                   std::vector<TensorSpec>& tensors_) {
  Napi::Object c = spec.Get("config").As<Napi::Object>();
  if (!spec.Get("config").IsObject()) throw WeftError(Err::BadArgument, "spec.config must be an object");
  cfg_.hidden = intField(c, "hiddenSize", 0, true);
  cfg_.numLayers = intField(c, "numLayers", 0, true);
  cfg_.numHeads = intField(c, "numHeads", 0, true);
  cfg_.numKvHeads = intField(c, "numKvHeads", 0, true);
  cfg_.headDim = intField(c, "headDim", 0, true);
  cfg_.ffn = intField(c, "intermediateSize", 0, true);
  cfg_.vocab = intField(c, "vocabSize", 0, true);
  cfg_.maxPositions = intField(c, "maxPositionEmbeddings", 0, true);
  cfg_.rmsEps = float(num(c, "rmsNormEps", 1e-6, true));
  cfg_.ropeTheta = num(c, "ropeTheta", 10000, true);
  cfg_.attentionBias = c.Get("attentionBias").ToBoolean();
  Napi::Value rs = c.Get("ropeScaling");
  if (rs.IsObject()) {
    Napi::Object r = rs.As<Napi::Object>();
    cfg_.ropeLlama3 = true;
    cfg_.ropeFactor = num(r, "factor", 1, true);
    cfg_.ropeLowFreqFactor = num(r, "lowFreqFactor", 1, true);
    cfg_.ropeHighFreqFactor = num(r, "highFreqFactor", 4, true);
    cfg_.ropeOriginalMax = num(r, "originalMaxPositionEmbeddings", 8192, true);
  }
  Napi::Value f = spec.Get("files");
  if (!f.IsArray()) throw WeftError(Err::BadArgument, "spec.files must be an array of paths");
  Napi::Array fa = f.As<Napi::Array>();
  for (uint32_t i = 0; i < fa.Length(); i++) files_.push_back(fa.Get(i).ToString().Utf8Value());
  Napi::Value t = spec.Get("tensors");
  if (!t.IsArray()) throw WeftError(Err::BadArgument, "spec.tensors must be an array");
  Napi::Array ta = t.As<Napi::Array>();
  for (uint32_t i = 0; i < ta.Length(); i++) {
    Napi::Object o = ta.Get(i).As<Napi::Object>();
    TensorSpec ts;
    ts.name = o.Get("name").ToString().Utf8Value();
    ts.file = intField(o, "file", -1, true);
    ts.offset = uint64_t(num(o, "offset", 0, true));
    ts.nbytes = uint64_t(num(o, "nbytes", 0, true));
    ts.dtype = parseDtype(o.Get("dtype").ToString().Utf8Value(), "tensor " + ts.name);
    Napi::Array shape = o.Get("shape").As<Napi::Array>();
    for (uint32_t j = 0; j < shape.Length(); j++) ts.shape.push_back(int64_t(shape.Get(j).As<Napi::Number>().DoubleValue()));
    tensors_.push_back(std::move(ts));
  }
  Napi::Value ov = spec.Get("options");
  Napi::Object o = ov.IsObject() ? ov.As<Napi::Object>() : Napi::Object::New(spec.Env());
  Napi::Value be = o.Get("backend");
  const std::string backend = be.IsString() ? be.As<Napi::String>().Utf8Value() : "cpu";
  if (backend != "cpu" && backend != "cuda") throw WeftError(Err::BadArgument, "backend must be \"cpu\" or \"cuda\"");
  opt_.backend = backend == "cuda" ? BackendKind::Cuda : BackendKind::Cpu;
  opt_.cudaDevice = intField(o, "cudaDevice", 0);
  opt_.numContexts = intField(o, "contexts", 1);
  opt_.numThreads = intField(o, "threads", 1);
  opt_.maxBatchTokens = intField(o, "maxBatchTokens", 512);
  opt_.maxBatchSequences = intField(o, "maxBatchSequences", 64);
  opt_.maxLogitRows = intField(o, "maxLogitRows", 64);
  opt_.maxContext = intField(o, "maxContext", 0);
  opt_.kvPageTokens = intField(o, "kvPageTokens", 16);
  double mem = num(o, "kvMemoryBytes", double(256ull << 20));
  if (!(mem > 0) || !std::isfinite(mem)) throw WeftError(Err::BadArgument, "kvMemoryBytes must be a positive number");
  opt_.kvMemoryBytes = uint64_t(mem);
  Napi::Value kd = o.Get("kvDtype");
  opt_.kvDtype = kd.IsString() ? parseDtype(kd.As<Napi::String>().Utf8Value(), "kvDtype") : DType::F32;
  if (opt_.kvDtype != DType::F32 && opt_.kvDtype != DType::F16)
    throw WeftError(Err::UnsupportedDtype, std::string("kvDtype: ") + dtypeName(opt_.kvDtype) + " KV is not supported (F32, F16)");
}

// measureBandwidth(bytes, threads) -> {readBytesPerS}: best of several passes summing a buffer
// with `threads` threads (each its own slice). Blocks the calling thread: for benchmarks only.
Napi::Value MeasureBandwidth(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const double bytesD = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : double(512ull << 20);
    const int threads = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 1;
    if (!(bytesD >= 1 << 20) || threads < 1 || threads > 256) throw WeftError(Err::BadArgument, "measureBandwidth(bytes >= 1 MiB, threads 1..256)");
    const size_t n = size_t(bytesD) / sizeof(float);
    std::vector<float> buf(n, 1.0f);
    ThreadPool pool(threads);
    double best = 1e30;
    std::vector<double> sink(threads);
    for (int pass = 0; pass < 6; pass++) {
      auto t0 = std::chrono::steady_clock::now();
      pool.run([&](int ti, int nth) {
        int64_t b, e;
        ThreadPool::chunk(int64_t(n), 4096, ti, nth, b, e);
        simd::vf acc0 = simd::zero(), acc1 = simd::zero(), acc2 = simd::zero(), acc3 = simd::zero();
        int64_t i = b;
        for (; i + 4 * simd::VL <= e; i += 4 * simd::VL) {
          acc0 = simd::add(acc0, simd::load(buf.data() + i));
          acc1 = simd::add(acc1, simd::load(buf.data() + i + simd::VL));
          acc2 = simd::add(acc2, simd::load(buf.data() + i + 2 * simd::VL));
          acc3 = simd::add(acc3, simd::load(buf.data() + i + 3 * simd::VL));
        }
        float s = simd::sum(simd::add(simd::add(acc0, acc1), simd::add(acc2, acc3)));
        for (; i < e; i++) s += buf[i];
        sink[ti] = s;
      });
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (pass > 0) best = std::min(best, dt);
    }
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("readBytesPerS", double(n * sizeof(float)) / best);
    o.Set("bytes", double(n * sizeof(float)));
    o.Set("threads", threads);
    o.Set("checksum", sink[0]);
    return o;
  });
}

}  // namespace weft
