// The Node-API layer (with addon_spec.cpp and addon_util.h): the only code that touches Node-API.
// Every entry point turns native failures into JS errors carrying a catalog `code`; steps run in
// an AsyncWorker off the JS thread and settle a Promise.
#include <napi.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "addon_util.h"
#include "cpu/simd.h"

namespace weft {
namespace {

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeEngine",
                       {
                           InstanceMethod("load", &EngineWrap::Load),
                           InstanceMethod("createSequence", &EngineWrap::CreateSequence),
                           InstanceMethod("freeSequence", &EngineWrap::FreeSequence),
                           InstanceMethod("truncateSequence", &EngineWrap::TruncateSequence),
                           InstanceMethod("parkSequence", &EngineWrap::ParkSequence),
                           InstanceMethod("restoreSequence", &EngineWrap::RestoreSequence),
                           InstanceMethod("sequenceInfo", &EngineWrap::SequenceInfo),
                           InstanceMethod("setSampling", &EngineWrap::SetSampling),
                           InstanceMethod("step", &EngineWrap::Step),
                           InstanceMethod("stats", &EngineWrap::Stats),
                           InstanceMethod("contextReady", &EngineWrap::ContextReady),
                           InstanceMethod("injectFault", &EngineWrap::InjectFault),
                           InstanceMethod("releaseFault", &EngineWrap::ReleaseFault),
                           InstanceMethod("dispose", &EngineWrap::Dispose),
                       });
  }

  EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    guarded(info.Env(), [&] {
      if (info.Length() < 1 || !info[0].IsObject()) throw WeftError(Err::BadArgument, "NativeEngine(spec): spec must be an object");
      parseEngineSpec(info[0].As<Napi::Object>(), cfg_, opt_, files_, tensors_);
      return 0;
    });
  }

  // Called when a step settles or the model finishes loading: frees everything once disposed.
  void settled() {
    if (disposed_ && inflight_ == 0) engine_.reset();
  }

  Engine& engine() {
    if (disposed_) throw WeftError(Err::Disposed, "the engine was disposed");
    if (!engine_) throw WeftError(Err::BadArgument, "the engine is not loaded yet");
    return *engine_;
  }

  int inflight_ = 0;
  bool disposed_ = false;
  std::unique_ptr<Engine> engine_;
  ModelConfig cfg_;
  EngineOptions opt_;
  std::vector<std::string> files_;
  std::vector<TensorSpec> tensors_;

 private:


  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Step(const Napi::CallbackInfo& info);

  Napi::Value CreateSequence(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&] { return Napi::Number::New(info.Env(), double(engine().createSequence())); });
  }
  static int64_t seqId(const Napi::CallbackInfo& info, size_t i = 0) {
    if (info.Length() <= i || !info[i].IsNumber()) throw WeftError(Err::BadArgument, "sequence id must be a number");
    return int64_t(info[i].As<Napi::Number>().DoubleValue());
  }
  Napi::Value FreeSequence(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&] { engine().freeSequence(seqId(info)); return info.Env().Undefined(); });
  }
  Napi::Value TruncateSequence(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&] {
      if (info.Length() < 2) throw WeftError(Err::BadArgument, "truncate(id, numTokens): numTokens is missing");
      const int n = intArg(info[1], "truncate: numTokens");
      engine().truncate(seqId(info), n);
      return info.Env().Undefined();
    });
  }
  Napi::Value ParkSequence(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&] { engine().park(seqId(info)); return info.Env().Undefined(); });
  }
  Napi::Value RestoreSequence(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&] { engine().restore(seqId(info)); return info.Env().Undefined(); });
  }
  Napi::Value SequenceInfo(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&] {
      Sequence& s = engine().get(seqId(info));
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("id", double(s.id));
      o.Set("numTokens", s.numTokens.load());
      o.Set("numPages", double(s.pages.size()));
      o.Set("parked", s.parked);
      o.Set("busy", s.busy);
      return o;
    });
  }
  Napi::Value SetSampling(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&] {
      const int64_t id = seqId(info);
      if (info.Length() < 2 || !info[1].IsObject()) throw WeftError(Err::BadArgument, "setSampling(id, params): params must be an object", id);
      Napi::Object o = info[1].As<Napi::Object>();
      SamplingParams p;
      p.temperature = float(num(o, "temperature", 0));
      p.topK = intField(o, "topK", 0);
      p.topP = float(num(o, "topP", 1));
      p.minP = float(num(o, "minP", 0));
      p.repetitionPenalty = float(num(o, "repetitionPenalty", 1));
      p.presencePenalty = float(num(o, "presencePenalty", 0));
      p.frequencyPenalty = float(num(o, "frequencyPenalty", 0));
      const double seed = num(o, "seed", 0);
      if (!std::isfinite(seed) || seed < 0 || seed != std::floor(seed)) throw WeftError(Err::BadArgument, "sampling: seed must be a non-negative integer", id);
      p.seed = uint64_t(seed);
      p.logprobs = intField(o, "logprobs", 0);
      Napi::Value stop = o.Get("stopTokens");
      if (stop.IsArray()) {
        Napi::Array a = stop.As<Napi::Array>();
        for (uint32_t i = 0; i < a.Length(); i++) p.stopTokens.push_back(intArg(a.Get(i), "sampling: a stop token"));
      }
      engine().setSampling(id, p);
      return info.Env().Undefined();
    });
  }
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&] {
      Engine& e = engine();
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("kvPagesTotal", e.kv().numPages());
      o.Set("kvPagesFree", e.kv().numFree());
      o.Set("kvPageTokens", e.kv().pageTokens());
      o.Set("kvBytesPerToken", double(e.kv().bytesPerToken()));
      o.Set("kvDtype", e.kv().dtype() == DType::F16 ? "F16" : "F32");
      o.Set("backend", e.backend().name());
      o.Set("device", e.backend().deviceName());
      o.Set("contexts", e.numContexts());
      o.Set("contextsBusy", e.numBusyContexts());
      o.Set("threadsPerContext", e.options().numThreads);
      o.Set("maxContext", e.maxContext());
      o.Set("maxBatchTokens", e.options().maxBatchTokens);
      o.Set("maxBatchSequences", e.options().maxBatchSequences);
      o.Set("maxLogitRows", e.options().maxLogitRows);
      o.Set("sequences", double(e.numSequences()));
      o.Set("weightBytes", double(e.model().weightBytes));
      o.Set("deviceWeightBytes", double(e.backend().deviceWeightBytes()));
      o.Set("weightFormat", e.backend().weightFormat());
      o.Set("deviceLost", e.backend().lost());
      o.Set("pdl", e.contextUsesPdl());
      return o;
    });
  }
  // contextReady(ctx): false while a timed-out step of the context may still run on the device
  Napi::Value ContextReady(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&] { return Napi::Boolean::New(info.Env(), engine().reapStuck(intArg(info[0], "contextReady: context"))); });
  }
  // injectFault(ctx, kind) / releaseFault(ctx): test hooks (WEFT_FAULT_INJECTION=1), see ExecContext
  Napi::Value InjectFault(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&] {
      if (info.Length() < 2 || !info[1].IsString()) throw WeftError(Err::BadArgument, "injectFault(context, kind): kind must be a string");
      engine().injectFault(intArg(info[0], "injectFault: context"), info[1].As<Napi::String>().Utf8Value());
      return info.Env().Undefined();
    });
  }
  Napi::Value ReleaseFault(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&] { engine().releaseFault(intArg(info[0], "releaseFault: context")); return info.Env().Undefined(); });
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    disposed_ = true;
    settled();
    return info.Env().Undefined();
  }
};

class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, EngineWrap* w) : Napi::AsyncWorker(env), wrap_(w), deferred_(Napi::Promise::Deferred::New(env)) {
    ref_ = Napi::Persistent(w->Value());
    w->inflight_++;
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      auto model = loadModel(wrap_->cfg_, wrap_->files_, wrap_->tensors_, wrap_->opt_);
      engine_ = std::make_unique<Engine>(std::move(model), wrap_->opt_);
    } catch (const WeftError& e) {
      code_ = errCode(e.code);
      SetError(e.what());
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override {
    wrap_->inflight_--;
    wrap_->engine_ = std::move(engine_);
    wrap_->settled();
    deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& err) override {
    wrap_->inflight_--;
    wrap_->settled();
    deferred_.Reject(codedError(Env(), code_, err.Message()).Value());
  }

 private:
  EngineWrap* wrap_;
  Napi::ObjectReference ref_;
  Napi::Promise::Deferred deferred_;
  std::unique_ptr<Engine> engine_;
  const char* code_ = "WEFT_INTERNAL";
};

Napi::Value EngineWrap::Load(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (disposed_) throw WeftError(Err::Disposed, "the engine was disposed");
    if (engine_ || inflight_ > 0) throw WeftError(Err::BadArgument, "load() was already called");
    auto* w = new LoadWorker(info.Env(), this);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

class StepWorker : public Napi::AsyncWorker {
 public:
  StepWorker(Napi::Env env, EngineWrap* w, int ctx, std::vector<StepEntry>&& entries)
      : Napi::AsyncWorker(env), wrap_(w), ctx_(ctx), entries_(std::move(entries)), deferred_(Napi::Promise::Deferred::New(env)) {
    ref_ = Napi::Persistent(w->Value());
    w->inflight_++;
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      wrap_->engine_->execute(ctx_, entries_, out_);
    } catch (const WeftError& e) {
      code_ = errCode(e.code);
      seq_ = e.sequence;
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      SetError("out of host memory during a step");
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    const int V = wrap_->engine_->model().cfg.vocab;
    wrap_->engine_->finish(ctx_, entries_, true);
    wrap_->inflight_--;
    wrap_->settled();  // claims are released before any JS value is made (that may throw)
    // the common step (no logits, no top log-probabilities asked): four typed arrays instead of an
    // object per sequence (four property sets each through Node-API); JS makes the objects
    bool plain = true;
    for (const StepOutput& o : out_) plain = plain && o.logitRows == 0 && o.sampled.top.empty();
    if (plain) {
      const size_t n = out_.size();
      Napi::Float64Array seqs = Napi::Float64Array::New(env, n);
      Napi::Int32Array tokens = Napi::Int32Array::New(env, n);
      Napi::Float32Array logprobs = Napi::Float32Array::New(env, n);
      Napi::Uint8Array flags = Napi::Uint8Array::New(env, n);  // 1: sampled, 2: a stop token
      for (size_t i = 0; i < n; i++) {
        const StepOutput& o = out_[i];
        seqs[i] = double(o.seq);
        tokens[i] = o.hasSample ? o.sampled.token : -1;
        logprobs[i] = o.hasSample ? o.sampled.logprob : 0.f;
        flags[i] = uint8_t((o.hasSample ? 1 : 0) | (o.hasSample && o.sampled.stop ? 2 : 0));
      }
      Napi::Object packed = Napi::Object::New(env);
      packed.Set("seqs", seqs);
      packed.Set("tokens", tokens);
      packed.Set("logprobs", logprobs);
      packed.Set("flags", flags);
      deferred_.Resolve(packed);
      return;
    }
    Napi::Array results = Napi::Array::New(env, out_.size());
    for (size_t i = 0; i < out_.size(); i++) {
      const StepOutput& o = out_[i];
      Napi::Object r = Napi::Object::New(env);
      r.Set("seq", double(o.seq));
      if (o.hasSample) {
        r.Set("token", o.sampled.token);
        r.Set("logprob", o.sampled.logprob);
        r.Set("stop", o.sampled.stop);
        if (!o.sampled.top.empty()) {
          Napi::Array top = Napi::Array::New(env, o.sampled.top.size());
          for (size_t j = 0; j < o.sampled.top.size(); j++) {
            Napi::Object t = Napi::Object::New(env);
            t.Set("token", o.sampled.top[j].first);
            t.Set("logprob", o.sampled.top[j].second);
            top.Set(uint32_t(j), t);
          }
          r.Set("top", top);
        }
      }
      if (o.logitRows > 0) {
        Napi::Float32Array a = Napi::Float32Array::New(env, size_t(o.logitRows) * V);
        std::memcpy(a.Data(), o.logits.data(), o.logits.size() * sizeof(float));
        r.Set("logits", a);
      }
      results.Set(uint32_t(i), r);
    }
    deferred_.Resolve(results);
  }
  void OnError(const Napi::Error& err) override {
    wrap_->engine_->finish(ctx_, entries_, false, code_ == std::string("WEFT_DEVICE_TIMEOUT"));
    wrap_->inflight_--;
    wrap_->settled();
    deferred_.Reject(codedError(Env(), code_, err.Message(), seq_).Value());
  }

 private:
  EngineWrap* wrap_;
  Napi::ObjectReference ref_;
  int ctx_;
  std::vector<StepEntry> entries_;
  std::vector<StepOutput> out_;
  Napi::Promise::Deferred deferred_;
  const char* code_ = "WEFT_INTERNAL";
  int64_t seq_ = -1;
};

// step(ctx, [{seq, tokens: Int32Array | number[], logits: 0|1|2, sample: bool}]) -> Promise<results>
// Reading the entries can run JS (getters, proxies) that frees sequences or disposes the engine,
// so every value is copied first and sequences are resolved only afterwards.
Napi::Value EngineWrap::Step(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    // more tokens than the context limit are refused before any allocation (prepare() checks the
    // step budget and the sequence's own room)
    const int maxContext = engine().maxContext();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsArray())
      throw WeftError(Err::BadArgument, "step(context, entries): context must be a number and entries an array");
    const int ctx = intArg(info[0], "context");
    Napi::Array arr = info[1].As<Napi::Array>();
    const uint32_t numEntries = arr.Length();
    if (numEntries > uint32_t(opt_.maxBatchSequences))
      throw WeftError(Err::BatchTooLarge, "step has " + std::to_string(numEntries) + " sequences, the limit is " + std::to_string(opt_.maxBatchSequences));
    std::vector<StepEntry> entries(numEntries);
    std::vector<int64_t> ids(numEntries);
    for (uint32_t i = 0; i < numEntries; i++) {
      Napi::Value v = arr.Get(i);
      if (!v.IsObject()) throw WeftError(Err::BadArgument, "step entry " + std::to_string(i) + " must be an object");
      Napi::Object o = v.As<Napi::Object>();
      Napi::Value sv = o.Get("seq");
      if (!sv.IsNumber()) throw WeftError(Err::BadArgument, "step entry " + std::to_string(i) + ": seq must be a number");
      ids[i] = int64_t(sv.As<Napi::Number>().DoubleValue());
      Napi::Value tv = o.Get("tokens");
      const bool typed = tv.IsTypedArray() && tv.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array;
      if (!typed && !tv.IsArray())
        throw WeftError(Err::BadArgument, "step entry " + std::to_string(i) + ": tokens must be an Int32Array or an array");
      const size_t n = typed ? tv.As<Napi::Int32Array>().ElementLength() : tv.As<Napi::Array>().Length();
      if (n > size_t(maxContext))
        throw WeftError(Err::ContextOverflow, "step entry " + std::to_string(i) + " has " + std::to_string(n) + " tokens, the context limit is " + std::to_string(maxContext));
      if (typed) {
        Napi::Int32Array ta = tv.As<Napi::Int32Array>();
        entries[i].tokens.assign(ta.Data(), ta.Data() + n);
      } else {
        Napi::Array ta = tv.As<Napi::Array>();
        entries[i].tokens.resize(n);
        for (uint32_t j = 0; j < n; j++) {
          Napi::Value x = ta.Get(j);
          if (!x.IsNumber()) throw WeftError(Err::BadArgument, "step entry " + std::to_string(i) + ": tokens must be integers");
          const double d = x.As<Napi::Number>().DoubleValue();
          if (d != std::floor(d) || !std::isfinite(d) || d < -2147483648.0 || d > 2147483647.0)
            throw WeftError(Err::TokenOutOfRange, "token id " + std::to_string(d) + " is not a valid integer id");
          entries[i].tokens[j] = int32_t(d);
        }
      }
      const int lm = intField(o, "logits", 0);
      if (lm < 0 || lm > 2) throw WeftError(Err::BadArgument, "step entry " + std::to_string(i) + ": logits must be 0, 1 or 2");
      entries[i].logits = LogitsMode(lm);
      entries[i].sample = o.Get("sample").ToBoolean();
    }
    Engine& e = engine();  // again: the reads above may have disposed it
    for (uint32_t i = 0; i < numEntries; i++) entries[i].seq = &e.get(ids[i]);
    e.prepare(ctx, entries);
    StepWorker* w;
    try {
      w = new StepWorker(info.Env(), this, ctx, std::move(entries));
    } catch (...) {
      e.finish(ctx, entries, false);
      throw;
    }
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeEngine", EngineWrap::Define(env));
  exports.Set("measureBandwidth", Napi::Function::New(env, MeasureBandwidth));
  registerQuant(env, exports);
#ifdef WEFT_HAVE_CUDA
  exports.Set("cudaBuilt", true);
#else
  exports.Set("cudaBuilt", false);
#endif
  exports.Set("cudaDeviceCount", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return Napi::Number::New(info.Env(), cudaDeviceCount());
  }));
  // cudaCopyBandwidth(bytes, device = 0) -> bytes/s of device-to-device copy (read + write)
  exports.Set("cudaCopyBandwidth", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return guarded(info.Env(), [&]() -> Napi::Value {
      const double bytes = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : double(1ull << 30);
      const int device = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 0;
      if (!(bytes >= (1 << 20)) || !(bytes <= double(1ull << 36))) throw WeftError(Err::BadArgument, "cudaCopyBandwidth(bytes in 1 MiB..64 GiB)");
      return Napi::Number::New(info.Env(), cudaCopyBandwidth(device, uint64_t(bytes)));
    });
  }));
  // cudaMemInfo(device = 0) -> {free, total} bytes of device memory now (all processes' use counted)
  exports.Set("cudaMemInfo", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    return guarded(info.Env(), [&]() -> Napi::Value {
      const int device = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0;
      uint64_t freeBytes = 0, total = 0;
      cudaMemInfo(device, freeBytes, total);
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("free", double(freeBytes));
      o.Set("total", double(total));
      return o;
    });
  }));
#if defined(__AVX512F__)
  exports.Set("simd", "avx512");
#elif WEFT_SIMD
  exports.Set("simd", "avx2");
#else
  exports.Set("simd", "scalar");
#endif
  exports.Set("hardwareThreads", double(std::thread::hardware_concurrency()));
  // tuningCandidates() -> [{gemvRows, rowBlock, ...}]: the kernel settings worth timing (weft build)
  exports.Set("tuningCandidates", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    const std::vector<cpu::KernelTuning> all = cpu::tuningCandidates();
    Napi::Array out = Napi::Array::New(info.Env(), all.size());
    for (size_t i = 0; i < all.size(); i++) {
      Napi::Object o = Napi::Object::New(info.Env());
      for (const cpu::TuningKey& k : cpu::kTuningKeys) o.Set(k.name, all[i].*(k.field));
      out.Set(uint32_t(i), o);
    }
    return out;
  }));
  return exports;
}

}  // namespace
}  // namespace weft

static Napi::Object InitWeftNative(Napi::Env env, Napi::Object exports) { return weft::Init(env, exports); }
NODE_API_MODULE(weft_native, InitWeftNative)
