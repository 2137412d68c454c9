// The engine spec and the bandwidth probe: Node-API code kept apart from the EngineWrap class.
#include <algorithm>
#include <chrono>
#include <cmath>

#include "addon_util.h"
#include "cpu/simd.h"
#include "thread_pool.h"

namespace weft {

namespace {

// An optional array of numbers (empty when absent).
template <typename F>
auto numbers(const Napi::Object& o, const char* key, F convert) -> std::vector<decltype(convert(0.0))> {
  std::vector<decltype(convert(0.0))> out;
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return out;
  if (!v.IsArray()) throw WeftError(Err::BadArgument, std::string("config.") + key + " must be an array of numbers");
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    if (!e.IsNumber()) throw WeftError(Err::BadArgument, std::string("config.") + key + " must be an array of numbers");
    out.push_back(convert(e.As<Napi::Number>().DoubleValue()));
  }
  return out;
}

// What the CUDA backend does not implement (src/engine/config.ts cudaUnsupported says the same).
std::string cudaUnsupported(const ModelConfig& c) {
  std::string out;
  auto add = [&](bool used, const char* what) {
    if (used) out += (out.empty() ? "" : ", ") + std::string(what);
  };
  add(c.qkNorm, "per-head q/k norms");
  add(c.sandwichNorms || c.normOffset != 0 || c.embedScale, "Gemma norms and embedding scale");
  add(c.activation != Activation::Silu, "GeGLU");
  add(c.queryPreAttnScalar > 0 && c.queryPreAttnScalar != c.headDim, "query_pre_attn_scalar");
  add(c.attnSoftcap > 0 || c.finalSoftcap > 0, "logit soft-capping");
  add(c.rotaryDim > 0 && c.rotaryDim != c.headDim, "partial rotary");
  add(c.ropeInterleaved, "interleaved RoPE");
  add(c.ropeScaling == RopeScaling::LongRope, "LongRoPE");
  add(c.ropeLocalTheta > 0, "per-layer RoPE bases");
  add(std::any_of(c.layerWindow.begin(), c.layerWindow.end(), [&](int w) { return w > 0 && w < c.maxPositions; }), "sliding-window attention");
  add(c.outputBias, "o_proj bias");
  return out;
}

// options.tuning = {decode1, batch, prefill}: objects of kernel settings (cpu::kTuningKeys), each
// key optional (its default kept); an unknown key or a value out of range is an error naming it.
void parseTuning(const Napi::Value& v, EngineOptions& opt) {
  if (v.IsUndefined() || v.IsNull()) return;
  if (!v.IsObject()) throw WeftError(Err::BadArgument, "options.tuning must be an object {decode1, batch, prefill}");
  const Napi::Object t = v.As<Napi::Object>();
  const std::pair<const char*, cpu::KernelTuning*> kinds[] = {{"decode1", &opt.tuneDecode1}, {"batch", &opt.tuneBatch}, {"prefill", &opt.tunePrefill}};
  const Napi::Array kindNames = t.GetPropertyNames();
  for (uint32_t i = 0; i < kindNames.Length(); i++) {
    const std::string kind = kindNames.Get(i).ToString().Utf8Value();
    const auto* k = std::find_if(std::begin(kinds), std::end(kinds), [&](const auto& p) { return kind == p.first; });
    if (k == std::end(kinds)) throw WeftError(Err::BadArgument, "options.tuning." + kind + ": unknown kind of step (decode1, batch, prefill)");
    const Napi::Value sv = t.Get(kind);
    if (sv.IsUndefined()) continue;
    if (!sv.IsObject()) throw WeftError(Err::BadArgument, "options.tuning." + kind + " must be an object of numbers");
    const Napi::Object settings = sv.As<Napi::Object>();
    const Napi::Array keys = settings.GetPropertyNames();
    for (uint32_t j = 0; j < keys.Length(); j++) {
      const std::string key = keys.Get(j).ToString().Utf8Value();
      const std::string where = "options.tuning." + kind + "." + key;
      const auto* tk = std::find_if(std::begin(cpu::kTuningKeys), std::end(cpu::kTuningKeys), [&](const cpu::TuningKey& x) { return key == x.name; });
      if (tk == std::end(cpu::kTuningKeys)) throw WeftError(Err::BadArgument, where + ": unknown kernel setting");
      const Napi::Value n = settings.Get(key);
      const double d = n.IsNumber() ? n.As<Napi::Number>().DoubleValue() : NAN;
      if (!(d >= tk->min && d <= tk->max) || d != std::floor(d))
        throw WeftError(Err::BadArgument, where + " must be an integer in " + std::to_string(tk->min) + ".." + std::to_string(tk->max));
      k->second->*(tk->field) = int(d);
    }
  }
}

// tensors[i].scale = {file, offset, nbytes, dtype, grid: [rows, cols], block: [rows, cols]} (FP8 weights)
void parseScale(const Napi::Value& v, TensorSpec& ts) {
  if (v.IsUndefined() || v.IsNull()) return;
  const std::string where = "tensor " + ts.name + ": scale";
  if (!v.IsObject()) throw WeftError(Err::BadArgument, where + " must be an object");
  const Napi::Object o = v.As<Napi::Object>();
  ScaleSpec& s = ts.scale;
  s.file = intField(o, "file", -1, true);
  s.offset = uint64_t(num(o, "offset", 0, true));
  s.nbytes = uint64_t(num(o, "nbytes", 0, true));
  s.dtype = parseDtype(o.Get("dtype").ToString().Utf8Value(), where);
  auto pair = [&](const char* key, int64_t& a, int64_t& b) {
    const Napi::Value pv = o.Get(key);
    const Napi::Array arr = pv.IsArray() ? pv.As<Napi::Array>() : Napi::Array::New(o.Env());
    const double x = arr.Length() == 2 && arr.Get(0u).IsNumber() ? arr.Get(0u).As<Napi::Number>().DoubleValue() : NAN;
    const double y = arr.Length() == 2 && arr.Get(1u).IsNumber() ? arr.Get(1u).As<Napi::Number>().DoubleValue() : NAN;
    if (!(x >= 1 && y >= 1 && x <= 1e12 && y <= 1e12) || x != std::floor(x) || y != std::floor(y))
      throw WeftError(Err::BadArgument, where + "." + key + " must be [rows, cols] of positive integers");
    a = int64_t(x);
    b = int64_t(y);
  };
  pair("grid", s.gridRows, s.gridCols);
  pair("block", s.blockRows, s.blockCols);
  ts.hasScale = true;
}

}  // namespace

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
  cfg_.outputBias = c.Get("outputBias").ToBoolean();
  cfg_.qkNorm = c.Get("qkNorm").ToBoolean();
  cfg_.sandwichNorms = c.Get("sandwichNorms").ToBoolean();
  cfg_.embedScale = c.Get("embedScale").ToBoolean();
  cfg_.ropeInterleaved = c.Get("ropeInterleaved").ToBoolean();
  cfg_.normOffset = float(num(c, "normOffset", 0));
  cfg_.rotaryDim = intField(c, "rotaryDim", 0);
  cfg_.ropeLocalTheta = num(c, "ropeLocalTheta", 0);
  cfg_.queryPreAttnScalar = num(c, "queryPreAttnScalar", 0);
  cfg_.attnSoftcap = float(num(c, "attnLogitSoftcap", 0));
  cfg_.finalSoftcap = float(num(c, "finalLogitSoftcap", 0));
  Napi::Value act = c.Get("activation");
  const std::string activation = act.IsString() ? act.As<Napi::String>().Utf8Value() : "silu";
  if (activation != "silu" && activation != "gelu_tanh") throw WeftError(Err::BadArgument, "config.activation must be \"silu\" or \"gelu_tanh\"");
  cfg_.activation = activation == "gelu_tanh" ? Activation::GeluTanh : Activation::Silu;
  cfg_.layerWindow = numbers(c, "layerWindows", [](double w) { return int(w); });
  Napi::Value rs = c.Get("ropeScaling");
  if (rs.IsObject()) {
    Napi::Object r = rs.As<Napi::Object>();
    Napi::Value tv = r.Get("type");
    const std::string type = tv.IsString() ? tv.As<Napi::String>().Utf8Value() : "llama3";
    if (type == "llama3") {
      cfg_.ropeScaling = RopeScaling::Llama3;
      cfg_.ropeFactor = num(r, "factor", 1, true);
      cfg_.ropeLowFreqFactor = num(r, "lowFreqFactor", 1, true);
      cfg_.ropeHighFreqFactor = num(r, "highFreqFactor", 4, true);
      cfg_.ropeOriginalMax = num(r, "originalMaxPositionEmbeddings", 8192, true);
    } else if (type == "linear") {
      cfg_.ropeScaling = RopeScaling::Linear;
      cfg_.ropeFactor = num(r, "factor", 1, true);
    } else if (type == "longrope") {
      cfg_.ropeScaling = RopeScaling::LongRope;
      cfg_.ropeOriginalMax = num(r, "originalMaxPositionEmbeddings", 0, true);
      cfg_.ropeAttnFactor = num(r, "attentionFactor", 1, true);
      cfg_.ropeShortFactor = numbers(r, "shortFactor", [](double x) { return x; });
      cfg_.ropeLongFactor = numbers(r, "longFactor", [](double x) { return x; });
    } else {
      throw WeftError(Err::UnsupportedArch, "rope scaling type \"" + type + "\" is not supported");
    }
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
    parseScale(o.Get("scale"), ts);
    tensors_.push_back(std::move(ts));
  }
  Napi::Value ov = spec.Get("options");
  Napi::Object o = ov.IsObject() ? ov.As<Napi::Object>() : Napi::Object::New(spec.Env());
  Napi::Value be = o.Get("backend");
  const std::string backend = be.IsString() ? be.As<Napi::String>().Utf8Value() : "cpu";
  if (backend != "cpu" && backend != "cuda") throw WeftError(Err::BadArgument, "backend must be \"cpu\" or \"cuda\"");
  opt_.backend = backend == "cuda" ? BackendKind::Cuda : BackendKind::Cpu;
  if (opt_.backend == BackendKind::Cuda) {
    const std::string missing = cudaUnsupported(cfg_);
    if (!missing.empty()) throw WeftError(Err::UnsupportedArch, "the CUDA backend does not implement " + missing + " (use the cpu backend)");
  }
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
  Napi::Value wf = o.Get("weightFormat");
  if (wf.IsString()) {
    const std::string f = wf.As<Napi::String>().Utf8Value();
    if (f != "fp8" && f != "source") throw WeftError(Err::BadArgument, "weightFormat must be \"source\" or \"fp8\" (got \"" + f + "\")");
    opt_.fp8Weights = f == "fp8";
    if (opt_.fp8Weights && opt_.backend != BackendKind::Cuda)
      throw WeftError(Err::BadArgument, "FP8 weights run on the cuda backend (on the CPU, quantize to q8_0 or q4_k)");
  }
  parseTuning(o.Get("tuning"), opt_);
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
