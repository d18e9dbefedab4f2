// libagentlm C++17 wrapper: header-only RAII over the C API in agentlm.h.
//
// - Model, Session: move-only owners of the C handles (Model is cheap to copy() — reference counted).
// - Every failure throws agentlm::Error (status + message), carrying the library's error text.
// - Callbacks are lambdas; an exception thrown by one is caught before it reaches the library, stops
//   the generation, and is rethrown to the caller of generate().
//
// Thread-safety is the C API's: a Model may be shared by any number of threads; a Session is used by
// one thread at a time, and Session::cancel() may be called from any thread.
#ifndef AGENTLM_HPP
#define AGENTLM_HPP

#include "agentlm.h"

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace agentlm {

/// A failed call: the status code and the library's message.
class Error : public std::runtime_error {
 public:
  Error(agentlm_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  /// The `agentlm_status` of the failed call.
  agentlm_status status() const noexcept { return status_; }

 private:
  agentlm_status status_;
};

namespace detail {
/// Throws for negative statuses, consuming the error object; returns flow-control statuses.
inline agentlm_status check(agentlm_status st, agentlm_error* err) {
  if (st >= 0) {
    agentlm_error_free(err);
    return st;
  }
  std::string msg = err ? agentlm_error_message(err) : agentlm_status_string(st);
  agentlm_error_free(err);
  throw Error(st, msg);
}

template <typename Fn>
agentlm_status call(Fn&& fn) {
  agentlm_error* err = nullptr;
  agentlm_status st = fn(&err);
  return check(st, err);
}

/// Calls a "fill a buffer or report the needed size" function twice.
template <typename Fn>
std::string string_out(Fn&& fn) {
  size_t len = 0;
  agentlm_status st = call([&](agentlm_error** e) { return fn(nullptr, 0, &len, e); });
  if (st != AGENTLM_STATUS_BUFFER_TOO_SMALL) return std::string();
  std::string s(len, '\0');
  call([&](agentlm_error** e) { return fn(s.data(), s.size(), &len, e); });
  s.resize(len);
  return s;
}

inline agentlm_str view(std::string_view s) { return agentlm_str{s.data(), s.size()}; }

struct ModelDeleter {
  void operator()(agentlm_model* m) const noexcept { agentlm_model_free(m); }
};
struct SessionDeleter {
  void operator()(agentlm_session* s) const noexcept { agentlm_session_free(s); }
};
struct AdapterDeleter {
  void operator()(agentlm_adapter* a) const noexcept { agentlm_adapter_free(a); }
};
struct TrainerDeleter {
  void operator()(agentlm_trainer* t) const noexcept { agentlm_trainer_free(t); }
};
}  // namespace detail

/// The library version string.
inline std::string version() { return agentlm_version(); }

/// One chat message.
struct Message {
  std::string role;
  std::string content;
};

/// Load options (see agentlm_model_params).
struct ModelOptions {
  int32_t backend = AGENTLM_BACKEND_CPU;
  uint32_t threads = 0;
  uint32_t max_context = 0;
  /// An agentlm_precision value: quantized kernels for a quantized GGUF on the CPU by default.
  int32_t precision = AGENTLM_PRECISION_AUTO;
  /// Read the model files into private memory instead of mapping them while loading (for files that
  /// may change on disk meanwhile).
  bool copy_file = false;
  /// Progress in [0, 1]; return false to abort loading.
  std::function<bool(float)> progress;
};

/// Generation options (see agentlm_generate_params). Default: greedy, 256 tokens.
struct GenerateOptions {
  uint32_t max_tokens = 256;
  float temperature = 0.0f;
  uint32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  uint64_t seed = 0;
  bool ignore_eos = false;
  std::vector<std::string> stop;
};

/// What a generation produced.
struct Generation {
  std::vector<uint32_t> ids;
  std::string text;
  agentlm_generation stats{};
  /// AGENTLM_STATUS_OK, _STOPPED or _CANCELLED.
  agentlm_status status = AGENTLM_STATUS_OK;
};

class Session;
class Adapter;

/// A loaded model. Immutable and thread-safe.
class Model {
 public:
  explicit Model(const std::string& path, const ModelOptions& options = {}) {
    agentlm_model_params p = agentlm_model_params_default();
    p.backend = options.backend;
    p.n_threads = options.threads;
    p.max_context = options.max_context;
    p.precision = options.precision;
    p.copy_file = options.copy_file ? 1u : 0u;
    struct Progress {
      const std::function<bool(float)>* fn;
      std::exception_ptr error;
    } progress{&options.progress, nullptr};
    if (options.progress) {
      p.progress = [](void* user, float f) -> bool {
        auto* pr = static_cast<Progress*>(user);
        try {
          return (*pr->fn)(f);
        } catch (...) {
          pr->error = std::current_exception();
          return false;
        }
      };
      p.progress_user_data = &progress;
    }
    agentlm_model* raw = nullptr;
    agentlm_error* err = nullptr;
    agentlm_status st = agentlm_model_load(path.data(), path.size(), &p, &raw, &err);
    if (progress.error) {
      agentlm_error_free(err);
      std::rethrow_exception(progress.error);
    }
    detail::check(st, err);
    handle_.reset(raw);
  }

  /// Another reference to the same model.
  Model copy() const { return Model(agentlm_model_retain(handle_.get())); }

  uint32_t vocab_size() const noexcept { return agentlm_model_vocab_size(handle_.get()); }
  uint32_t context_length() const noexcept { return agentlm_model_context_length(handle_.get()); }
  bool has_chat_template() const noexcept { return agentlm_model_has_chat_template(handle_.get()); }
  std::string architecture() const { return agentlm_model_architecture(handle_.get()); }

  /// Token ids of `text` (AGENTLM_TOKENIZE_* flags).
  std::vector<uint32_t> tokenize(std::string_view text, uint32_t flags = 0) const {
    std::vector<uint32_t> ids(text.size() + 2);
    size_t n = 0;
    auto st = detail::call([&](agentlm_error** e) {
      return agentlm_model_tokenize(handle_.get(), text.data(), text.size(), flags, ids.data(), ids.size(), &n, e);
    });
    if (st == AGENTLM_STATUS_BUFFER_TOO_SMALL) {
      ids.resize(n);
      detail::call([&](agentlm_error** e) {
        return agentlm_model_tokenize(handle_.get(), text.data(), text.size(), flags, ids.data(), ids.size(), &n, e);
      });
    }
    ids.resize(n);
    return ids;
  }

  /// Text of `ids`.
  std::string detokenize(const std::vector<uint32_t>& ids, bool skip_special = true) const {
    return detail::string_out([&](char* buf, size_t cap, size_t* len, agentlm_error** e) {
      return agentlm_model_detokenize(handle_.get(), ids.data(), ids.size(), skip_special, buf, cap, len, e);
    });
  }

  /// The model's chat template applied to `messages`.
  std::string apply_chat_template(const std::vector<Message>& messages, bool add_generation_prompt = true) const {
    std::vector<agentlm_message> m;
    m.reserve(messages.size());
    for (const auto& x : messages) m.push_back(agentlm_message{detail::view(x.role), detail::view(x.content)});
    return detail::string_out([&](char* buf, size_t cap, size_t* len, agentlm_error** e) {
      return agentlm_model_apply_chat_template(handle_.get(), m.data(), m.size(), add_generation_prompt, buf, cap, len, e);
    });
  }

  /// A new conversation holding up to `capacity` tokens (0: the context length).
  Session session(uint32_t capacity = 0) const;

  /// A model with `adapter` merged into its weights at `scale`.
  Model merged(const Adapter& adapter, float scale = 1.0f) const;

  agentlm_model* get() const noexcept { return handle_.get(); }

 private:
  explicit Model(agentlm_model* raw) : handle_(raw) {}
  std::unique_ptr<agentlm_model, detail::ModelDeleter> handle_;
};

/// One conversation. Move-only; one thread at a time (cancel() from any thread).
class Session {
 public:
  /// Appends trusted text (special tokens recognised).
  void append_text(std::string_view text) {
    detail::call([&](agentlm_error** e) { return agentlm_session_append_text(get(), text.data(), text.size(), e); });
  }
  /// Brings the session to the whole conversation `messages` rendered with the model's chat template:
  /// message contents are tokenized as plain text (a user's `<|im_end|>` stays text), tokens already in
  /// the session that match are kept.
  void sync_chat(const std::vector<Message>& messages, bool add_generation_prompt = true) {
    std::vector<agentlm_message> m;
    m.reserve(messages.size());
    for (const auto& x : messages) m.push_back(agentlm_message{detail::view(x.role), detail::view(x.content)});
    detail::call([&](agentlm_error** e) {
      return agentlm_session_sync_chat(get(), m.data(), m.size(), add_generation_prompt, e);
    });
  }
  /// Appends untrusted text (never becomes control tokens).
  void append_untrusted_text(std::string_view text) {
    detail::call(
        [&](agentlm_error** e) { return agentlm_session_append_untrusted_text(get(), text.data(), text.size(), e); });
  }
  /// Every token of the conversation.
  std::vector<uint32_t> tokens() const {
    size_t n = 0;
    detail::call([&](agentlm_error** e) { return agentlm_session_tokens(get(), nullptr, 0, &n, e); });
    std::vector<uint32_t> ids(n);
    detail::call([&](agentlm_error** e) { return agentlm_session_tokens(get(), ids.data(), ids.size(), &n, e); });
    return ids;
  }
  void reset() {
    detail::call([&](agentlm_error** e) { return agentlm_session_reset(get(), e); });
  }
  /// An independent copy of the conversation.
  Session fork() const {
    agentlm_session* raw = nullptr;
    detail::call([&](agentlm_error** e) { return agentlm_session_fork(get(), &raw, e); });
    return Session(raw);
  }
  /// Cancels the running (or next) generation. Thread-safe.
  void cancel() const noexcept { agentlm_session_cancel(get()); }

  /// Applies a LoRA adapter at `scale` from now on; nullptr detaches it.
  void set_adapter(const Adapter* adapter, float scale = 1.0f);

  /// Saved state (tokens, cache, logits).
  std::vector<uint8_t> save_state() const {
    size_t n = 0;
    detail::call([&](agentlm_error** e) { return agentlm_session_save_state(get(), nullptr, 0, &n, e); });
    std::vector<uint8_t> buf(n);
    detail::call([&](agentlm_error** e) { return agentlm_session_save_state(get(), buf.data(), buf.size(), &n, e); });
    return buf;
  }
  void load_state(const std::vector<uint8_t>& state) {
    detail::call([&](agentlm_error** e) { return agentlm_session_load_state(get(), state.data(), state.size(), e); });
  }

  /// Generates, calling `on_text(token, text)` per token (return false to stop). An exception from
  /// `on_text` stops generation and is rethrown here.
  Generation generate(const GenerateOptions& o = {},
                      const std::function<bool(uint32_t, std::string_view)>& on_text = nullptr) {
    agentlm_generate_params p = agentlm_generate_params_default();
    p.max_tokens = o.max_tokens;
    p.temperature = o.temperature;
    p.top_k = o.top_k;
    p.top_p = o.top_p;
    p.min_p = o.min_p;
    p.repetition_penalty = o.repetition_penalty;
    p.seed = o.seed;
    p.ignore_eos = o.ignore_eos;
    std::vector<agentlm_str> stops;
    for (const auto& s : o.stop) stops.push_back(detail::view(s));
    p.stop = stops.data();
    p.n_stop = stops.size();

    struct Ctx {
      Generation* out;
      const std::function<bool(uint32_t, std::string_view)>* fn;
      std::exception_ptr error;
    };
    Generation out;
    Ctx ctx{&out, &on_text, nullptr};
    auto cb = [](void* user, uint32_t token, const char* text, size_t len) -> bool {
      auto* c = static_cast<Ctx*>(user);
      try {
        if (token != AGENTLM_TOKEN_NONE) c->out->ids.push_back(token);
        c->out->text.append(text, len);
        return *c->fn ? (*c->fn)(token, std::string_view(text, len)) : true;
      } catch (...) {
        c->error = std::current_exception();
        return false;
      }
    };
    agentlm_error* err = nullptr;
    agentlm_status st = agentlm_session_generate(get(), &p, cb, &ctx, &out.stats, &err);
    if (ctx.error) {
      agentlm_error_free(err);
      std::rethrow_exception(ctx.error);
    }
    out.status = detail::check(st, err);
    return out;
  }

  agentlm_session* get() const noexcept { return handle_.get(); }

 private:
  friend class Model;
  explicit Session(agentlm_session* raw) : handle_(raw) {}
  std::unique_ptr<agentlm_session, detail::SessionDeleter> handle_;
};

/// A LoRA adapter (Hugging Face PEFT files) loaded for a model. Move-only; thread-safe. Sessions it is
/// attached to keep it alive after it is destroyed.
class Adapter {
 public:
  Adapter(const Model& model, const std::string& dir) {
    agentlm_adapter* raw = nullptr;
    detail::call([&](agentlm_error** e) { return agentlm_adapter_load(model.get(), dir.data(), dir.size(), &raw, e); });
    handle_.reset(raw);
  }
  uint32_t rank() const noexcept { return agentlm_adapter_rank(get()); }
  void save(const std::string& dir) const {
    detail::call([&](agentlm_error** e) { return agentlm_adapter_save(get(), dir.data(), dir.size(), e); });
  }
  agentlm_adapter* get() const noexcept { return handle_.get(); }

 private:
  friend class Trainer;
  explicit Adapter(agentlm_adapter* raw) : handle_(raw) {}
  std::unique_ptr<agentlm_adapter, detail::AdapterDeleter> handle_;
};

inline void Session::set_adapter(const Adapter* adapter, float scale) {
  detail::call([&](agentlm_error** e) {
    return agentlm_session_set_adapter(get(), adapter ? adapter->get() : nullptr, scale, e);
  });
}

inline Model Model::merged(const Adapter& adapter, float scale) const {
  agentlm_model* raw = nullptr;
  detail::call([&](agentlm_error** e) { return agentlm_model_merge_adapter(get(), adapter.get(), scale, &raw, e); });
  return Model(raw);
}

/// The incremental LoRA trainer. Move-only; one thread at a time (cancel() from any thread).
class Trainer {
 public:
  /// A fresh adapter (`params` from agentlm_trainer_params_default()), or continuing from `start`.
  explicit Trainer(const Model& model, const agentlm_trainer_params& params = agentlm_trainer_params_default(),
                   const Adapter* start = nullptr) {
    agentlm_trainer* raw = nullptr;
    detail::call([&](agentlm_error** e) {
      return agentlm_trainer_new(model.get(), &params, start ? start->get() : nullptr, &raw, e);
    });
    handle_.reset(raw);
  }
  /// Continues from a checkpoint directory.
  static Trainer resume(const Model& model, const std::string& dir) {
    agentlm_trainer* raw = nullptr;
    detail::call([&](agentlm_error** e) { return agentlm_trainer_resume(model.get(), dir.data(), dir.size(), &raw, e); });
    return Trainer(raw);
  }
  /// Adds one JSON record; false when its reward is below the threshold.
  bool add_json(std::string_view json, agentlm_data_kind kind = AGENTLM_DATA_AGENT) {
    bool added = false;
    detail::call([&](agentlm_error** e) {
      return agentlm_trainer_add_json(get(), kind, json.data(), json.size(), &added, e);
    });
    return added;
  }
  /// Adds every record of a JSONL file (streamed); returns how many were added.
  size_t add_jsonl_file(const std::string& path, agentlm_data_kind kind = AGENTLM_DATA_AGENT) {
    size_t added = 0;
    detail::call([&](agentlm_error** e) {
      return agentlm_trainer_add_jsonl_file(get(), kind, path.data(), path.size(), &added, e);
    });
    return added;
  }
  /// Up to `steps` optimizer steps or `max_seconds` (0: no limit); `on_step` may stop the run by
  /// returning false, and an exception it throws stops the run and is rethrown here.
  agentlm_train_progress run(uint32_t steps, double max_seconds = 0,
                             const std::function<bool(const agentlm_train_progress&)>& on_step = {}) {
    struct Ctx {
      const std::function<bool(const agentlm_train_progress&)>* fn;
      std::exception_ptr error;
    } ctx{&on_step, nullptr};
    agentlm_train_progress last{};
    agentlm_error* err = nullptr;
    agentlm_status st = agentlm_trainer_run(
        get(), steps, max_seconds,
        [](void* user, const agentlm_train_progress* p) -> bool {
          auto* c = static_cast<Ctx*>(user);
          if (!*c->fn) return true;
          try {
            return (*c->fn)(*p);
          } catch (...) {
            c->error = std::current_exception();
            return false;
          }
        },
        &ctx, &last, &err);
    if (ctx.error) {
      agentlm_error_free(err);
      std::rethrow_exception(ctx.error);
    }
    detail::check(st, err);
    return last;
  }
  void cancel() const noexcept { agentlm_trainer_cancel(get()); }
  uint64_t step() const noexcept { return agentlm_trainer_step(get()); }
  /// Token-weighted masked loss over the held-out records.
  double evaluate() const {
    double loss = 0;
    detail::call([&](agentlm_error** e) { return agentlm_trainer_evaluate(get(), &loss, nullptr, e); });
    return loss;
  }
  /// The adapter trained so far (a snapshot).
  Adapter adapter() const {
    agentlm_adapter* raw = nullptr;
    detail::call([&](agentlm_error** e) { return agentlm_trainer_adapter(get(), &raw, e); });
    return Adapter(raw);
  }
  void save_adapter(const std::string& dir) const {
    detail::call([&](agentlm_error** e) { return agentlm_trainer_save_adapter(get(), dir.data(), dir.size(), e); });
  }
  void checkpoint(const std::string& dir) const {
    detail::call([&](agentlm_error** e) { return agentlm_trainer_checkpoint(get(), dir.data(), dir.size(), e); });
  }
  agentlm_trainer* get() const noexcept { return handle_.get(); }

 private:
  explicit Trainer(agentlm_trainer* raw) : handle_(raw) {}
  std::unique_ptr<agentlm_trainer, detail::TrainerDeleter> handle_;
};

inline Session Model::session(uint32_t capacity) const {
  agentlm_session_params p = agentlm_session_params_default();
  p.capacity = capacity;
  agentlm_session* raw = nullptr;
  detail::call([&](agentlm_error** e) { return agentlm_session_new(handle_.get(), &p, &raw, e); });
  return Session(raw);
}

}  // namespace agentlm

#endif  // AGENTLM_HPP
