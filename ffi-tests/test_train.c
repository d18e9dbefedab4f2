/*
 * Tests of the LoRA part of the C API (agentlm_adapter_*, agentlm_trainer_*) on the real SmolLM2 model.
 *
 *   test_train MODEL.gguf PEFT_ADAPTER_DIR
 *
 * PEFT_ADAPTER_DIR is the Hugging Face PEFT reference adapter (../shared/golden/smollm2_lora_r8): greedy
 * tokens with it attached, detached and merged must be those transformers + PEFT produced.
 * AGENTLM_TEST_TINY=1 says MODEL is a cut-down copy of the real model (valgrind runs): the reference
 * adapter then must be refused (it has 30 layers) and greedy-token checks are skipped.
 * Prints "N passed, N failed" and exits non-zero on any failure.
 */
#include "agentlm.h"
#include "check.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


static int g_tiny;

/* "Once upon a time, in a small village nestled between two mountains, there lived a" */
static const uint32_t k_story[17] = {6403, 1980, 253, 655, 28, 281, 253, 1165, 6560, 32047, 826, 827, 8718, 28, 665, 4161, 253};
/* transformers + PEFT greedy continuations (24 tokens; the first 16 are checked). */
static const uint32_t k_lora[16] = {9357, 284, 1942, 4166, 3365, 3906, 4075, 30, 2306, 436, 253, 10632, 392, 10247, 282, 260};
static const uint32_t k_base[16] = {9357, 284, 1942, 4166, 3365, 3906, 4075, 30, 2306, 436, 253, 10632, 11239, 259, 284, 761};

typedef struct {
  uint32_t ids[64];
  size_t n;
} ids_t;

static bool collect(void *user, uint32_t token, const char *text, size_t len) {
  (void)text;
  (void)len;
  ids_t *c = (ids_t *)user;
  if (c->n < 64) c->ids[c->n++] = token;
  return true;
}

/* Greedy continuation of k_story on a fresh session of `m` with `adapter` (may be NULL). */
static ids_t greedy(const agentlm_model *m, const agentlm_adapter *adapter, size_t n) {
  ids_t out = {{0}, 0};
  agentlm_session *s = NULL;
  MUST(agentlm_session_new(m, NULL, &s, &err_));
  if (adapter) MUST(agentlm_session_set_adapter(s, adapter, 1.0f, &err_));
  MUST(agentlm_session_append_tokens(s, k_story, 17, &err_));
  agentlm_generate_params g = agentlm_generate_params_default();
  g.temperature = 0;
  g.max_tokens = (uint32_t)n;
  g.ignore_eos = true;
  MUST(agentlm_session_generate(s, &g, collect, &out, NULL, &err_));
  agentlm_session_free(s);
  return out;
}

static void test_reference_adapter(const agentlm_model *m, const char *dir) {
  agentlm_adapter *a = NULL;
  agentlm_error *err = NULL;
  CHECK_STATUS(agentlm_adapter_load(NULL, dir, strlen(dir), &a, NULL), AGENTLM_STATUS_NULL_POINTER);
  CHECK_STATUS(agentlm_adapter_load(m, "/nonexistent-adapter", 20, &a, NULL), AGENTLM_STATUS_IO);
  CHECK_STATUS(agentlm_adapter_load(m, "\xff", 1, &a, NULL), AGENTLM_STATUS_INVALID_UTF8);
  CHECK_STATUS(agentlm_adapter_load(m, dir, strlen(dir), NULL, NULL), AGENTLM_STATUS_NULL_POINTER);
  CHECK(a == NULL);
  if (g_tiny) {
    /* 30 layers of LoRA matrices for a 2-layer model: refused, naming a tensor. */
    CHECK_STATUS(agentlm_adapter_load(m, dir, strlen(dir), &a, &err), AGENTLM_STATUS_MODEL);
    CHECK(err && strstr(agentlm_error_message(err), "2-layer") != NULL);
    agentlm_error_free(err);
    return;
  }
  MUST(agentlm_adapter_load(m, dir, strlen(dir), &a, &err_));
  CHECK(agentlm_adapter_rank(a) == 8 && agentlm_adapter_rank(NULL) == 0);
  ids_t on = greedy(m, a, 16), off = greedy(m, NULL, 16);
  CHECK(on.n == 16 && memcmp(on.ids, k_lora, sizeof k_lora) == 0);
  CHECK(off.n == 16 && memcmp(off.ids, k_base, sizeof k_base) == 0);

  /* Hot swap on one live session: attach, detach. */
  agentlm_session *s = NULL;
  MUST(agentlm_session_new(m, NULL, &s, &err_));
  MUST(agentlm_session_append_tokens(s, k_story, 17, &err_));
  MUST(agentlm_session_set_adapter(s, a, 1.0f, &err_));
  CHECK_STATUS(agentlm_session_set_adapter(s, a, 1.0f / 0.0f, NULL), AGENTLM_STATUS_INVALID_ARGUMENT);
  ids_t live = {{0}, 0};
  agentlm_generate_params g = agentlm_generate_params_default();
  g.temperature = 0;
  g.max_tokens = 16;
  MUST(agentlm_session_generate(s, &g, collect, &live, NULL, &err_));
  CHECK(live.n == 16 && memcmp(live.ids, k_lora, sizeof k_lora) == 0);
  MUST(agentlm_session_truncate(s, 17, &err_));
  MUST(agentlm_session_set_adapter(s, NULL, 1.0f, &err_));
  live.n = 0;
  MUST(agentlm_session_generate(s, &g, collect, &live, NULL, &err_));
  CHECK(live.n == 16 && memcmp(live.ids, k_base, sizeof k_base) == 0);
  agentlm_session_free(s);

  /* Merged into a new model: the adapter's tokens without the adapter. */
  agentlm_model *merged = NULL;
  CHECK_STATUS(agentlm_model_merge_adapter(m, NULL, 1.0f, &merged, NULL), AGENTLM_STATUS_NULL_POINTER);
  MUST(agentlm_model_merge_adapter(m, a, 1.0f, &merged, &err_));
  ids_t mg = greedy(merged, NULL, 16);
  CHECK(mg.n == 16 && memcmp(mg.ids, k_lora, sizeof k_lora) == 0);
  agentlm_model_free(merged);

  /* Save and reload: the same tokens. */
  char tmpl[] = "/tmp/agentlm-adapter-XXXXXX";
  char *tmp = mkdtemp(tmpl);
  CHECK(tmp != NULL);
  if (tmp) {
    MUST(agentlm_adapter_save(a, tmp, strlen(tmp), &err_));
    agentlm_adapter *b = NULL;
    MUST(agentlm_adapter_load(m, tmp, strlen(tmp), &b, &err_));
    ids_t again = greedy(m, b, 16);
    CHECK(again.n == 16 && memcmp(again.ids, k_lora, sizeof k_lora) == 0);
    agentlm_adapter_free(b);
    char path[512];
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    unlink(path);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", tmp);
    unlink(path);
    rmdir(tmp);
  }
  agentlm_adapter_free(a);
  agentlm_adapter_free(NULL);
}

static int g_progress_calls;
static uint64_t g_last_step;
static const agentlm_trainer *g_trainer;

static bool on_progress(void *user, const agentlm_train_progress *p) {
  int *stop_at = (int *)user;
  g_progress_calls++;
  CHECK(p->step == g_last_step + 1);
  g_last_step = p->step;
  CHECK(p->loss > 0 && p->tokens > 0 && p->loss_tokens > 0 && p->tokens_per_s > 0 && p->learning_rate > 0);
  /* ABI 3: the call's mean speed, time so far, ETA and the peak memory (Linux reports it). */
  CHECK(p->mean_tokens_per_s > 0 && p->elapsed_s > 0 && p->eta_s >= 0 && p->peak_rss_bytes > (1u << 20));
  /* The trainer is busy: other calls on it are refused, not raced. */
  CHECK_STATUS(agentlm_trainer_add_json(g_trainer, AGENTLM_DATA_AGENT, "{}", 2, NULL, NULL), AGENTLM_STATUS_BUSY);
  return *stop_at == 0 || g_progress_calls < *stop_at;
}

static const char *record(char *buf, size_t cap, int i, double reward) {
  snprintf(buf, cap,
           "{\"id\":\"r%d\",\"reward\":%g,\"conversations\":[{\"from\":\"human\",\"value\":\"You are in room %d. "
           "Go to the door.\",\"loss\":null},{\"from\":\"gpt\",\"value\":\"THOUGHT: the door is north.\\nACTION: go "
           "to door %d\",\"loss\":true}]}",
           i, reward, i, i);
  return buf;
}

static bool go_tool(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  (void)user;
  char obs[128];
  snprintf(obs, sizeof obs, "You arrive at %.*s.", (int)(len > 60 ? 60 : len), input);
  return agentlm_tool_result_set(r, obs, strlen(obs)) == AGENTLM_STATUS_OK;
}

static void test_trainer(const agentlm_model *m) {
  agentlm_trainer_params p = agentlm_trainer_params_default();
  CHECK(p.struct_size == sizeof p && p.lora_rank == 8 && p.lora_alpha == 16 && p.target_modules == AGENTLM_LORA_ALL);
  CHECK(p.agent_ratio > 0.19f && p.agent_ratio < 0.21f && p.reward_threshold == 1.0 && p.max_tokens == 1024);
  agentlm_trainer *t = NULL;
  p.target_modules = 0;
  CHECK_STATUS(agentlm_trainer_new(m, &p, NULL, &t, NULL), AGENTLM_STATUS_INVALID_ARGUMENT);
  p.target_modules = 1u << 9;
  CHECK_STATUS(agentlm_trainer_new(m, &p, NULL, &t, NULL), AGENTLM_STATUS_INVALID_ARGUMENT);
  p = agentlm_trainer_params_default();
  p.lora_rank = 0;
  CHECK_STATUS(agentlm_trainer_new(m, &p, NULL, &t, NULL), AGENTLM_STATUS_INVALID_ARGUMENT);
  p = agentlm_trainer_params_default();
  p.struct_size = 3;
  CHECK_STATUS(agentlm_trainer_new(m, &p, NULL, &t, NULL), AGENTLM_STATUS_STRUCT_SIZE);
  CHECK_STATUS(agentlm_trainer_new(NULL, NULL, NULL, &t, NULL), AGENTLM_STATUS_NULL_POINTER);
  CHECK(t == NULL);

  p = agentlm_trainer_params_default();
  p.lora_rank = 4;
  p.lora_alpha = 8;
  p.target_modules = AGENTLM_LORA_Q_PROJ | AGENTLM_LORA_V_PROJ | AGENTLM_LORA_DOWN_PROJ;
  p.learning_rate = 2e-3f;
  p.max_tokens = 192; /* room for an agent episode: instructions, "OK", task, reply */
  p.seed = 3;
  MUST(agentlm_trainer_new(m, &p, NULL, &t, &err_));
  g_trainer = t;
  char buf[512];
  bool added = false;
  for (int i = 0; i < 3; i++) {
    record(buf, sizeof buf, i, 1.0);
    MUST(agentlm_trainer_add_json(t, AGENTLM_DATA_AGENT, buf, strlen(buf), &added, &err_));
    CHECK(added);
  }
  record(buf, sizeof buf, 5, 0.0);
  MUST(agentlm_trainer_add_json(t, AGENTLM_DATA_AGENT, buf, strlen(buf), &added, &err_));
  CHECK(!added); /* below the reward threshold */
  record(buf, sizeof buf, 9, 0.0);
  MUST(agentlm_trainer_add_json(t, AGENTLM_DATA_EVAL, buf, strlen(buf), &added, &err_));
  CHECK(added); /* held-out data is not filtered */
  agentlm_error *err = NULL;
  CHECK_STATUS(agentlm_trainer_add_json(t, AGENTLM_DATA_AGENT, "{\"conversations\": 1}", 20, NULL, &err),
               AGENTLM_STATUS_INVALID_ARGUMENT);
  CHECK(err && strstr(agentlm_error_message(err), "conversations") != NULL);
  agentlm_error_free(err);
  CHECK_STATUS(agentlm_trainer_add_json(t, 7, "{}", 2, NULL, NULL), AGENTLM_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(agentlm_trainer_add_json(NULL, 0, "{}", 2, NULL, NULL), AGENTLM_STATUS_NULL_POINTER);
  CHECK_STATUS(agentlm_trainer_add_json(t, 0, "\xff", 1, NULL, NULL), AGENTLM_STATUS_INVALID_UTF8);

  /* A JSONL file, streamed; a bad line names its number. */
  char path[] = "/tmp/agentlm-train-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (f) {
    fprintf(f, "%s\n", record(buf, sizeof buf, 11, 1.0));
    fprintf(f, "%s\n", record(buf, sizeof buf, 12, 1.0));
    fclose(f);
    size_t n = 0;
    MUST(agentlm_trainer_add_jsonl_file(t, AGENTLM_DATA_AGENT, path, strlen(path), &n, &err_));
    CHECK(n == 2);
    f = fopen(path, "a");
    fprintf(f, "not json\n");
    fclose(f);
    err = NULL;
    CHECK_STATUS(agentlm_trainer_add_jsonl_file(t, AGENTLM_DATA_AGENT, path, strlen(path), &n, &err),
                 AGENTLM_STATUS_INVALID_ARGUMENT);
    CHECK(err && strstr(agentlm_error_message(err), ":3:") != NULL);
    agentlm_error_free(err);
  }
  CHECK_STATUS(agentlm_trainer_add_jsonl_file(t, 0, "/nonexistent.jsonl", 18, NULL, NULL), AGENTLM_STATUS_IO);

  double before = 0, after = 0;
  uint32_t tokens = 0;
  CHECK_STATUS(agentlm_trainer_evaluate(t, NULL, NULL, NULL), AGENTLM_STATUS_NULL_POINTER);
  MUST(agentlm_trainer_evaluate(t, &before, &tokens, &err_));
  CHECK(before > 0 && tokens > 5);

  /* Cancel before the run: nothing happens. */
  CHECK(agentlm_trainer_cancel(t) == AGENTLM_STATUS_OK && agentlm_trainer_cancel(NULL) == AGENTLM_STATUS_NULL_POINTER);
  CHECK_STATUS(agentlm_trainer_run(t, 3, 0, NULL, NULL, NULL, NULL), AGENTLM_STATUS_CANCELLED);
  CHECK(agentlm_trainer_step(t) == 0);
  /* The callback stops the run after 2 of 10 steps. */
  int stop_at = 2;
  agentlm_train_progress last;
  CHECK_STATUS(agentlm_trainer_run(t, 10, 0, on_progress, &stop_at, &last, NULL), AGENTLM_STATUS_STOPPED);
  CHECK(g_progress_calls == 2 && last.step == 2 && agentlm_trainer_step(t) == 2);
  stop_at = 0;
  MUST(agentlm_trainer_run(t, 4, 0, on_progress, &stop_at, &last, &err_));
  CHECK(g_progress_calls == 6 && last.step == 6);
  CHECK_STATUS(agentlm_trainer_run(t, 1, 0.0 / 0.0, NULL, NULL, NULL, NULL), AGENTLM_STATUS_INVALID_ARGUMENT);
  MUST(agentlm_trainer_evaluate(t, &after, NULL, &err_));
  fprintf(stderr, "held-out loss %.4f -> %.4f after %u steps\n", before, after, (unsigned)agentlm_trainer_step(t));
  CHECK(after < before);

  /* Checkpoint and resume: same step, same held-out loss. */
  char dir_t[] = "/tmp/agentlm-ckpt-XXXXXX";
  char *dir = mkdtemp(dir_t);
  CHECK(dir != NULL);
  if (dir) {
    char ck[512];
    snprintf(ck, sizeof ck, "%s/ckpt", dir);
    MUST(agentlm_trainer_checkpoint(t, ck, strlen(ck), &err_));
    agentlm_trainer *r = NULL;
    MUST(agentlm_trainer_resume(m, ck, strlen(ck), &r, &err_));
    double resumed = 0;
    MUST(agentlm_trainer_evaluate(r, &resumed, NULL, &err_));
    CHECK(agentlm_trainer_step(r) == 6 && resumed == after);
    agentlm_trainer_free(r);
    CHECK_STATUS(agentlm_trainer_resume(m, dir, strlen(dir), &r, NULL), AGENTLM_STATUS_IO);
    char ad[512];
    snprintf(ad, sizeof ad, "%s/adapter", dir);
    MUST(agentlm_trainer_save_adapter(t, ad, strlen(ad), &err_));
    agentlm_adapter *loaded = NULL;
    MUST(agentlm_adapter_load(m, ad, strlen(ad), &loaded, &err_));
    CHECK(agentlm_adapter_rank(loaded) == 4);
    /* A trainer continuing from an adapter takes its shape. */
    agentlm_trainer *cont = NULL;
    MUST(agentlm_trainer_new(m, NULL, loaded, &cont, &err_));
    record(buf, sizeof buf, 9, 1.0);
    MUST(agentlm_trainer_add_json(cont, AGENTLM_DATA_EVAL, buf, strlen(buf), NULL, &err_));
    double same = 0;
    MUST(agentlm_trainer_evaluate(cont, &same, NULL, &err_));
    CHECK(same == after);
    agentlm_trainer_free(cont);
    agentlm_adapter_free(loaded);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
  }

  /* An agent episode with the trained adapter hot-swapped in, recorded and added with its reward. */
  agentlm_adapter *trained = NULL;
  MUST(agentlm_trainer_adapter(t, &trained, &err_));
  agentlm_agent_params ap = agentlm_agent_params_default();
  ap.constrained = true;
  ap.max_steps = 1;
  ap.max_tokens_per_step = 24;
  const char *instr = "Reply \"THOUGHT: ...\" then \"ACTION: go to X\".";
  const char *task = "You are in room 4. Go to the door.";
  agentlm_agent *a = NULL;
  MUST(agentlm_agent_new(m, &ap, instr, strlen(instr), task, strlen(task), &a, &err_));
  MUST(agentlm_agent_add_tool(a, "go to", 5, "walk somewhere", 14, NULL, 0, go_tool, NULL, NULL, &err_));
  MUST(agentlm_agent_set_adapter(a, trained, 1.0f, &err_));
  agentlm_agent_step_result s;
  MUST(agentlm_agent_step(a, 0, 0, &s, &err_));
  CHECK(s.kind == AGENTLM_STEP_ACTION);
  CHECK(agentlm_trainer_add_episode(t, a, &added, NULL) == AGENTLM_STATUS_OK && !added); /* no reward yet */
  MUST(agentlm_agent_set_outcome(a, 0.0, "failure", 7, &err_));
  MUST(agentlm_trainer_add_episode(t, a, &added, &err_));
  CHECK(!added);
  MUST(agentlm_agent_set_outcome(a, 1.0, "success", 7, &err_));
  MUST(agentlm_trainer_add_episode(t, a, &added, &err_));
  CHECK(added);
  CHECK_STATUS(agentlm_trainer_add_episode(t, NULL, &added, NULL), AGENTLM_STATUS_NULL_POINTER);
  MUST(agentlm_agent_set_adapter(a, NULL, 1.0f, &err_));
  agentlm_agent_free(a);
  agentlm_adapter_free(trained);
  MUST(agentlm_trainer_run(t, 1, 0, NULL, NULL, &last, &err_));
  CHECK(last.step == 7);
  /* A time budget of a millisecond: at most the step in progress. */
  MUST(agentlm_trainer_run(t, 100, 0.001, NULL, NULL, &last, &err_));
  CHECK(agentlm_trainer_step(t) <= 8);
  unlink(path);
  agentlm_trainer_free(t);
  agentlm_trainer_free(NULL);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_train MODEL.gguf PEFT_ADAPTER_DIR\n");
    return 2;
  }
  g_tiny = env_flag("AGENTLM_TEST_TINY");
  agentlm_model *m = NULL;
  /* The PEFT parity checks compare exact token sequences: the f32 path (the default for a quantized
     GGUF is the quantized path, whose greedy text may differ at near-ties). */
  agentlm_model_params mp = agentlm_model_params_default();
  mp.precision = 7;
  CHECK_STATUS(agentlm_model_load(argv[1], strlen(argv[1]), &mp, &m, NULL), AGENTLM_STATUS_INVALID_ARGUMENT);
  mp.precision = AGENTLM_PRECISION_QUANTIZED;
  mp.backend = AGENTLM_BACKEND_WGPU;
  CHECK_STATUS(agentlm_model_load(argv[1], strlen(argv[1]), &mp, &m, NULL), AGENTLM_STATUS_INVALID_ARGUMENT);
  CHECK(m == NULL);
  mp.backend = AGENTLM_BACKEND_CPU;
  mp.precision = AGENTLM_PRECISION_EXACT;
  MUST(agentlm_model_load(argv[1], strlen(argv[1]), &mp, &m, &err_));
  if (!m) {
    printf("%d passed, %d failed\n", g_passed, g_failed + 1);
    return 1;
  }
  test_reference_adapter(m, argv[2]);
  test_trainer(m);
  agentlm_model_free(m);
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
