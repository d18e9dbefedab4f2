/*
 * On-device agent tuning from C, end to end (AgentTuning's recipe on a small model):
 *
 *   1. measure: the held-out masked loss on real AgentInstruct ALFWorld trajectories, and how many of
 *      the agent's free (unconstrained, greedy) replies in the text household are valid actions;
 *   2. train a LoRA adapter on the AgentInstruct training split (loss only on the agent's turns marked
 *      for loss), printing step, loss and tokens/s;
 *   3. record episodes in the household with that adapter hot-swapped into new agents (constrained
 *      actions, sampling) and keep the successful ones (reward 1, as AgentTuning keeps only
 *      trajectories with reward 1);
 *   4. go on training with the kept episodes added to the same trainer;
 *   5. measure again with the final adapter, and save it (PEFT format).
 *
 *   train_agent MODEL ALFWORLD_JSONL [--steps N] [--episodes N] [--held-out N] [--max-tokens N]
 *               [--lr X] [--out DIR] [--measure-tasks N]
 *
 * ALFWORLD_JSONL: AgentInstruct's ALFWorld split (one trajectory per line); its last --held-out lines
 * (default 16) are the held-out set, the others are trained on. AgentInstruct cannot be redistributed:
 * get it from the Hugging Face dataset THUDM/AgentInstruct (split "alfworld", saved as JSON lines).
 * Pass "-" (or an empty string) to train on host-recorded episodes alone: the base model records the
 * episodes, there is no held-out loss, and training runs only if some episode succeeded.
 * Prints a summary with "held-out loss", "valid actions before/after" and the peak memory.
 */
#include "agentlm.h"
#include "household.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static const char *INSTRUCTIONS =
    "Interact with a household to solve a task. Each turn, output \"THOUGHT: your thoughts.\\n ACTION: "
    "your next action\" or just \"ACTION: your next action\". Use only the available actions.";

/* put: 1 put `object` in/on `place`, 0 take `object`, 2 go to `place` (household.h). */
typedef struct {
  int put;
  const char *object, *place;
} goal;

static const char *goal_verb(goal g) { return g.put == 2 ? "go to" : g.put ? "put" : "take"; }
static const char *goal_what(goal g) { return g.put == 2 ? g.place : g.object; }

/* Tasks for recording episodes and, disjoint from them, for measuring validity. */
static const goal RECORD_GOALS[] = {{2, NULL, "table 1"}, {0, "book 1", NULL},  {2, NULL, "fridge 1"},
                                    {0, "apple 1", NULL},   {2, NULL, "cabinet 1"}, {0, "pen 1", NULL}};
static const goal MEASURE_GOALS[] = {{1, "apple 1", "fridge 1"}, {1, "mug 1", "cabinet 1"}, {0, "plate 1", NULL},
                                     {1, "book 1", "countertop 1"}};

typedef struct {
  int replies, valid, solved;
} stats;

static int fail(const char *what, agentlm_status st, agentlm_error *err) {
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

/* One episode on `g`; with `trainer`, the episode is offered to it with its reward. */
static stats episode(const agentlm_model *m, const agentlm_adapter *adapter, goal g, int constrained, float temperature,
                     uint64_t seed, uint32_t max_steps, agentlm_trainer *trainer, int verbose) {
  stats st = {0, 0, 0};
  house h;
  house_init(&h, g.put, g.object, g.place);
  char task[512];
  house_task(&h, task, sizeof task);
  agentlm_agent_params p = agentlm_agent_params_default();
  p.format = AGENTLM_FORMAT_ALFWORLD;
  p.max_steps = max_steps;
  p.max_tokens_per_step = 48;
  p.constrained = constrained;
  p.temperature = temperature;
  p.top_p = 0.95f;
  p.seed = seed;
  agentlm_agent *a = NULL;
  TRY("agent", agentlm_agent_new(m, &p, INSTRUCTIONS, strlen(INSTRUCTIONS), task, strlen(task), &a, &e_));
  TRY("tools", house_add_tools(a, &h, 0, 1, &e_));
  if (adapter) TRY("adapter", agentlm_agent_set_adapter(a, adapter, 1.0f, &e_));
  for (;;) {
    agentlm_agent_step_result s;
    TRY("step", agentlm_agent_step(a, 0, 0, &s, &e_));
    if (s.kind == AGENTLM_STEP_ACTION) {
      st.replies++;
      st.valid++;
      if (verbose) printf("    ACTION: %s %s -> %s\n", s.tool.ptr, s.input.ptr, s.observation.ptr);
    } else if (s.kind == AGENTLM_STEP_INVALID || s.kind == AGENTLM_STEP_FINAL) {
      st.replies++;
      if (verbose) printf("    invalid (%s): %.70s\n", s.answer.ptr, s.text.ptr);
    } else {
      break; /* step limit */
    }
    if (h.solved) break;
  }
  st.solved = h.solved;
  if (trainer) {
    const char *outcome = h.solved ? "success" : "unsolved";
    TRY("outcome", agentlm_agent_set_outcome(a, h.solved ? 1.0 : 0.0, outcome, strlen(outcome), &e_));
    bool kept = false;
    TRY("add episode", agentlm_trainer_add_episode(trainer, a, &kept, &e_));
  }
  agentlm_agent_free(a);
  return st;
}

/* Valid-action rate of free, greedy replies on the measurement tasks. */
static size_t g_measure_tasks = sizeof MEASURE_GOALS / sizeof MEASURE_GOALS[0];

static stats measure(const agentlm_model *m, const agentlm_adapter *adapter, int verbose) {
  stats total = {0, 0, 0};
  for (size_t i = 0; i < g_measure_tasks; i++) {
    if (verbose) printf("  task %zu (%s %s)\n", i, goal_verb(MEASURE_GOALS[i]), goal_what(MEASURE_GOALS[i]));
    stats s = episode(m, adapter, MEASURE_GOALS[i], 0, 0.0f, 0, 3, NULL, verbose);
    total.replies += s.replies;
    total.valid += s.valid;
    total.solved += s.solved;
  }
  return total;
}

/* Writes the first `n_train` lines of `src` to `train` and the rest to `eval`; returns the line count. */
static int split(const char *src, int held_out, const char *train, const char *eval) {
  FILE *in = fopen(src, "r");
  if (!in) {
    perror(src);
    exit(1);
  }
  int lines = 0;
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, in) > 0) lines++;
  rewind(in);
  FILE *t = fopen(train, "w"), *e = fopen(eval, "w");
  if (!t || !e) {
    perror("temporary file");
    exit(1);
  }
  for (int i = 0; getline(&line, &cap, in) > 0; i++) fputs(line, i < lines - held_out ? t : e);
  free(line);
  fclose(in);
  fclose(t);
  fclose(e);
  return lines;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

typedef struct {
  uint32_t total;
  double tokens, seconds;
  double first_loss;
} progress_state;

static bool on_progress(void *user, const agentlm_train_progress *p) {
  progress_state *ps = (progress_state *)user;
  if (p->step == 1) ps->first_loss = p->loss;
  ps->tokens += p->tokens;
  ps->seconds += p->tokens / (p->tokens_per_s > 0 ? p->tokens_per_s : 1);
  printf("  step %3llu/%u  loss %.4f  lr %.1e  grad norm %.3f  %u tokens (%u trained)  %.0f tokens/s\n",
         (unsigned long long)p->step, ps->total, p->loss, p->learning_rate, p->grad_norm, p->tokens, p->loss_tokens,
         p->tokens_per_s);
  fflush(stdout);
  return true;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: train_agent MODEL ALFWORLD_JSONL [--steps N] [--episodes N] [--held-out N] "
                    "[--max-tokens N] [--lr X] [--out DIR] [--measure-tasks N]\n");
    return 2;
  }
  uint32_t steps = 30, episodes = 12, max_tokens = 512;
  int held_out = 16;
  float lr = 1e-3f;
  const char *out = NULL;
  for (int i = 3; i < argc; i++) {
    if (i + 1 >= argc) {
      fprintf(stderr, "%s needs a value\n", argv[i]);
      return 2;
    }
    if (strcmp(argv[i], "--steps") == 0) steps = (uint32_t)atoi(argv[++i]);
    else if (strcmp(argv[i], "--episodes") == 0) episodes = (uint32_t)atoi(argv[++i]);
    else if (strcmp(argv[i], "--held-out") == 0) held_out = atoi(argv[++i]);
    else if (strcmp(argv[i], "--max-tokens") == 0) max_tokens = (uint32_t)atoi(argv[++i]);
    else if (strcmp(argv[i], "--lr") == 0) lr = (float)atof(argv[++i]);
    else if (strcmp(argv[i], "--out") == 0) out = argv[++i];
    else if (strcmp(argv[i], "--measure-tasks") == 0) {
      size_t n = (size_t)atoi(argv[++i]);
      if (n >= 1 && n < g_measure_tasks) g_measure_tasks = n;
    }
    else {
      fprintf(stderr, "unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  double t0 = now();
  agentlm_model *m = NULL;
  TRY("load", agentlm_model_load(argv[1], strlen(argv[1]), NULL, &m, &e_));

  const int have_data = argv[2][0] != '\0' && strcmp(argv[2], "-") != 0;
  char train_path[] = "/tmp/agentlm-alfworld-train-XXXXXX", eval_path[] = "/tmp/agentlm-alfworld-eval-XXXXXX";
  int lines = 0;
  if (have_data) {
    int fd1 = mkstemp(train_path), fd2 = mkstemp(eval_path);
    if (fd1 < 0 || fd2 < 0) {
      perror("mkstemp");
      return 1;
    }
    lines = split(argv[2], held_out, train_path, eval_path);
  }

  agentlm_trainer_params tp = agentlm_trainer_params_default();
  tp.learning_rate = lr;
  tp.warmup_steps = steps / 10;
  tp.total_steps = steps;
  tp.max_tokens = max_tokens;
  tp.seed = 1;
  agentlm_trainer *t = NULL;
  TRY("trainer", agentlm_trainer_new(m, &tp, NULL, &t, &e_));
  size_t n_train = 0, n_eval = 0;
  if (have_data) {
    TRY("training data", agentlm_trainer_add_jsonl_file(t, AGENTLM_DATA_AGENT, train_path, strlen(train_path), &n_train, &e_));
    TRY("held-out data", agentlm_trainer_add_jsonl_file(t, AGENTLM_DATA_EVAL, eval_path, strlen(eval_path), &n_eval, &e_));
    printf("AgentInstruct ALFWorld: %d trajectories, %zu trained on, %zu held out (first %u tokens each)\n", lines,
           n_train, n_eval, max_tokens);
  } else {
    printf("no AgentInstruct data: training on host-recorded episodes alone (AgentInstruct cannot be "
           "redistributed; get the alfworld split of THUDM/AgentInstruct and pass it as ALFWORLD_JSONL)\n");
  }

  double loss_before = 0, loss_after = 0;
  uint32_t eval_tokens = 0;
  if (have_data) {
    TRY("evaluate", agentlm_trainer_evaluate(t, &loss_before, &eval_tokens, &e_));
    printf("held-out masked loss before: %.4f (%u loss tokens)\n", loss_before, eval_tokens);
  }
  printf("free greedy replies, base model:\n");
  stats before = measure(m, NULL, 1);
  printf("valid actions before: %d of %d replies\n", before.valid, before.replies);

  /* Round 1: AgentInstruct alone (without it, the base model records the episodes). */
  uint32_t first = have_data ? steps / 2 : 0;
  progress_state ps = {steps, 0, 0, 0};
  double t_train = 0, loss_mid = 0;
  agentlm_adapter *round1 = NULL;
  if (have_data) {
    printf("training round 1: %u steps on AgentInstruct (LoRA r=%u, alpha=%g, all linears, lr %.1e):\n", first,
           tp.lora_rank, tp.lora_alpha, lr);
    t_train = now();
    TRY("train", agentlm_trainer_run(t, first, 0, on_progress, &ps, NULL, &e_));
    t_train = now() - t_train;
    TRY("evaluate", agentlm_trainer_evaluate(t, &loss_mid, NULL, &e_));
    printf("held-out masked loss after round 1: %.4f\n", loss_mid);
    /* The round-1 adapter, hot-swapped into new agents, plays episodes; the successful ones are kept. */
    TRY("adapter", agentlm_trainer_adapter(t, &round1, &e_));
  }
  printf("recording %u constrained episodes (sampled) with the %s:\n", episodes,
         have_data ? "round-1 adapter" : "base model");
  int kept = 0;
  for (uint32_t i = 0; i < episodes; i++) {
    goal g = RECORD_GOALS[i % (sizeof RECORD_GOALS / sizeof RECORD_GOALS[0])];
    stats s = episode(m, round1, g, 1, 0.7f, 100 + i, 6, t, i < 2);
    kept += s.solved;
    printf("  episode %2u: %s %s: %s in %d replies\n", i, goal_verb(g), goal_what(g),
           s.solved ? "solved" : "unsolved", s.replies);
  }
  agentlm_adapter_free(round1);
  printf("kept %d successful episodes of %u (reward 1)\n", kept, episodes);

  /* Round 2: the same trainer goes on with the recorded episodes in its data. */
  if (have_data || kept > 0) {
    printf("training round 2: %u steps on %s:\n", steps - first,
           have_data ? "AgentInstruct and the kept episodes" : "the kept episodes");
    double t2 = now();
    TRY("train", agentlm_trainer_run(t, steps - first, 0, on_progress, &ps, NULL, &e_));
    t_train += now() - t2;
  } else {
    printf("no successful episode and no AgentInstruct data: nothing to train on\n");
  }
  if (have_data) TRY("evaluate", agentlm_trainer_evaluate(t, &loss_after, NULL, &e_));

  agentlm_adapter *adapter = NULL;
  TRY("adapter", agentlm_trainer_adapter(t, &adapter, &e_));
  printf("free greedy replies, with the trained adapter:\n");
  stats after = measure(m, adapter, 1);
  if (out) {
    TRY("save", agentlm_adapter_save(adapter, out, strlen(out), &e_));
    printf("adapter saved to %s (PEFT format)\n", out);
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("\n== summary ==\n");
  if (have_data)
    printf("held-out loss %.4f -> %.4f -> %.4f (before, after round 1, after round 2; %u loss tokens of %zu "
           "AgentInstruct ALFWorld trajectories)\n",
           loss_before, loss_mid, loss_after, eval_tokens, n_eval);
  else
    printf("held-out loss: not measured (no AgentInstruct data)\n");
  printf("recorded episodes kept: %d of %u\n", kept, episodes);
  printf("valid actions before: %d of %d replies; after: %d of %d replies\n", before.valid, before.replies,
         after.valid, after.replies);
  printf("training: %u steps in %.1f s, %.0f tokens/s; first step loss %.4f\n", steps, t_train,
         ps.seconds > 0 ? ps.tokens / ps.seconds : 0.0, ps.first_loss);
  printf("peak memory %.0f MiB; total %.1f s\n", ru.ru_maxrss / 1024.0, now() - t0);
  agentlm_adapter_free(adapter);
  agentlm_trainer_free(t);
  agentlm_model_free(m);
  if (have_data) {
    remove(train_path);
    remove(eval_path);
  }
  return 0;
}
