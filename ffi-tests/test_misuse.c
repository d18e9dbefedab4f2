/*
 * Misuse of the C API, on the real SmolLM2 model: every handle type used after free and freed twice,
 * pointers that were never handles, a handle of one type passed as another, bad struct_size values,
 * out-of-range enums, NULL in pointer arguments, and callbacks that fail, stop, sleep, call back into
 * the library (on the same handle: AGENTLM_STATUS_BUSY; on the model: fine) or free their own handle,
 * with cancel from another thread while a callback sleeps.
 *
 *   test_misuse MODEL
 *
 * AGENTLM_TEST_TINY=1 says MODEL is a cut-down copy of the real model (the valgrind run).
 * AGENTLM_TEST_NO_TRAIN=1 skips the parts that run optimizer steps (slow under valgrind).
 * Prints "N passed, N failed" and exits non-zero on any failure.
 */
#include "agentlm.h"
#include "check.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *g_model_path;
static int g_tiny, g_no_train;

/* A call with `&err_` as its error slot must fail with `want` and an error object of the same status
 * whose message contains `needle`. */
#define CHECK_FAIL(call, want, needle)                                                                  \
  do {                                                                                                  \
    agentlm_error *err_ = NULL;                                                                         \
    agentlm_status st_ = (call);                                                                        \
    const char *msg_ = agentlm_error_message(err_);                                                     \
    if (st_ == (want) && err_ != NULL && agentlm_error_status(err_) == (want) && strstr(msg_, (needle))) { \
      g_passed++;                                                                                       \
    } else {                                                                                            \
      g_failed++;                                                                                       \
      fprintf(stderr, "FAIL %s:%d: %s = %d [%s], want %d with \"%s\"\n", __FILE__, __LINE__, #call,     \
              (int)st_, msg_, (int)(want), (needle));                                                   \
    }                                                                                                   \
    agentlm_error_free(err_);                                                                           \
  } while (0)

/* A handle reinterpreted as another handle type, as a confused or malicious host might pass it. */
#define AS(type, p) ((type *)(void *)(p))

static const char k_instr[] = "Solve the task. Reply \"ACTION: your next action\".";
static const char k_task[] = "Your task is to: look around.";
static const char k_record[] =
    "{\"id\":\"m1\",\"reward\":1,\"conversations\":[{\"from\":\"human\",\"value\":\"You are in room 1. Go to the "
    "door.\",\"loss\":null},{\"from\":\"gpt\",\"value\":\"THOUGHT: the door is north.\\nACTION: go to door "
    "1\",\"loss\":true}]}";

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

static int g_freed; /* tool user_data released */

static void free_user(void *user) {
  (void)user;
  g_freed++;
}

/* ---- statuses --------------------------------------------------------------------------------- */

static void test_statuses(void) {
  CHECK(AGENTLM_STATUS_INVALID_HANDLE == -16);
  CHECK(strcmp(agentlm_status_string(AGENTLM_STATUS_INVALID_HANDLE), "invalid handle") == 0);
  CHECK(strcmp(agentlm_status_string(AGENTLM_STATUS_INVALID_HANDLE),
               agentlm_status_string(AGENTLM_STATUS_INVALID_ARGUMENT)) != 0);
  CHECK(!agentlm_backend_is_compiled(-1) && !agentlm_backend_is_compiled(INT32_MAX) &&
        !agentlm_backend_is_compiled(INT32_MIN));
}

/* ---- loading: struct_size, enums, NULLs, callbacks -------------------------------------------- */

static bool abort_at_once(void *user, float fraction) {
  (void)fraction;
  (*(int *)user)++;
  return false;
}

typedef struct {
  int calls;
  int slept;
  float last;
} progress_seen;

/* Slow (200 ms on its first call) and calling into the library, which is fine: no handle is involved. */
static bool slow_progress(void *user, float fraction) {
  progress_seen *p = (progress_seen *)user;
  p->calls++;
  if (!p->slept) {
    p->slept = 1;
    sleep_ms(200);
    CHECK(agentlm_backend_is_compiled(AGENTLM_BACKEND_CPU));
    CHECK(agentlm_model_vocab_size(NULL) == 0);
  }
  if (fraction < p->last) p->last = 99.0f;
  else p->last = fraction;
  return true;
}

/* The log callback of the model: counts, checks its text, and when a trainer is busy logging about a
 * skipped record, calls back into that trainer (refused) and into the model (fine). */
typedef struct {
  int calls;
  int loaded;
  int bad_text;
  const agentlm_trainer *trainer;
  const agentlm_model *model;
  int reentered;
  agentlm_status inner;
  uint64_t inner_step;
  uint32_t vocab;
} log_ctx;

static log_ctx g_log;

static void on_log(void *user, int32_t level, const char *msg, size_t len) {
  log_ctx *c = (log_ctx *)user;
  c->calls++;
  if (msg[len] != 0 || strlen(msg) != len || level < AGENTLM_LOG_ERROR || level > AGENTLM_LOG_TRACE) c->bad_text++;
  if (strstr(msg, "model loaded")) {
    c->loaded++;
    sleep_ms(200); /* a slow log callback delays the call, nothing else */
  }
  if (c->trainer && strstr(msg, "skipped")) {
    c->reentered++;
    c->inner = agentlm_trainer_add_json(c->trainer, AGENTLM_DATA_AGENT, k_record, strlen(k_record), NULL, NULL);
    c->inner_step = agentlm_trainer_step(c->trainer);
    c->vocab = agentlm_model_vocab_size(c->model);
  }
}

static void test_load_misuse(void) {
  const char *path = g_model_path;
  size_t n = strlen(path);
  agentlm_model *m = NULL;

  /* struct_size: zero, smaller, larger, garbage. */
  const uint32_t sizes[] = {0, 1, 4, (uint32_t)sizeof(agentlm_model_params) - 4,
                            (uint32_t)sizeof(agentlm_model_params) + 8, 0xFFFFFFFFu};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    agentlm_model_params p = agentlm_model_params_default();
    p.struct_size = sizes[i];
    CHECK_FAIL(agentlm_model_load(path, n, &p, &m, &err_), AGENTLM_STATUS_STRUCT_SIZE, "struct_size");
  }
  /* Enums: negative, one past the end, huge. */
  const int32_t bad[] = {-1, 3, 1000, INT32_MAX, INT32_MIN};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    agentlm_model_params p = agentlm_model_params_default();
    p.backend = bad[i];
    CHECK_FAIL(agentlm_model_load(path, n, &p, &m, &err_), AGENTLM_STATUS_INVALID_ARGUMENT, "backend");
    p = agentlm_model_params_default();
    p.precision = bad[i];
    CHECK_FAIL(agentlm_model_load(path, n, &p, &m, &err_), AGENTLM_STATUS_INVALID_ARGUMENT, "precision");
    p = agentlm_model_params_default();
    p.log = on_log;
    p.log_user_data = &g_log;
    p.log_level = bad[i] == 3 ? 6 : bad[i];
    CHECK_FAIL(agentlm_model_load(path, n, &p, &m, &err_), AGENTLM_STATUS_INVALID_ARGUMENT, "log_level");
  }
  /* NULL in each pointer position (params NULL means the defaults; err NULL means no error object). */
  CHECK_FAIL(agentlm_model_load(NULL, n, NULL, &m, &err_), AGENTLM_STATUS_NULL_POINTER, "path");
  CHECK_FAIL(agentlm_model_load(path, n, NULL, NULL, &err_), AGENTLM_STATUS_NULL_POINTER, "out");
  CHECK_STATUS(agentlm_model_load(NULL, n, NULL, NULL, NULL), AGENTLM_STATUS_NULL_POINTER);
  CHECK(m == NULL);

  /* The progress callback asks to stop at its first call. */
  int calls = 0;
  agentlm_model_params p = agentlm_model_params_default();
  p.progress = abort_at_once;
  p.progress_user_data = &calls;
  CHECK_FAIL(agentlm_model_load(path, n, &p, &m, &err_), AGENTLM_STATUS_ABORTED, "");
  CHECK(calls == 1 && m == NULL);
}

/* The model the rest runs on: a slow progress callback (200 ms) and a slow, re-entering log callback. */
static agentlm_model *load_model(void) {
  agentlm_model *m = NULL;
  progress_seen seen = {0, 0, 0.0f};
  agentlm_model_params p = agentlm_model_params_default();
  p.progress = slow_progress;
  p.progress_user_data = &seen;
  p.log = on_log;
  p.log_user_data = &g_log;
  p.log_level = AGENTLM_LOG_INFO;
  p.max_context = 1024;
  double t0 = now_s();
  MUST(agentlm_model_load(g_model_path, strlen(g_model_path), &p, &m, &err_));
  CHECK(m != NULL && seen.slept && seen.last == 1.0f);
  CHECK(g_log.loaded == 1 && g_log.bad_text == 0);
  CHECK(now_s() - t0 >= 0.4); /* both callbacks' sleeps were waited for */
  return m;
}

static agentlm_session *new_session(const agentlm_model *m, uint32_t capacity) {
  agentlm_session *s = NULL;
  agentlm_session_params sp = agentlm_session_params_default();
  sp.capacity = capacity;
  MUST(agentlm_session_new(m, &sp, &s, &err_));
  return s;
}

static agentlm_agent *new_agent(const agentlm_model *m, agentlm_tool_fn fn, void *user, agentlm_free_fn free_fn) {
  agentlm_agent_params p = agentlm_agent_params_default();
  p.constrained = true;
  p.max_steps = 3;
  p.max_tokens_per_step = 24;
  agentlm_agent *a = NULL;
  MUST(agentlm_agent_new(m, &p, k_instr, strlen(k_instr), k_task, strlen(k_task), &a, &err_));
  if (a) {
    MUST(agentlm_agent_add_tool(a, "look", 4, "look around", 11, NULL, 0, fn, user, free_fn, &err_));
    MUST(agentlm_agent_add_tool(a, "wait", 4, "wait a moment", 13, NULL, 0, fn, user, NULL, &err_));
  }
  return a;
}

static agentlm_trainer *new_trainer(const agentlm_model *m) {
  agentlm_trainer_params p = agentlm_trainer_params_default();
  p.lora_rank = 2;
  p.lora_alpha = 4;
  p.target_modules = AGENTLM_LORA_Q_PROJ | AGENTLM_LORA_V_PROJ;
  p.learning_rate = 1e-3f;
  p.max_tokens = 96;
  agentlm_trainer *t = NULL;
  MUST(agentlm_trainer_new(m, &p, NULL, &t, &err_));
  return t;
}

/* ---- use after free, double free: models --------------------------------------------------------- */

static void test_model_after_free(agentlm_model *m) {
  agentlm_model *r = agentlm_model_retain(m);
  CHECK(r != NULL && r != m);
  agentlm_model_free(r);
  /* Nothing that could reuse r's address as a model is allocated until the checks are done. */
  uint32_t ids[16];
  size_t n = 0;
  char buf[64];
  agentlm_message msg = {{"user", 4}, {"hi", 2}};
  CHECK(agentlm_model_vocab_size(r) == 0 && agentlm_model_context_length(r) == 0);
  CHECK(strcmp(agentlm_model_architecture(r), "") == 0 && !agentlm_model_has_chat_template(r));
  CHECK(agentlm_model_backend(r) == -1 && agentlm_model_retain(r) == NULL);
  CHECK_FAIL(agentlm_model_tokenize(r, "hi", 2, 0, ids, 16, &n, &err_), AGENTLM_STATUS_INVALID_HANDLE, "already freed");
  CHECK_FAIL(agentlm_model_detokenize(r, ids, 0, true, buf, sizeof buf, &n, &err_), AGENTLM_STATUS_INVALID_HANDLE,
             "model (0x");
  CHECK_FAIL(agentlm_model_apply_chat_template(r, &msg, 1, true, buf, sizeof buf, &n, &err_),
             AGENTLM_STATUS_INVALID_HANDLE, "not a live agentlm_model");
  agentlm_session *s = NULL;
  agentlm_agent *a = NULL;
  agentlm_adapter *ad = NULL;
  agentlm_trainer *t = NULL;
  agentlm_model *merged = NULL;
  CHECK_FAIL(agentlm_session_new(r, NULL, &s, &err_), AGENTLM_STATUS_INVALID_HANDLE, "model");
  CHECK_FAIL(agentlm_agent_new(r, NULL, "i", 1, "t", 1, &a, &err_), AGENTLM_STATUS_INVALID_HANDLE, "model");
  CHECK_FAIL(agentlm_adapter_load(r, "/nonexistent", 12, &ad, &err_), AGENTLM_STATUS_INVALID_HANDLE, "model");
  CHECK_FAIL(agentlm_trainer_new(r, NULL, NULL, &t, &err_), AGENTLM_STATUS_INVALID_HANDLE, "model");
  CHECK_FAIL(agentlm_trainer_resume(r, "/nonexistent", 12, &t, &err_), AGENTLM_STATUS_INVALID_HANDLE, "model");
  CHECK_FAIL(agentlm_model_merge_adapter(r, NULL, 1.0f, &merged, &err_), AGENTLM_STATUS_INVALID_HANDLE, "model");
  CHECK(s == NULL && a == NULL && ad == NULL && t == NULL && merged == NULL);
  agentlm_model_free(r); /* double free: ignored */
  agentlm_model_free(r);
  CHECK(agentlm_model_vocab_size(m) == 49152); /* the other reference is untouched */
}

/* ---- use after free, double free: sessions ----------------------------------------------------- */

static void test_session_after_free(const agentlm_model *m) {
  agentlm_session *s = new_session(m, 64);
  MUST(agentlm_session_append_text(s, "Hi", 2, &err_));
  agentlm_session_free(s);
  uint32_t ids[8] = {1, 2, 3};
  size_t n = 0;
  uint8_t state[16] = {0};
  agentlm_token tok;
  agentlm_generation g;
  agentlm_session *f = NULL;
  const agentlm_status H = AGENTLM_STATUS_INVALID_HANDLE;
  CHECK_FAIL(agentlm_session_append_text(s, "x", 1, &err_), H, "is not a live agentlm_session: it was already freed");
  CHECK_FAIL(agentlm_session_append_untrusted_text(s, "x", 1, &err_), H, "session");
  CHECK_FAIL(agentlm_session_append_tokens(s, ids, 3, &err_), H, "session");
  CHECK_FAIL(agentlm_session_tokens(s, ids, 8, &n, &err_), H, "session");
  CHECK_FAIL(agentlm_session_reset(s, &err_), H, "session");
  CHECK_FAIL(agentlm_session_truncate(s, 0, &err_), H, "session");
  CHECK_FAIL(agentlm_session_fork(s, &f, &err_), H, "session");
  CHECK_FAIL(agentlm_session_generate(s, NULL, NULL, NULL, &g, &err_), H, "session");
  CHECK_FAIL(agentlm_session_begin(s, NULL, &err_), H, "session");
  CHECK_FAIL(agentlm_session_next_token(s, &tok, &err_), H, "session");
  CHECK_FAIL(agentlm_session_end(s, &g, &err_), H, "session");
  CHECK_FAIL(agentlm_session_save_state(s, state, sizeof state, &n, &err_), H, "session");
  CHECK_FAIL(agentlm_session_load_state(s, state, sizeof state, &err_), H, "session");
  CHECK_FAIL(agentlm_session_save_file(s, "/tmp/x", 6, &err_), H, "session");
  CHECK_FAIL(agentlm_session_load_file(s, "/tmp/x", 6, &err_), H, "session");
  CHECK_FAIL(agentlm_session_set_adapter(s, NULL, 1.0f, &err_), H, "session");
  CHECK_STATUS(agentlm_session_cancel(s), H);
  CHECK(agentlm_session_capacity(s) == 0 && f == NULL);
  agentlm_session_free(s); /* double free: ignored */
  agentlm_session_free(s);
}

/* ---- use after free, double free: agents ------------------------------------------------------ */

static bool quiet_tool(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  (void)user;
  (void)input;
  (void)len;
  return agentlm_tool_result_set(r, "Nothing happens.", 16) == AGENTLM_STATUS_OK;
}

static void test_agent_after_free(const agentlm_model *m, const agentlm_trainer *t) {
  int freed = g_freed;
  agentlm_agent *a = new_agent(m, quiet_tool, NULL, free_user);
  agentlm_agent_free(a);
  CHECK(g_freed == freed + 1); /* the tool's user_data, released once */
  agentlm_agent_step_result s;
  size_t len = 0;
  bool added = true;
  const agentlm_status H = AGENTLM_STATUS_INVALID_HANDLE;
  CHECK_FAIL(agentlm_agent_step(a, 0, 0, &s, &err_), H, "agent (0x");
  CHECK_FAIL(agentlm_agent_add_tool(a, "x", 1, "d", 1, NULL, 0, NULL, NULL, free_user, &err_), H, "agent");
  CHECK(g_freed == freed + 2); /* a refused tool's user_data is still released, once */
  CHECK_FAIL(agentlm_agent_submit_observation(a, "x", 1, &err_), H, "agent");
  CHECK_FAIL(agentlm_agent_set_outcome(a, 1.0, "ok", 2, &err_), H, "agent");
  CHECK_FAIL(agentlm_agent_trajectory_json(a, NULL, 0, &len, &err_), H, "agent");
  CHECK_FAIL(agentlm_agent_set_adapter(a, NULL, 1.0f, &err_), H, "agent");
  if (t) CHECK_FAIL(agentlm_trainer_add_episode(t, a, &added, &err_), H, "agent");
  CHECK(added);
  CHECK_STATUS(agentlm_agent_cancel(a), H);
  CHECK(!agentlm_agent_is_finished(a));
  agentlm_agent_free(a); /* double free: ignored, user_data not released again */
  CHECK(g_freed == freed + 2);
}

/* ---- use after free, double free: adapters and trainers ---------------------------------------- */

static void test_adapter_after_free(const agentlm_model *m, agentlm_trainer *t, agentlm_session *live) {
  agentlm_adapter *ad = NULL;
  MUST(agentlm_trainer_adapter(t, &ad, &err_));
  CHECK(agentlm_adapter_rank(ad) == 2);
  agentlm_adapter_free(ad);
  agentlm_agent *a = new_agent(m, quiet_tool, NULL, NULL);
  agentlm_model *merged = NULL;
  agentlm_trainer *t2 = NULL;
  const agentlm_status H = AGENTLM_STATUS_INVALID_HANDLE;
  CHECK(agentlm_adapter_rank(ad) == 0);
  CHECK_FAIL(agentlm_adapter_save(ad, "/tmp/agentlm-never", 18, &err_), H, "not a live agentlm_adapter");
  CHECK_FAIL(agentlm_session_set_adapter(live, ad, 1.0f, &err_), H, "adapter");
  CHECK_FAIL(agentlm_agent_set_adapter(a, ad, 1.0f, &err_), H, "adapter");
  CHECK_FAIL(agentlm_model_merge_adapter(m, ad, 1.0f, &merged, &err_), H, "adapter");
  CHECK_FAIL(agentlm_trainer_new(m, NULL, ad, &t2, &err_), H, "start");
  CHECK(merged == NULL && t2 == NULL);
  agentlm_adapter_free(ad); /* double free: ignored */
  agentlm_agent_free(a);
}

static void test_trainer_after_free(const agentlm_model *m) {
  agentlm_trainer *t = new_trainer(m);
  agentlm_agent *a = new_agent(m, quiet_tool, NULL, NULL);
  agentlm_trainer_free(t);
  bool added = true;
  size_t n = 0;
  double loss = 0;
  agentlm_train_progress last;
  agentlm_adapter *ad = NULL;
  const agentlm_status H = AGENTLM_STATUS_INVALID_HANDLE;
  CHECK_FAIL(agentlm_trainer_add_json(t, AGENTLM_DATA_AGENT, k_record, strlen(k_record), &added, &err_), H,
             "trainer (0x");
  CHECK_FAIL(agentlm_trainer_add_jsonl_file(t, AGENTLM_DATA_AGENT, "/nonexistent", 12, &n, &err_), H, "trainer");
  CHECK_FAIL(agentlm_trainer_add_episode(t, a, &added, &err_), H, "trainer");
  CHECK_FAIL(agentlm_trainer_run(t, 1, 0, NULL, NULL, &last, &err_), H, "trainer");
  CHECK_FAIL(agentlm_trainer_evaluate(t, &loss, NULL, &err_), H, "trainer");
  CHECK_FAIL(agentlm_trainer_adapter(t, &ad, &err_), H, "trainer");
  CHECK_FAIL(agentlm_trainer_save_adapter(t, "/tmp/agentlm-never", 18, &err_), H, "trainer");
  CHECK_FAIL(agentlm_trainer_checkpoint(t, "/tmp/agentlm-never", 18, &err_), H, "trainer");
  CHECK_STATUS(agentlm_trainer_cancel(t), H);
  CHECK(agentlm_trainer_step(t) == 0 && added && ad == NULL);
  agentlm_trainer_free(t); /* double free: ignored */
  agentlm_agent_free(a);
}

/* ---- errors, wrong types, pointers that were never handles ------------------------------------- */

static void test_foreign_pointers(agentlm_model *m, agentlm_session *s) {
  /* An error freed, then read and freed again. */
  agentlm_error *e = NULL;
  CHECK_STATUS(agentlm_session_append_text(s, "\xff", 1, &e), AGENTLM_STATUS_INVALID_UTF8);
  CHECK(agentlm_error_status(e) == AGENTLM_STATUS_INVALID_UTF8);
  agentlm_error_free(e);
  CHECK(agentlm_error_status(e) == AGENTLM_STATUS_INVALID_HANDLE);
  CHECK(strncmp(agentlm_error_message(e), "invalid agentlm_error handle", 28) == 0);
  agentlm_error_free(e);

  /* A handle passed as another type: refused by type, the handle itself untouched. */
  uint32_t ids[8];
  size_t n = 0;
  CHECK_FAIL(agentlm_model_tokenize(AS(const agentlm_model, s), "hi", 2, 0, ids, 8, &n, &err_),
             AGENTLM_STATUS_INVALID_HANDLE, "is an agentlm_session, not an agentlm_model");
  CHECK_FAIL(agentlm_session_append_text(AS(const agentlm_session, m), "x", 1, &err_), AGENTLM_STATUS_INVALID_HANDLE,
             "is an agentlm_model, not an agentlm_session");
  CHECK_FAIL(agentlm_agent_step(AS(const agentlm_agent, s), 0, 0, NULL, &err_), AGENTLM_STATUS_NULL_POINTER, "out");
  agentlm_agent_step_result r;
  CHECK_FAIL(agentlm_agent_step(AS(const agentlm_agent, s), 0, 0, &r, &err_), AGENTLM_STATUS_INVALID_HANDLE,
             "is an agentlm_session, not an agentlm_agent");
  agentlm_session_free(AS(agentlm_session, m)); /* not a session: ignored */
  agentlm_model_free(AS(agentlm_model, s));     /* not a model: ignored */
  agentlm_trainer_free(AS(agentlm_trainer, s));
  agentlm_adapter_free(AS(agentlm_adapter, m));
  agentlm_agent_free(AS(agentlm_agent, m));
  agentlm_error_free(AS(agentlm_error, s));
  CHECK(agentlm_model_vocab_size(m) == 49152 && agentlm_session_capacity(s) == 256);

  /* Pointers that were never handles are refused without being read: an unmapped address, an
   * address inside a live handle, and uninitialised stack memory (valgrind would report a read). */
  unsigned char junk[256];
  void *wild[3];
  wild[0] = (void *)(uintptr_t)0x1000;
  wild[1] = (void *)((char *)(void *)s + 8);
  wild[2] = junk;
  for (int i = 0; i < 3; i++) {
    void *p = wild[i];
    CHECK_FAIL(agentlm_session_append_text((const agentlm_session *)p, "x", 1, &err_), AGENTLM_STATUS_INVALID_HANDLE,
               "never returned by this library");
    CHECK_FAIL(agentlm_model_tokenize((const agentlm_model *)p, "x", 1, 0, ids, 8, &n, &err_),
               AGENTLM_STATUS_INVALID_HANDLE, "not a live agentlm_model");
    CHECK_FAIL(agentlm_trainer_run((const agentlm_trainer *)p, 1, 0, NULL, NULL, NULL, &err_),
               AGENTLM_STATUS_INVALID_HANDLE, "not a live agentlm_trainer");
    CHECK_FAIL(agentlm_adapter_save((const agentlm_adapter *)p, "/tmp/x", 6, &err_), AGENTLM_STATUS_INVALID_HANDLE,
               "not a live agentlm_adapter");
    CHECK_STATUS(agentlm_agent_cancel((const agentlm_agent *)p), AGENTLM_STATUS_INVALID_HANDLE);
    CHECK_STATUS(agentlm_tool_result_set((agentlm_tool_result *)p, "x", 1), AGENTLM_STATUS_INVALID_HANDLE);
    CHECK(agentlm_error_status((const agentlm_error *)p) == AGENTLM_STATUS_INVALID_HANDLE);
    CHECK(agentlm_model_retain((const agentlm_model *)p) == NULL);
    agentlm_model_free((agentlm_model *)p);
    agentlm_session_free((agentlm_session *)p);
    agentlm_agent_free((agentlm_agent *)p);
    agentlm_adapter_free((agentlm_adapter *)p);
    agentlm_trainer_free((agentlm_trainer *)p);
    agentlm_error_free((agentlm_error *)p);
  }
  CHECK(agentlm_session_capacity(s) == 256);
}

/* ---- struct_size of every parameter struct; enums ----------------------------------------------- */

static void test_struct_sizes_and_enums(const agentlm_model *m, agentlm_session *s, agentlm_trainer *t) {
  const uint32_t garbage[] = {0, 1, 3, 0xFFFFFFFFu, 0x80000000u};
  agentlm_session *out = NULL;
  agentlm_agent *a = NULL;
  agentlm_trainer *t2 = NULL;
  for (size_t i = 0; i < sizeof garbage / sizeof garbage[0] + 3; i++) {
    /* Garbage, then smaller than, larger than and twice the real size. */
    uint32_t k = i < 5 ? garbage[i] : 0;
    agentlm_session_params sp = agentlm_session_params_default();
    sp.struct_size = i < 5 ? k : i == 5 ? sp.struct_size - 4 : i == 6 ? sp.struct_size + 4 : sp.struct_size * 2;
    CHECK_FAIL(agentlm_session_new(m, &sp, &out, &err_), AGENTLM_STATUS_STRUCT_SIZE, "struct_size");
    agentlm_generate_params gp = agentlm_generate_params_default();
    gp.struct_size = i < 5 ? k : i == 5 ? gp.struct_size - 4 : i == 6 ? gp.struct_size + 4 : gp.struct_size * 2;
    CHECK_FAIL(agentlm_session_generate(s, &gp, NULL, NULL, NULL, &err_), AGENTLM_STATUS_STRUCT_SIZE, "struct_size");
    CHECK_FAIL(agentlm_session_begin(s, &gp, &err_), AGENTLM_STATUS_STRUCT_SIZE, "struct_size");
    agentlm_agent_params ap = agentlm_agent_params_default();
    ap.struct_size = i < 5 ? k : i == 5 ? ap.struct_size - 4 : i == 6 ? ap.struct_size + 4 : ap.struct_size * 2;
    CHECK_FAIL(agentlm_agent_new(m, &ap, "i", 1, "t", 1, &a, &err_), AGENTLM_STATUS_STRUCT_SIZE, "struct_size");
    agentlm_trainer_params tp = agentlm_trainer_params_default();
    tp.struct_size = i < 5 ? k : i == 5 ? tp.struct_size - 4 : i == 6 ? tp.struct_size + 4 : tp.struct_size * 2;
    CHECK_FAIL(agentlm_trainer_new(m, &tp, NULL, &t2, &err_), AGENTLM_STATUS_STRUCT_SIZE, "struct_size");
  }
  CHECK(out == NULL && a == NULL && t2 == NULL);

  const int32_t bad[] = {-1, 1000, INT32_MAX, INT32_MIN};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    agentlm_agent_params ap = agentlm_agent_params_default();
    ap.format = bad[i];
    CHECK_FAIL(agentlm_agent_new(m, &ap, "i", 1, "t", 1, &a, &err_), AGENTLM_STATUS_INVALID_ARGUMENT, "format");
    ap = agentlm_agent_params_default();
    ap.chat_template = bad[i];
    CHECK_FAIL(agentlm_agent_new(m, &ap, "i", 1, "t", 1, &a, &err_), AGENTLM_STATUS_INVALID_ARGUMENT,
               "chat_template");
    CHECK_FAIL(agentlm_trainer_add_json(t, bad[i], k_record, strlen(k_record), NULL, &err_),
               AGENTLM_STATUS_INVALID_ARGUMENT, "data kind");
    CHECK_FAIL(agentlm_trainer_add_jsonl_file(t, bad[i], "/nonexistent", 12, NULL, &err_),
               AGENTLM_STATUS_INVALID_ARGUMENT, "data kind");
  }
  /* One past the last value of each enum. */
  agentlm_agent_params ap = agentlm_agent_params_default();
  ap.format = AGENTLM_FORMAT_JSON + 1;
  CHECK_FAIL(agentlm_agent_new(m, &ap, "i", 1, "t", 1, &a, &err_), AGENTLM_STATUS_INVALID_ARGUMENT, "format");
  ap = agentlm_agent_params_default();
  ap.chat_template = AGENTLM_TEMPLATE_AGENT_FLAN + 1;
  CHECK_FAIL(agentlm_agent_new(m, &ap, "i", 1, "t", 1, &a, &err_), AGENTLM_STATUS_INVALID_ARGUMENT, "chat_template");
  CHECK_FAIL(agentlm_trainer_add_json(t, AGENTLM_DATA_EVAL + 1, k_record, strlen(k_record), NULL, &err_),
             AGENTLM_STATUS_INVALID_ARGUMENT, "data kind");
  /* Bit sets with unknown bits, and out-of-range numbers in generate params. */
  const uint32_t bits[] = {0, AGENTLM_LORA_ALL + 1, 0xFFFFFFFFu};
  for (size_t i = 0; i < 3; i++) {
    agentlm_trainer_params tp = agentlm_trainer_params_default();
    tp.target_modules = bits[i];
    CHECK_FAIL(agentlm_trainer_new(m, &tp, NULL, &t2, &err_), AGENTLM_STATUS_INVALID_ARGUMENT, "target_modules");
  }
  uint32_t ids[8];
  size_t n = 0;
  CHECK_FAIL(agentlm_model_tokenize(m, "x", 1, 4, ids, 8, &n, &err_), AGENTLM_STATUS_INVALID_ARGUMENT, "flags");
  CHECK_FAIL(agentlm_model_tokenize(m, "x", 1, 0xFFFFFFFFu, ids, 8, &n, &err_), AGENTLM_STATUS_INVALID_ARGUMENT,
             "flags");
  agentlm_generate_params gp = agentlm_generate_params_default();
  gp.temperature = -1.0f;
  CHECK_FAIL(agentlm_session_begin(s, &gp, &err_), AGENTLM_STATUS_INVALID_ARGUMENT, "temperature");
  gp = agentlm_generate_params_default();
  gp.top_p = 2.0f;
  CHECK_FAIL(agentlm_session_begin(s, &gp, &err_), AGENTLM_STATUS_INVALID_ARGUMENT, "top_p");
  CHECK_FAIL(agentlm_trainer_run(t, 1, (double)NAN, NULL, NULL, NULL, &err_), AGENTLM_STATUS_INVALID_ARGUMENT, "NaN");
  CHECK(a == NULL && t2 == NULL);
}

/* ---- NULL in every pointer argument of representative functions ------------------------------- */

static void test_nulls(const agentlm_model *m, agentlm_session *s, agentlm_trainer *t) {
  const agentlm_status N = AGENTLM_STATUS_NULL_POINTER;
  uint32_t ids[16];
  size_t n = 0;
  char buf[64];
  agentlm_message msg = {{"user", 4}, {"hi", 2}};
  /* Model functions. */
  CHECK_FAIL(agentlm_model_tokenize(NULL, "hi", 2, 0, ids, 16, &n, &err_), N, "model is NULL");
  CHECK_FAIL(agentlm_model_tokenize(m, NULL, 2, 0, ids, 16, &n, &err_), N, "text is NULL");
  CHECK_FAIL(agentlm_model_tokenize(m, "hi", 2, 0, NULL, 16, &n, &err_), N, "output buffer");
  CHECK_FAIL(agentlm_model_tokenize(m, "hi", 2, 0, ids, 16, NULL, &err_), N, "n_ids");
  CHECK_FAIL(agentlm_model_detokenize(NULL, ids, 0, true, buf, 64, &n, &err_), N, "model");
  CHECK_FAIL(agentlm_model_detokenize(m, NULL, 2, true, buf, 64, &n, &err_), N, "ids");
  ids[0] = 28;
  CHECK_FAIL(agentlm_model_detokenize(m, ids, 1, true, NULL, 64, &n, &err_), N, "output buffer");
  CHECK_FAIL(agentlm_model_detokenize(m, ids, 1, true, buf, 64, NULL, &err_), N, "text_len");
  CHECK_FAIL(agentlm_model_apply_chat_template(NULL, &msg, 1, true, buf, 64, &n, &err_), N, "model");
  CHECK_FAIL(agentlm_model_apply_chat_template(m, NULL, 1, true, buf, 64, &n, &err_), N, "messages");
  CHECK_FAIL(agentlm_model_apply_chat_template(m, &msg, 1, true, buf, 64, NULL, &err_), N, "text_len");
  msg.role.ptr = NULL;
  CHECK_FAIL(agentlm_model_apply_chat_template(m, &msg, 1, true, buf, 64, &n, &err_), N, "message 0");
  CHECK(agentlm_model_retain(NULL) == NULL && agentlm_model_vocab_size(NULL) == 0);
  /* Session functions. */
  agentlm_session *out = NULL;
  CHECK_FAIL(agentlm_session_new(NULL, NULL, &out, &err_), N, "model");
  CHECK_FAIL(agentlm_session_new(m, NULL, NULL, &err_), N, "out");
  CHECK_FAIL(agentlm_session_append_text(NULL, "x", 1, &err_), N, "session");
  CHECK_FAIL(agentlm_session_append_text(s, NULL, 1, &err_), N, "text");
  CHECK_FAIL(agentlm_session_append_untrusted_text(s, NULL, 1, &err_), N, "text");
  CHECK_FAIL(agentlm_session_append_tokens(s, NULL, 1, &err_), N, "ids");
  CHECK_FAIL(agentlm_session_tokens(NULL, ids, 16, &n, &err_), N, "session");
  CHECK_FAIL(agentlm_session_tokens(s, ids, 16, NULL, &err_), N, "n_ids");
  CHECK_FAIL(agentlm_session_tokens(s, NULL, 16, &n, &err_), N, "output buffer"); /* s holds tokens */
  CHECK_FAIL(agentlm_session_fork(s, NULL, &err_), N, "out");
  CHECK_FAIL(agentlm_session_fork(NULL, &out, &err_), N, "session");
  CHECK_FAIL(agentlm_session_next_token(s, NULL, &err_), N, "token");
  CHECK_FAIL(agentlm_session_save_state(s, NULL, 1 << 30, &n, &err_), N, "output buffer");
  CHECK_FAIL(agentlm_session_save_state(s, NULL, 0, NULL, &err_), N, "size");
  CHECK_FAIL(agentlm_session_load_state(s, NULL, 10, &err_), N, "buf");
  CHECK_FAIL(agentlm_session_save_file(s, NULL, 4, &err_), N, "path");
  CHECK_FAIL(agentlm_session_load_file(s, NULL, 4, &err_), N, "path");
  CHECK_FAIL(agentlm_session_generate(NULL, NULL, NULL, NULL, NULL, &err_), N, "session");
  agentlm_generate_params gp = agentlm_generate_params_default();
  gp.stop = NULL;
  gp.n_stop = 2;
  CHECK_FAIL(agentlm_session_generate(s, &gp, NULL, NULL, NULL, &err_), N, "stop");
  agentlm_str stop = {NULL, 3};
  gp.stop = &stop;
  gp.n_stop = 1;
  CHECK_FAIL(agentlm_session_generate(s, &gp, NULL, NULL, NULL, &err_), N, "stop string 0");
  CHECK_STATUS(agentlm_session_cancel(NULL), N);
  CHECK(agentlm_session_capacity(NULL) == 0 && out == NULL);
  /* Agent functions. */
  agentlm_agent *a = NULL;
  agentlm_agent_step_result r;
  int freed = g_freed;
  CHECK_FAIL(agentlm_agent_new(NULL, NULL, "i", 1, "t", 1, &a, &err_), N, "model");
  CHECK_FAIL(agentlm_agent_new(m, NULL, NULL, 1, "t", 1, &a, &err_), N, "instructions");
  CHECK_FAIL(agentlm_agent_new(m, NULL, "i", 1, NULL, 1, &a, &err_), N, "task");
  CHECK_FAIL(agentlm_agent_new(m, NULL, "i", 1, "t", 1, NULL, &err_), N, "out");
  CHECK(a == NULL);
  a = new_agent(m, quiet_tool, NULL, NULL);
  CHECK_FAIL(agentlm_agent_add_tool(NULL, "x", 1, "d", 1, NULL, 0, NULL, NULL, free_user, &err_), N, "agent");
  CHECK_FAIL(agentlm_agent_add_tool(a, NULL, 1, "d", 1, NULL, 0, NULL, NULL, free_user, &err_), N, "name");
  CHECK_FAIL(agentlm_agent_add_tool(a, "x", 1, NULL, 1, NULL, 0, NULL, NULL, free_user, &err_), N, "description");
  CHECK_FAIL(agentlm_agent_add_tool(a, "x", 1, "d", 1, NULL, 2, NULL, NULL, free_user, &err_), N, "parameters_json");
  CHECK(g_freed == freed + 4); /* each refused tool's user_data released once */
  CHECK_FAIL(agentlm_agent_step(NULL, 0, 0, &r, &err_), N, "agent");
  CHECK_FAIL(agentlm_agent_step(a, 0, 0, NULL, &err_), N, "out");
  CHECK_FAIL(agentlm_agent_submit_observation(a, NULL, 1, &err_), N, "text");
  CHECK_FAIL(agentlm_agent_set_outcome(a, 1.0, NULL, 1, &err_), N, "outcome");
  CHECK_FAIL(agentlm_agent_trajectory_json(a, NULL, 0, NULL, &err_), N, "len");
  CHECK_STATUS(agentlm_agent_cancel(NULL), N);
  CHECK(!agentlm_agent_is_finished(NULL));
  /* (NULL in agentlm_tool_result_set: in test_tool_callbacks, which has a callback to call it from.) */
  /* Adapters and trainers. */
  agentlm_adapter *ad = NULL;
  agentlm_trainer *t2 = NULL;
  agentlm_model *merged = NULL;
  double loss;
  bool added;
  CHECK_FAIL(agentlm_adapter_load(NULL, "/x", 2, &ad, &err_), N, "model");
  CHECK_FAIL(agentlm_adapter_load(m, NULL, 2, &ad, &err_), N, "dir");
  CHECK_FAIL(agentlm_adapter_load(m, "/x", 2, NULL, &err_), N, "out");
  CHECK_FAIL(agentlm_adapter_save(NULL, "/x", 2, &err_), N, "adapter");
  CHECK_FAIL(agentlm_model_merge_adapter(NULL, NULL, 1.0f, &merged, &err_), N, "model");
  CHECK_FAIL(agentlm_model_merge_adapter(m, NULL, 1.0f, &merged, &err_), N, "adapter");
  CHECK_FAIL(agentlm_trainer_new(NULL, NULL, NULL, &t2, &err_), N, "model");
  CHECK_FAIL(agentlm_trainer_new(m, NULL, NULL, NULL, &err_), N, "out");
  CHECK_FAIL(agentlm_trainer_add_json(NULL, 0, "{}", 2, NULL, &err_), N, "trainer");
  CHECK_FAIL(agentlm_trainer_add_json(t, 0, NULL, 2, NULL, &err_), N, "json");
  CHECK_FAIL(agentlm_trainer_add_jsonl_file(t, 0, NULL, 2, NULL, &err_), N, "path");
  CHECK_FAIL(agentlm_trainer_add_episode(t, NULL, &added, &err_), N, "agent");
  CHECK_FAIL(agentlm_trainer_add_episode(NULL, a, &added, &err_), N, "trainer");
  CHECK_FAIL(agentlm_trainer_run(NULL, 1, 0, NULL, NULL, NULL, &err_), N, "trainer");
  CHECK_FAIL(agentlm_trainer_evaluate(t, NULL, NULL, &err_), N, "loss");
  CHECK_FAIL(agentlm_trainer_evaluate(NULL, &loss, NULL, &err_), N, "trainer");
  CHECK_FAIL(agentlm_trainer_adapter(t, NULL, &err_), N, "out");
  CHECK_FAIL(agentlm_trainer_save_adapter(t, NULL, 2, &err_), N, "dir");
  CHECK_FAIL(agentlm_trainer_checkpoint(t, NULL, 2, &err_), N, "dir");
  CHECK_FAIL(agentlm_trainer_resume(m, NULL, 2, &t2, &err_), N, "dir");
  CHECK_FAIL(agentlm_trainer_resume(m, "/x", 2, NULL, &err_), N, "out");
  CHECK_STATUS(agentlm_trainer_cancel(NULL), N);
  CHECK(agentlm_trainer_step(NULL) == 0 && agentlm_adapter_rank(NULL) == 0);
  CHECK(ad == NULL && t2 == NULL && merged == NULL);
  /* Errors and frees. */
  CHECK(strcmp(agentlm_error_message(NULL), "") == 0 && agentlm_error_status(NULL) == AGENTLM_STATUS_OK);
  agentlm_error_free(NULL);
  agentlm_model_free(NULL);
  agentlm_session_free(NULL);
  agentlm_agent_free(NULL);
  agentlm_adapter_free(NULL);
  agentlm_trainer_free(NULL);
  agentlm_agent_free(a);
}

/* ---- token callbacks: stop, re-entry, freeing its own session ---------------------------------- */

typedef struct {
  agentlm_session *s;
  const agentlm_model *m;
  int calls;
  agentlm_status append, generate, tokens, fork, save, reset, cancel_st;
  char message[512];
  agentlm_status tokenize, other_new, other_generate;
  uint32_t other_tokens;
} reentry;

static bool count_other(void *user, uint32_t token, const char *text, size_t len) {
  (void)text;
  (void)len;
  if (token != AGENTLM_TOKEN_NONE) (*(uint32_t *)user)++;
  return true;
}

static bool reenter(void *user, uint32_t token, const char *text, size_t len) {
  reentry *r = (reentry *)user;
  (void)token;
  (void)text;
  (void)len;
  if (r->calls++ > 0) return true;
  /* The same session: refused at once, with a message that says why. */
  agentlm_error *e = NULL;
  r->append = agentlm_session_append_text(r->s, "x", 1, &e);
  snprintf(r->message, sizeof r->message, "%s", agentlm_error_message(e));
  agentlm_error_free(e);
  r->generate = agentlm_session_generate(r->s, NULL, NULL, NULL, NULL, NULL);
  size_t n = 0;
  r->tokens = agentlm_session_tokens(r->s, NULL, 0, &n, NULL);
  agentlm_session *f = NULL;
  r->fork = agentlm_session_fork(r->s, &f, NULL);
  r->save = agentlm_session_save_state(r->s, NULL, 0, &n, NULL);
  r->reset = agentlm_session_reset(r->s, NULL);
  /* The model, and another session on it: fine, even a generation. */
  uint32_t ids[8];
  r->tokenize = agentlm_model_tokenize(r->m, "Hi", 2, 0, ids, 8, &n, NULL);
  agentlm_session *other = NULL;
  r->other_new = agentlm_session_new(r->m, NULL, &other, NULL);
  agentlm_session_append_text(other, "Hi", 2, NULL);
  agentlm_generate_params gp = agentlm_generate_params_default();
  gp.max_tokens = 1;
  gp.ignore_eos = true;
  r->other_generate = agentlm_session_generate(other, &gp, count_other, &r->other_tokens, NULL, NULL);
  agentlm_session_free(other);
  return false; /* ask to stop */
}

static bool free_own_session(void *user, uint32_t token, const char *text, size_t len) {
  reentry *r = (reentry *)user;
  (void)token;
  (void)text;
  (void)len;
  if (r->calls++ == 0) {
    agentlm_session_free(r->s); /* deferred: the session is released when generate returns */
    r->append = agentlm_session_append_text(r->s, "x", 1, NULL);
    r->cancel_st = agentlm_session_cancel(r->s);
    agentlm_session_free(r->s); /* and a second free is ignored */
  }
  return true; /* keep going: the free cancelled the generation */
}

static void test_token_callbacks(const agentlm_model *m) {
  agentlm_session *s = new_session(m, 128);
  MUST(agentlm_session_append_text(s, "The capital of France is", 24, &err_));
  size_t before = 0, after = 0;
  MUST(agentlm_session_tokens(s, NULL, 0, &before, &err_));
  reentry r;
  memset(&r, 0, sizeof r);
  r.s = s;
  r.m = m;
  agentlm_generate_params gp = agentlm_generate_params_default();
  gp.max_tokens = 8;
  gp.ignore_eos = true;
  agentlm_generation g;
  CHECK_STATUS(agentlm_session_generate(s, &gp, reenter, &r, &g, NULL), AGENTLM_STATUS_STOPPED);
  CHECK(r.calls == 1 && g.n_tokens == 1 && g.finish_reason == AGENTLM_FINISH_CALLBACK);
  CHECK(r.append == AGENTLM_STATUS_BUSY && r.generate == AGENTLM_STATUS_BUSY && r.tokens == AGENTLM_STATUS_BUSY);
  CHECK(r.fork == AGENTLM_STATUS_BUSY && r.save == AGENTLM_STATUS_BUSY && r.reset == AGENTLM_STATUS_BUSY);
  CHECK(strstr(r.message, "another call is running on this session") != NULL &&
        strstr(r.message, "own callbacks") != NULL);
  CHECK(r.tokenize == AGENTLM_STATUS_OK && r.other_new == AGENTLM_STATUS_OK);
  CHECK(r.other_generate == AGENTLM_STATUS_OK && r.other_tokens == 1);
  /* The refused reset did nothing; the session is usable. */
  MUST(agentlm_session_tokens(s, NULL, 0, &after, &err_));
  CHECK(after == before + 1);
  MUST(agentlm_session_append_text(s, " and", 4, &err_));

  /* A callback that frees its own session: the generation is cancelled, the session released after. */
  memset(&r, 0, sizeof r);
  r.s = s;
  r.m = m;
  gp.max_tokens = 20;
  CHECK_STATUS(agentlm_session_generate(s, &gp, free_own_session, &r, &g, NULL), AGENTLM_STATUS_CANCELLED);
  CHECK(r.calls <= 2 && g.finish_reason == AGENTLM_FINISH_CANCELLED);
  CHECK(r.append == AGENTLM_STATUS_INVALID_HANDLE && r.cancel_st == AGENTLM_STATUS_INVALID_HANDLE);
  CHECK(agentlm_session_capacity(s) == 0);
  CHECK_STATUS(agentlm_session_append_text(s, "x", 1, NULL), AGENTLM_STATUS_INVALID_HANDLE);
}

/* ---- slow callbacks and cancel from another thread ------------------------------------------- */

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int which; /* 0 session, 1 agent, 2 trainer */
  const void *handle;
  int calls;               /* callback calls */
  int sleeping;            /* the first callback has begun its sleep */
  int cancelled;           /* the other thread's cancel returned */
  int cancelled_in_sleep;  /* ... before the sleeping callback returned */
  agentlm_status cancel_st;
} slow_ctx;

static void slow_ctx_init(slow_ctx *c, int which, const void *handle) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  c->which = which;
  c->handle = handle;
}

static void slow_ctx_destroy(slow_ctx *c) {
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
}

/* The body of every slow callback: the first call sleeps 200 ms while the other thread cancels. */
static void slow_enter(slow_ctx *c) {
  pthread_mutex_lock(&c->mu);
  int first = c->calls++ == 0;
  if (first) {
    c->sleeping = 1;
    pthread_cond_broadcast(&c->cv);
  }
  pthread_mutex_unlock(&c->mu);
  if (!first) return;
  sleep_ms(200);
  pthread_mutex_lock(&c->mu);
  c->cancelled_in_sleep = c->cancelled;
  pthread_mutex_unlock(&c->mu);
}

static void *cancel_while_sleeping(void *arg) {
  slow_ctx *c = (slow_ctx *)arg;
  pthread_mutex_lock(&c->mu);
  while (!c->sleeping) pthread_cond_wait(&c->cv, &c->mu);
  pthread_mutex_unlock(&c->mu);
  sleep_ms(20); /* well inside the callback's sleep */
  agentlm_status st = c->which == 0   ? agentlm_session_cancel((const agentlm_session *)c->handle)
                      : c->which == 1 ? agentlm_agent_cancel((const agentlm_agent *)c->handle)
                                      : agentlm_trainer_cancel((const agentlm_trainer *)c->handle);
  pthread_mutex_lock(&c->mu);
  c->cancel_st = st;
  c->cancelled = 1;
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

static bool slow_token(void *user, uint32_t token, const char *text, size_t len) {
  (void)token;
  (void)text;
  (void)len;
  slow_enter((slow_ctx *)user);
  return true;
}

static void test_slow_token_callback(const agentlm_model *m) {
  agentlm_session *s = new_session(m, 128);
  MUST(agentlm_session_append_text(s, "Write a long story.", 19, &err_));
  slow_ctx c;
  slow_ctx_init(&c, 0, s);
  pthread_t th;
  pthread_create(&th, NULL, cancel_while_sleeping, &c);
  agentlm_generate_params gp = agentlm_generate_params_default();
  gp.max_tokens = 50;
  gp.ignore_eos = true;
  agentlm_generation g;
  double t0 = now_s();
  CHECK_STATUS(agentlm_session_generate(s, &gp, slow_token, &c, &g, NULL), AGENTLM_STATUS_CANCELLED);
  double took = now_s() - t0;
  pthread_join(th, NULL);
  CHECK(c.cancel_st == AGENTLM_STATUS_OK && c.cancelled_in_sleep); /* cancel did not wait for the callback */
  CHECK(g.finish_reason == AGENTLM_FINISH_CANCELLED && g.n_tokens <= 2 && c.calls <= 2);
  fprintf(stderr, "slow token callback: cancelled after %u tokens, generate returned after %.2f s\n", g.n_tokens, took);
  if (!g_tiny) CHECK(took < 2.0); /* one 200 ms sleep and a token or two, not 50 tokens' worth of sleeps */
  /* Usable afterwards. */
  gp.max_tokens = 1;
  MUST(agentlm_session_generate(s, &gp, NULL, NULL, &g, &err_));
  CHECK(g.n_tokens == 1);
  agentlm_session_free(s);
  slow_ctx_destroy(&c);
}

/* ---- tool callbacks: failure, re-entry, slow + cancel, freeing its own agent ------------------- */

/* Agent steps are the slowest calls here (a prompt prefill and a reply: over a minute each under
 * valgrind), so two steps carry all the tool-callback cases. */
typedef struct {
  agentlm_agent *a;
  const agentlm_model *m;
  slow_ctx *slow;
  int calls;
  agentlm_tool_result *kept;
  agentlm_status null_result, null_text, empty_text;
  agentlm_status step, submit, json, add_tool, set_outcome, tokenize;
  int finished;
  int freed_before, freed_in_callback;
  char message[512];
} tool_ctx;

/* First step: NULL arguments of agentlm_tool_result_set; calls back into the busy agent (refused) and
 * into the model (fine); keeps the result pointer past the callback; sleeps 200 ms while another
 * thread cancels the agent. */
static bool busy_slow_tool(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  tool_ctx *c = (tool_ctx *)user;
  (void)input;
  (void)len;
  c->calls++;
  c->kept = r;
  c->null_result = agentlm_tool_result_set(NULL, "x", 1);
  c->null_text = agentlm_tool_result_set(r, NULL, 3);
  c->empty_text = agentlm_tool_result_set(r, NULL, 0);
  agentlm_agent_step_result s;
  agentlm_error *e = NULL;
  c->step = agentlm_agent_step(c->a, 0, 0, &s, &e);
  snprintf(c->message, sizeof c->message, "%s", agentlm_error_message(e));
  agentlm_error_free(e);
  c->submit = agentlm_agent_submit_observation(c->a, "x", 1, NULL);
  size_t n = 0;
  c->json = agentlm_agent_trajectory_json(c->a, NULL, 0, &n, NULL);
  c->set_outcome = agentlm_agent_set_outcome(c->a, 1.0, "x", 1, NULL);
  c->freed_before = g_freed;
  c->add_tool = agentlm_agent_add_tool(c->a, "x", 1, "d", 1, NULL, 0, NULL, NULL, free_user, NULL);
  c->finished = agentlm_agent_is_finished(c->a);
  uint32_t ids[8];
  c->tokenize = agentlm_model_tokenize(c->m, "Hi", 2, 0, ids, 8, &n, NULL);
  slow_enter(c->slow);
  return agentlm_tool_result_set(r, "You see a room.", 15) == AGENTLM_STATUS_OK;
}

/* Second step: the tool fails (no observation set) and frees its own agent. */
static bool failing_freeing_tool(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  tool_ctx *c = (tool_ctx *)user;
  (void)input;
  (void)len;
  (void)r;
  c->calls++;
  c->freed_before = g_freed;
  agentlm_agent_free(c->a); /* deferred until the step returns */
  agentlm_agent_step_result s;
  c->step = agentlm_agent_step(c->a, 0, 0, &s, NULL);
  c->freed_in_callback = g_freed - c->freed_before; /* user_data not released yet */
  agentlm_agent_free(c->a);                         /* a second free: ignored */
  return false;
}

static void test_tool_callbacks(const agentlm_model *m) {
  agentlm_agent_step_result s;
  tool_ctx c;
  slow_ctx sc;
  memset(&c, 0, sizeof c);
  c.m = m;
  c.slow = &sc;
  c.a = new_agent(m, busy_slow_tool, &c, NULL);
  slow_ctx_init(&sc, 1, c.a);
  pthread_t th;
  pthread_create(&th, NULL, cancel_while_sleeping, &sc);
  MUST(agentlm_agent_step(c.a, 0, 0, &s, &err_));
  pthread_join(th, NULL);
  CHECK(s.kind == AGENTLM_STEP_ACTION && c.calls == 1 && strcmp(s.observation.ptr, "You see a room.") == 0);
  CHECK(c.null_result == AGENTLM_STATUS_NULL_POINTER && c.null_text == AGENTLM_STATUS_NULL_POINTER);
  CHECK(c.empty_text == AGENTLM_STATUS_OK);
  CHECK(c.step == AGENTLM_STATUS_BUSY && c.submit == AGENTLM_STATUS_BUSY && c.json == AGENTLM_STATUS_BUSY);
  CHECK(c.set_outcome == AGENTLM_STATUS_BUSY && c.add_tool == AGENTLM_STATUS_BUSY && !c.finished);
  CHECK(g_freed == c.freed_before + 1); /* the refused tool's user_data */
  CHECK(strstr(c.message, "another call is running on this agent") != NULL &&
        strstr(c.message, "own callbacks") != NULL);
  CHECK(c.tokenize == AGENTLM_STATUS_OK);
  /* The result pointer is stale once the callback has returned. */
  CHECK_STATUS(agentlm_tool_result_set(c.kept, "late", 4), AGENTLM_STATUS_INVALID_HANDLE);
  /* The cancel that came while the tool slept did not wait for it; it cancels the next reply. */
  CHECK(sc.cancel_st == AGENTLM_STATUS_OK && sc.cancelled_in_sleep);
  MUST(agentlm_agent_step(c.a, 0, 0, &s, &err_));
  CHECK(s.kind == AGENTLM_STEP_CANCELLED);
  agentlm_agent_free(c.a);
  slow_ctx_destroy(&sc);

  /* A failing tool that frees its own agent: the observation defaults to "The tool failed."; the agent
   * (and its tools' user_data) is released when the step returns, so only the result's plain values
   * may be read afterwards, not its strings. */
  memset(&c, 0, sizeof c);
  c.m = m;
  int freed = g_freed;
  c.a = new_agent(m, failing_freeing_tool, &c, free_user);
  MUST(agentlm_agent_step(c.a, 0, 0, &s, &err_));
  CHECK(s.kind == AGENTLM_STEP_ACTION && s.observation.len == strlen("The tool failed."));
  CHECK(c.calls == 1 && c.step == AGENTLM_STATUS_INVALID_HANDLE && c.freed_in_callback == 0);
  CHECK(g_freed == freed + 1);
  CHECK_STATUS(agentlm_agent_cancel(c.a), AGENTLM_STATUS_INVALID_HANDLE);
  CHECK(!agentlm_agent_is_finished(c.a));
}

/* ---- trainer: log callback re-entry; progress callbacks --------------------------------------- */

static void test_trainer_log_reentry(const agentlm_model *m, const agentlm_trainer *t) {
  /* A record whose trained reply lies beyond max_tokens (96): the trainer logs a warning about it
   * while it is busy adding it; the log callback calls back into the trainer and the model. */
  char rec[2048];
  char human[1200] = "";
  for (int i = 0; i < 60; i++) strcat(human, "Go to the door. ");
  snprintf(rec, sizeof rec,
           "{\"id\":\"long\",\"reward\":1,\"conversations\":[{\"from\":\"human\",\"value\":\"%s\",\"loss\":null},"
           "{\"from\":\"gpt\",\"value\":\"ACTION: go to door 1\",\"loss\":true}]}",
           human);
  g_log.trainer = t;
  g_log.model = m;
  bool added = true;
  CHECK_FAIL(agentlm_trainer_add_json(t, AGENTLM_DATA_AGENT, rec, strlen(rec), &added, &err_),
             AGENTLM_STATUS_INVALID_ARGUMENT, "no trained token");
  g_log.trainer = NULL;
  CHECK(g_log.reentered == 1 && g_log.inner == AGENTLM_STATUS_BUSY && g_log.inner_step == 0);
  CHECK(g_log.vocab == 49152 && g_log.bad_text == 0 && added);
}

typedef struct {
  const agentlm_trainer *t;
  const agentlm_model *m;
  int calls;
  agentlm_status run, evaluate, adapter, add;
  uint64_t step;
  uint32_t vocab;
} progress_ctx;

static bool stop_progress(void *user, const agentlm_train_progress *p) {
  progress_ctx *c = (progress_ctx *)user;
  c->calls++;
  CHECK(p->step >= 1);
  c->run = agentlm_trainer_run(c->t, 1, 0, NULL, NULL, NULL, NULL);
  double loss;
  c->evaluate = agentlm_trainer_evaluate(c->t, &loss, NULL, NULL);
  agentlm_adapter *ad = NULL;
  c->adapter = agentlm_trainer_adapter(c->t, &ad, NULL);
  c->add = agentlm_trainer_add_json(c->t, AGENTLM_DATA_AGENT, k_record, strlen(k_record), NULL, NULL);
  c->step = agentlm_trainer_step(c->t);
  c->vocab = agentlm_model_vocab_size(c->m);
  return false; /* ask to stop */
}

static bool slow_progress_cb(void *user, const agentlm_train_progress *p) {
  (void)p;
  slow_enter((slow_ctx *)user);
  return true;
}

static bool free_own_trainer(void *user, const agentlm_train_progress *p) {
  progress_ctx *c = (progress_ctx *)user;
  (void)p;
  if (c->calls++ == 0) {
    agentlm_trainer_free((agentlm_trainer *)c->t); /* deferred until run returns, which it soon does */
    c->run = agentlm_trainer_run(c->t, 1, 0, NULL, NULL, NULL, NULL);
    agentlm_trainer_free((agentlm_trainer *)c->t);
  }
  return true;
}

static void test_progress_callbacks(const agentlm_model *m, agentlm_trainer *t) {
  MUST(agentlm_trainer_add_json(t, AGENTLM_DATA_AGENT, k_record, strlen(k_record), NULL, &err_));
  /* Stop from the callback, after calls back into the busy trainer (refused) and the model (fine). */
  progress_ctx c;
  memset(&c, 0, sizeof c);
  c.t = t;
  c.m = m;
  agentlm_train_progress last;
  CHECK_STATUS(agentlm_trainer_run(t, 5, 0, stop_progress, &c, &last, NULL), AGENTLM_STATUS_STOPPED);
  CHECK(c.calls == 1 && last.step == 1 && agentlm_trainer_step(t) == 1);
  CHECK(c.run == AGENTLM_STATUS_BUSY && c.evaluate == AGENTLM_STATUS_BUSY && c.adapter == AGENTLM_STATUS_BUSY);
  CHECK(c.add == AGENTLM_STATUS_BUSY && c.step == 0 && c.vocab == 49152);

  /* A slow progress callback (200 ms) and a cancel from another thread meanwhile. */
  slow_ctx sc;
  slow_ctx_init(&sc, 2, t);
  pthread_t th;
  pthread_create(&th, NULL, cancel_while_sleeping, &sc);
  CHECK_STATUS(agentlm_trainer_run(t, 20, 0, slow_progress_cb, &sc, &last, NULL), AGENTLM_STATUS_CANCELLED);
  pthread_join(th, NULL);
  CHECK(sc.cancel_st == AGENTLM_STATUS_OK && sc.cancelled_in_sleep && sc.calls == 1);
  CHECK(agentlm_trainer_step(t) == 2); /* the step after the cancel was discarded */
  slow_ctx_destroy(&sc);

  /* A progress callback that frees its own trainer: the run is cancelled, the trainer released. */
  agentlm_trainer *t2 = new_trainer(m);
  MUST(agentlm_trainer_add_json(t2, AGENTLM_DATA_AGENT, k_record, strlen(k_record), NULL, &err_));
  memset(&c, 0, sizeof c);
  c.t = t2;
  c.m = m;
  CHECK_STATUS(agentlm_trainer_run(t2, 20, 0, free_own_trainer, &c, NULL, NULL), AGENTLM_STATUS_CANCELLED);
  CHECK(c.calls == 1 && c.run == AGENTLM_STATUS_INVALID_HANDLE);
  CHECK_STATUS(agentlm_trainer_cancel(t2), AGENTLM_STATUS_INVALID_HANDLE);
}

int main(int argc, char **argv) {
  g_model_path = argc > 1 ? argv[1] : getenv("AGENTLM_MODEL");
  if (!g_model_path || !*g_model_path) {
    fprintf(stderr, "usage: test_misuse MODEL.gguf (or set AGENTLM_MODEL)\n");
    return 2;
  }
  g_tiny = env_flag("AGENTLM_TEST_TINY");
  g_no_train = env_flag("AGENTLM_TEST_NO_TRAIN");

  double t0 = now_s();
  SECTION(test_statuses());
  SECTION(test_load_misuse());
  agentlm_model *m = NULL;
  SECTION(m = load_model());
  if (m) {
    agentlm_session *s = new_session(m, 256);
    MUST(agentlm_session_append_text(s, "Hello", 5, &err_));
    agentlm_trainer *t = NULL;
    SECTION(t = new_trainer(m));
    SECTION(test_model_after_free(m));
    SECTION(test_session_after_free(m));
    SECTION(test_agent_after_free(m, t));
    SECTION(test_adapter_after_free(m, t, s));
    SECTION(test_trainer_after_free(m));
    SECTION(test_foreign_pointers(m, s));
    SECTION(test_struct_sizes_and_enums(m, s, t));
    SECTION(test_nulls(m, s, t));
    SECTION(test_token_callbacks(m));
    SECTION(test_slow_token_callback(m));
    SECTION(test_tool_callbacks(m));
    SECTION(test_trainer_log_reentry(m, t));
    if (!g_no_train) SECTION(test_progress_callbacks(m, t));
    else fprintf(stderr, "AGENTLM_TEST_NO_TRAIN: progress callbacks not run\n");
    agentlm_trainer_free(t);
    agentlm_session_free(s);
    agentlm_model_free(m);
  }
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
