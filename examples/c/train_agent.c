/*
 * On-device agent learning from C, measured by task success (AgentTuning's recipe: keep what
 * succeeded, train on it), on the household of household.h: a room of 6-7 places, an object hidden in
 * one of them (some places closed), "put a <object> in/on <place>".
 *
 * Each round:
 *   1. record episodes on *training* layouts, either
 *      - demos: the host demonstrates (its scripted solver's replies, through agentlm_agent_demonstrate,
 *        run by the same tool callbacks), or
 *      - self:  the agent samples (temperature) with the current adapter; an episode ends at its first
 *        put, and one that put the wrong object or put it in the wrong place is relabelled with what
 *        it did achieve (hindsight: its task line becomes "put that object there", reward 1);
 *      every episode is offered to the trainer with its reward, which keeps those with reward 1;
 *   2. LoRA-train on the kept episodes (mixed with AgentInstruct ALFWorld at --eta when given);
 *   3. evaluate greedily on *held-out* layouts never trained on (admissible actions set every step,
 *      at most --max-steps replies): success rate and accepted-action rate.
 * Before round 1 it measures the base model, without and with one solved example in the prompt.
 *
 *   train_agent MODEL ALFWORLD_JSONL|- [--mode demos|self] [--rounds N] [--episodes N] [--steps N]
 *               [--eval N] [--max-steps N] [--lr X] [--eta X] [--max-tokens N] [--out DIR]
 *               [--skip-base] [--verbose]
 *
 * ALFWORLD_JSONL: AgentInstruct's ALFWorld split (one trajectory per line), mixed into training as
 * general data: each step draws a household episode with probability --eta (default 0.8). It cannot be
 * redistributed: get the "alfworld" split of the Hugging Face dataset THUDM/AgentInstruct and save it
 * as JSON lines. "-" trains on the household episodes alone.
 * Every figure is measured: "accepted" is what the household accepted (not "Nothing happened."),
 * "success" is the object in its place.
 */
#include "agentlm.h"
#include "household.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* Held-out layouts are seeds 1..--eval; training layouts start here. */
#define TRAIN_SEED0 100000u

typedef struct {
  int episodes, solved, actions, accepted, steps;
} stats;

static void fail(const char *what, agentlm_status st, agentlm_error *err) {
  fprintf(stderr, "error: %s: %s (%s)\n", what, err ? agentlm_error_message(err) : "", agentlm_status_string(st));
  agentlm_error_free(err);
  exit(1);
}

#define TRY(what, call)                                                                            \
  do {                                                                                             \
    agentlm_error *e_ = NULL;                                                                      \
    agentlm_status s_ = (call);                                                                    \
    if (s_ < 0) fail(what, s_, e_);                                                                \
  } while (0)

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

typedef struct {
  const agentlm_model *model;
  const agentlm_adapter *adapter; /* hot-swapped into every agent, or NULL */
  uint32_t max_steps;
  const char *example_json; /* a solved episode shown in the prompt, or NULL */
  int verbose;
} runner;

/* Replaces the first `from` in the malloc'd string `*s` with `to`; returns 0 when `from` is absent. */
static int replace(char **s, const char *from, const char *to) {
  char *at = strstr(*s, from);
  if (!at) return 0;
  size_t head = (size_t)(at - *s), fl = strlen(from), tl = strlen(to), rest = strlen(at + fl);
  char *out = malloc(head + tl + rest + 1);
  if (!out) return 0;
  memcpy(out, *s, head);
  memcpy(out + head, to, tl);
  memcpy(out + head + tl, at + fl, rest + 1);
  free(*s);
  *s = out;
  return 1;
}

/* One episode on layout `seed`: the model acts (greedy when temperature is 0), or with `demonstrate`
 * the scripted solver does. With `trainer`, the episode is offered to it with its reward. With
 * `relabel` (self-improvement), the episode ends at its first put; if that put was not the task, the
 * episode is offered as what it did achieve (hindsight relabelling: its task line rewritten to "put
 * that object there", reward 1). `*relabelled` (may be NULL) says whether it was. With `json_out`,
 * the trajectory JSON is returned (malloc'd). */
static stats episode(const runner *r, uint64_t seed, int demonstrate, float temperature, agentlm_trainer *trainer,
                     int relabel, int *relabelled, char **json_out) {
  stats st = {1, 0, 0, 0, 0};
  house h;
  house_generate(&h, seed);
  char task[1024];
  house_task(&h, task, sizeof task);
  agentlm_agent_params p = agentlm_agent_params_default();
  p.format = AGENTLM_FORMAT_ALFWORLD;
  p.max_steps = r->max_steps;
  p.max_tokens_per_step = 40; /* bounds the thought; the action always fits after it */
  p.temperature = temperature;
  p.top_p = 0.95f;
  p.seed = seed;
  agentlm_agent *a = NULL;
  TRY("agent", agentlm_agent_new(r->model, &p, HOUSE_INSTRUCTIONS, strlen(HOUSE_INSTRUCTIONS), task, strlen(task), &a,
                                 &e_));
  TRY("tools", house_add_tools(a, &h, &e_));
  if (r->adapter) TRY("adapter", agentlm_agent_set_adapter(a, r->adapter, 1.0f, &e_));
  if (r->example_json && !demonstrate)
    TRY("example", agentlm_agent_add_example(a, r->example_json, strlen(r->example_json), &e_));
  if (r->verbose) printf("    %s\n", strchr(task, '\n') + 1);
  while (!h.solved) {
    agentlm_agent_step_result s;
    TRY("admissible", house_set_admissible(a, &h, &e_));
    if (demonstrate) {
      char reply[128];
      if (!house_demonstration(&h, reply, sizeof reply)) break;
      TRY("demonstrate", agentlm_agent_demonstrate(a, reply, strlen(reply), &s, &e_));
    } else {
      TRY("step", agentlm_agent_step(a, 0, 0, &s, &e_));
    }
    if (s.kind == AGENTLM_STEP_ACTION) {
      if (relabel && h.put_place >= 0) break;
      if (r->verbose)
        printf("    %s%s> %s%s\n      %s\n", s.thought.ptr, s.thought.len ? " " : "", s.action.ptr,
               s.accepted == 1 ? "" : " (refused)", s.observation.ptr);
    } else if (s.kind != AGENTLM_STEP_INVALID) {
      if (r->verbose) printf("    episode over: %s\n", s.kind == AGENTLM_STEP_LIMIT ? "step limit" : s.kind == AGENTLM_STEP_REPEAT_LIMIT ? "repeated action" : "final answer");
      break;
    }
  }
  uint32_t actions = 0, accepted = 0;
  TRY("counts", agentlm_agent_accepted_actions(a, &actions, &accepted, &e_));
  st.actions = (int)actions;
  st.accepted = (int)accepted;
  st.solved = h.solved;
  const char *outcome = h.solved ? "success" : "unsolved";
  TRY("outcome", agentlm_agent_set_outcome(a, h.solved ? 1.0 : 0.0, outcome, strlen(outcome), &e_));
  if (relabelled) *relabelled = 0;
  if (trainer && relabel && !h.solved && h.put_place >= 0) {
    char *json = NULL, was[256], now_[256];
    size_t len = 0;
    agentlm_agent_trajectory_json(a, NULL, 0, &len, NULL);
    json = malloc(len + 1);
    TRY("trajectory", agentlm_agent_trajectory_json(a, json, len + 1, &len, &e_));
    house_task_line(&h, h.goal_object, h.goal_place, was, sizeof was);
    house_task_line(&h, h.put_object, h.put_place, now_, sizeof now_);
    if (replace(&json, was, now_) && replace(&json, "\"reward\":0.0", "\"reward\":1.0") &&
        replace(&json, "\"outcome\":\"unsolved\"", "\"outcome\":\"relabelled\"")) {
      bool kept = false;
      TRY("add relabelled episode", agentlm_trainer_add_json(trainer, AGENTLM_DATA_AGENT, json, strlen(json), &kept, &e_));
      if (relabelled) *relabelled = kept;
    }
    free(json);
  } else if (trainer) {
    bool kept = false;
    TRY("add episode", agentlm_trainer_add_episode(trainer, a, &kept, &e_));
  }
  if (json_out) {
    size_t len = 0;
    agentlm_agent_trajectory_json(a, NULL, 0, &len, NULL);
    *json_out = malloc(len + 1);
    TRY("trajectory", agentlm_agent_trajectory_json(a, *json_out, len + 1, &len, &e_));
  }
  agentlm_agent_free(a);
  return st;
}

static void add(stats *t, stats s) {
  t->episodes += s.episodes;
  t->solved += s.solved;
  t->actions += s.actions;
  t->accepted += s.accepted;
}

static double pct(int a, int b) { return b ? 100.0 * a / b : 0.0; }

/* Greedy episodes on the held-out layouts 1..n. */
static stats evaluate(const runner *r, int n, const char *label) {
  stats total = {0, 0, 0, 0, 0};
  if (n <= 0) return total;
  double t0 = now();
  for (int i = 1; i <= n; i++) {
    stats s = episode(r, (uint64_t)i, 0, 0.0f, NULL, 0, NULL, NULL);
    add(&total, s);
    if (r->verbose) printf("  held-out layout %d: %s\n", i, s.solved ? "solved" : "not solved");
    fflush(stdout);
  }
  printf("%s: success %d/%d (%.0f%%), accepted actions %d/%d (%.0f%%), %.0f s\n", label, total.solved, total.episodes,
         pct(total.solved, total.episodes), total.accepted, total.actions, pct(total.accepted, total.actions),
         now() - t0);
  fflush(stdout);
  return total;
}

typedef struct {
  double tokens, seconds, last_loss;
} progress_state;

static bool on_progress(void *user, const agentlm_train_progress *p) {
  progress_state *ps = (progress_state *)user;
  ps->tokens += p->tokens;
  ps->seconds += p->tokens / (p->tokens_per_s > 0 ? p->tokens_per_s : 1);
  ps->last_loss = p->loss;
  /* One line, rewritten in place after every step. */
  printf("\r  step %3llu  loss %.4f  lr %.1e  %.0f tokens/s (this run %.0f)  ETA %2.0f:%02.0f  peak %.0f MiB   ",
         (unsigned long long)p->step, p->loss, p->learning_rate, p->tokens_per_s, p->mean_tokens_per_s,
         floor(p->eta_s / 60), fmod(p->eta_s, 60), p->peak_rss_bytes / 1048576.0);
  fflush(stdout);
  return true;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: train_agent MODEL ALFWORLD_JSONL|- [--mode demos|self] [--rounds N] [--episodes N] "
                    "[--steps N] [--eval N] [--max-steps N] [--lr X] [--eta X] [--max-tokens N] [--out DIR] "
                    "[--skip-base] [--verbose]\n");
    return 2;
  }
  const char *mode = "demos", *out = NULL;
  uint32_t rounds = 2, episodes = 16, steps = 24, max_steps = 15, max_tokens = 1024;
  int n_eval = 20, skip_base = 0, verbose = 0;
  float lr = 2e-3f, eta = 0.8f;
  for (int i = 3; i < argc; i++) {
    if (strcmp(argv[i], "--skip-base") == 0) {
      skip_base = 1;
      continue;
    }
    if (strcmp(argv[i], "--verbose") == 0) {
      verbose = 1;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "%s needs a value\n", argv[i]);
      return 2;
    }
    const char *v = argv[++i];
    if (strcmp(argv[i - 1], "--mode") == 0) mode = v;
    else if (strcmp(argv[i - 1], "--rounds") == 0) rounds = (uint32_t)atoi(v);
    else if (strcmp(argv[i - 1], "--episodes") == 0) episodes = (uint32_t)atoi(v);
    else if (strcmp(argv[i - 1], "--steps") == 0) steps = (uint32_t)atoi(v);
    else if (strcmp(argv[i - 1], "--eval") == 0) n_eval = atoi(v);
    else if (strcmp(argv[i - 1], "--max-steps") == 0) max_steps = (uint32_t)atoi(v);
    else if (strcmp(argv[i - 1], "--lr") == 0) lr = (float)atof(v);
    else if (strcmp(argv[i - 1], "--eta") == 0) eta = (float)atof(v);
    else if (strcmp(argv[i - 1], "--max-tokens") == 0) max_tokens = (uint32_t)atoi(v);
    else if (strcmp(argv[i - 1], "--out") == 0) out = v;
    else {
      fprintf(stderr, "unknown argument %s\n", argv[i - 1]);
      return 2;
    }
  }
  int self = strcmp(mode, "self") == 0;
  if (!self && strcmp(mode, "demos") != 0) {
    fprintf(stderr, "--mode is demos or self\n");
    return 2;
  }
  double t0 = now();
  agentlm_model *m = NULL;
  TRY("load", agentlm_model_load(argv[1], strlen(argv[1]), NULL, &m, &e_));
  runner base = {m, NULL, max_steps, NULL, verbose};

  printf("household: held-out layouts 1..%d (never trained on), at most %u replies each, greedy, admissible "
         "actions set every step\n",
         n_eval, max_steps);
  if (!skip_base) {
    evaluate(&base, n_eval, "base model");
    char *example = NULL;
    episode(&base, TRAIN_SEED0 - 1, 1, 0.0f, NULL, 0, NULL, &example);
    runner shown = base;
    shown.example_json = example;
    evaluate(&shown, n_eval, "base model + 1 solved example in the prompt");
    free(example);
  }

  agentlm_trainer_params tp = agentlm_trainer_params_default();
  tp.learning_rate = lr;
  tp.warmup_steps = 2;
  tp.total_steps = rounds * steps;
  tp.max_tokens = max_tokens;
  tp.agent_ratio = eta;
  tp.seed = 1;
  agentlm_trainer *t = NULL;
  TRY("trainer", agentlm_trainer_new(m, &tp, NULL, &t, &e_));
  const int have_data = argv[2][0] != '\0' && strcmp(argv[2], "-") != 0;
  if (have_data) {
    size_t n = 0;
    TRY("AgentInstruct", agentlm_trainer_add_jsonl_file(t, AGENTLM_DATA_GENERAL, argv[2], strlen(argv[2]), &n, &e_));
    printf("AgentInstruct ALFWorld: %zu trajectories mixed in (household episodes drawn with probability %.2f)\n", n, eta);
  }
  printf("learning from %s: %u rounds of %u episodes and %u training steps (LoRA r=%u, alpha=%g, lr %.1e)\n",
         self ? "its own successful episodes (self-improvement, temperature 0.8)" : "host demonstrations", rounds,
         episodes, steps, tp.lora_rank, tp.lora_alpha, lr);

  agentlm_adapter *adapter = NULL;
  double learn_s = 0;
  int kept_total = 0;
  progress_state ps = {0, 0, 0};
  stats last = {0, 0, 0, 0, 0};
  for (uint32_t round = 1; round <= rounds; round++) {
    double t_round = now();
    runner rec = {m, adapter, max_steps, NULL, 0};
    int kept = 0, relabelled_n = 0;
    for (uint32_t i = 0; i < episodes; i++) {
      uint64_t seed = TRAIN_SEED0 + (uint64_t)(round - 1) * episodes + i;
      int relabelled = 0;
      stats s = episode(&rec, seed, !self, self ? 0.8f : 0.0f, t, self, &relabelled, NULL);
      kept += s.solved;
      relabelled_n += relabelled;
    }
    kept_total += kept + relabelled_n;
    double t_record = now() - t_round;
    fflush(stdout);
    printf("round %u: recorded %u episodes on training layouts, %d successful kept (%.0f s)", round, episodes, kept,
           t_record);
    if (self) printf("; %d more relabelled with what they did achieve", relabelled_n);
    printf("\n");
    double t_train = now();
    if (kept_total > 0) {
      progress_state rp = {0, 0, 0};
      TRY("train", agentlm_trainer_run(t, steps, 0, on_progress, &rp, NULL, &e_));
      printf("\n");
      ps.tokens += rp.tokens;
      ps.seconds += rp.seconds;
      printf("round %u: trained %u steps, %.0f tokens/s, last loss %.4f (%.0f s)\n", round, steps,
             rp.seconds > 0 ? rp.tokens / rp.seconds : 0.0, rp.last_loss, now() - t_train);
      agentlm_adapter_free(adapter);
      adapter = NULL;
      TRY("adapter", agentlm_trainer_adapter(t, &adapter, &e_));
    } else {
      printf("round %u: nothing to train on yet\n", round);
    }
    learn_s += now() - t_round;
    runner ev = {m, adapter, max_steps, NULL, verbose};
    char label[160];
    snprintf(label, sizeof label, "round %u, held-out (%.0f s of learning so far)", round, learn_s);
    last = evaluate(&ev, n_eval, label);
  }
  if (out && adapter) {
    TRY("save", agentlm_adapter_save(adapter, out, strlen(out), &e_));
    printf("adapter saved to %s (PEFT format)\n", out);
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("\n== summary ==\n");
  if (last.episodes)
    printf("after %u rounds (%s): held-out success %d/%d (%.0f%%), accepted actions %.0f%%\n", rounds, mode,
           last.solved, last.episodes, pct(last.solved, last.episodes), pct(last.accepted, last.actions));
  else if (rounds == 0)
    printf("no learning rounds (--rounds 0)\n");
  else
    printf("after %u rounds (%s): held-out layouts not evaluated (--eval 0)\n", rounds, mode);
  printf("learning (recording + training): %.0f s; training %.0f tokens/s; episodes kept %d\n", learn_s,
         ps.seconds > 0 ? ps.tokens / ps.seconds : 0.0, kept_total);
  printf("peak memory %.0f MiB; total %.1f s\n", ru.ru_maxrss / 1024.0, now() - t0);
  agentlm_adapter_free(adapter);
  agentlm_trainer_free(t);
  agentlm_model_free(m);
  return 0;
}
