/*
 * A second household, written apart from household.h, to measure whether what an agent learned there
 * carries over: other places and objects, other observation wording, another task sentence, and the
 * host answering each action itself (agentlm_agent_submit_result, no tool callbacks). The actions keep
 * ALFWorld's verbs (go to, open, take X from Y, put X in/on Y, look, inventory), as AgentInstruct's do.
 *
 *   cottage MODEL [--adapter DIR] [--episodes N] [--steps N] [--first SEED] [--verbose]
 *
 * Each episode: 6 to 7 places, up to 3 of them closed, the object in one of them, the target another.
 * The last line is the honest result: "cottage: success K/N, accepted actions A/B".
 */
#include "agentlm.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXP 7
#define NAME 32
#define ACT 96

static const char *KINDS[] = {"wardrobe", "crate", "toolbox", "chest", "bin", "basket", "stand", "bench"};
static const int CLOSABLE[] = {1, 1, 1, 1, 0, 0, 0, 0};
static const char *THINGS[] = {"wrench", "sock", "lamp", "ball", "scarf", "candle", "hammer"};

typedef struct {
  char name[NAME];
  int closed, has_thing;
} spot;

typedef struct {
  spot spots[MAXP];
  int n, at, target, holding, solved;
  char thing[NAME];
} cottage;

static uint32_t rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return (uint32_t)(*s >> 11);
}

static void generate(cottage *c, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 12345;
  memset(c, 0, sizeof *c);
  c->n = 6 + (int)(rnd(&s) % 2);
  c->at = -1;
  int closed = 0;
  for (int i = 0; i < c->n; i++) {
    int k = (int)(rnd(&s) % 8);
    int num = 1 + (int)(rnd(&s) % 3);
    snprintf(c->spots[i].name, NAME, "%s %d", KINDS[k], num);
    for (int j = 0; j < i; j++)
      if (strcmp(c->spots[j].name, c->spots[i].name) == 0) {
        i--; /* draw again */
        goto next;
      }
    c->spots[i].closed = CLOSABLE[k] && closed < 3 && rnd(&s) % 2;
    closed += c->spots[i].closed;
  next:;
  }
  int where = (int)(rnd(&s) % (uint32_t)c->n);
  c->spots[where].has_thing = 1;
  do c->target = (int)(rnd(&s) % (uint32_t)c->n);
  while (c->target == where);
  snprintf(c->thing, NAME, "%s 1", THINGS[rnd(&s) % 7]);
}

static int find(const cottage *c, const char *name) {
  for (int i = 0; i < c->n; i++)
    if (strcmp(c->spots[i].name, name) == 0) return i;
  return -1;
}

/* `verb X sep Y` into x and y (each under ACT bytes); 0 when `a` is not of that shape. */
static int split(const char *a, const char *verb, const char *sep, char *x, char *y) {
  size_t v = strlen(verb);
  if (strncmp(a, verb, v) != 0) return 0;
  const char *at = strstr(a + v, sep);
  if (!at || (size_t)(at - (a + v)) >= ACT || strlen(at + strlen(sep)) >= ACT) return 0;
  memcpy(x, a + v, (size_t)(at - (a + v)));
  x[at - (a + v)] = 0;
  strcpy(y, at + strlen(sep));
  return 1;
}

/* Runs `action`; writes the observation; returns 1 when the cottage accepted it. */
static int act(cottage *c, const char *a, char *obs, size_t cap) {
  char x[ACT], y[ACT];
  int p;
  if (strncmp(a, "go to ", 6) == 0 && (p = find(c, a + 6)) >= 0) {
    c->at = p;
    spot *s = &c->spots[p];
    if (s->closed) snprintf(obs, cap, "You walk to the %s. It is shut.", s->name);
    else if (s->has_thing) snprintf(obs, cap, "You walk to the %s. There you find a %s.", s->name, c->thing);
    else snprintf(obs, cap, "You walk to the %s. It is empty.", s->name);
    return 1;
  }
  if (strncmp(a, "open ", 5) == 0 && (p = find(c, a + 5)) >= 0 && p == c->at && c->spots[p].closed) {
    spot *s = &c->spots[p];
    s->closed = 0;
    if (s->has_thing) snprintf(obs, cap, "The %s swings open. Inside lies a %s.", s->name, c->thing);
    else snprintf(obs, cap, "The %s swings open. Inside there is nothing.", s->name);
    return 1;
  }
  if (split(a, "take ", " from ", x, y)) {
    p = find(c, y);
    if (p >= 0 && p == c->at && !c->spots[p].closed && c->spots[p].has_thing && strcmp(x, c->thing) == 0) {
      c->spots[p].has_thing = 0;
      c->holding = 1;
      snprintf(obs, cap, "You grab the %s.", c->thing);
      return 1;
    }
  }
  if (split(a, "put ", " in/on ", x, y)) {
    p = find(c, y);
    if (p >= 0 && p == c->at && c->holding && strcmp(x, c->thing) == 0 && !c->spots[p].closed) {
      c->holding = 0;
      c->spots[p].has_thing = 1;
      c->solved = p == c->target;
      snprintf(obs, cap, "You set the %s down in/on the %s.", c->thing, c->spots[p].name);
      return 1;
    }
  }
  if (strcmp(a, "inventory") == 0) {
    if (c->holding) snprintf(obs, cap, "You hold a %s.", c->thing);
    else snprintf(obs, cap, "Your hands are empty.");
    return 1;
  }
  if (strcmp(a, "look") == 0) {
    if (c->at < 0) snprintf(obs, cap, "You stand in the middle of the cottage.");
    else snprintf(obs, cap, "You stand by the %s.", c->spots[c->at].name);
    return 1;
  }
  snprintf(obs, cap, "Nothing happened.");
  return 0;
}

/* The actions possible now. */
static int admissible(const cottage *c, char out[][ACT], int max) {
  int n = 0;
  for (int i = 0; i < c->n && n < max; i++) snprintf(out[n++], ACT, "go to %s", c->spots[i].name);
  if (c->at >= 0) {
    const spot *s = &c->spots[c->at];
    if (s->closed && n < max) snprintf(out[n++], ACT, "open %s", s->name);
    if (!s->closed && s->has_thing && !c->holding && n < max) snprintf(out[n++], ACT, "take %s from %s", c->thing, s->name);
    if (c->holding && !s->closed && n < max) snprintf(out[n++], ACT, "put %s in/on %s", c->thing, s->name);
  }
  if (n < max) snprintf(out[n++], ACT, "inventory");
  if (n < max) snprintf(out[n++], ACT, "look");
  return n;
}

static const char *INSTRUCTIONS =
    "You are a helper in a small cottage. Each turn, write \"THOUGHT: what you think.\\n ACTION: the action\" "
    "or just \"ACTION: the action\". Actions: go to PLACE, open PLACE, take THING from PLACE, "
    "put THING in/on PLACE, inventory, look.";

static int fail(const char *what, agentlm_status st, agentlm_error *err) {
  fprintf(stderr, "error: %s: %s (%s)\n", what, err ? agentlm_error_message(err) : "", agentlm_status_string(st));
  agentlm_error_free(err);
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: cottage MODEL [--adapter DIR] [--episodes N] [--steps N] [--first SEED] [--verbose]\n");
    return 2;
  }
  const char *adapter_dir = NULL;
  int episodes = 10, steps = 15, verbose = 0;
  uint64_t first = 1;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--adapter") == 0 && i + 1 < argc) adapter_dir = argv[++i];
    else if (strcmp(argv[i], "--episodes") == 0 && i + 1 < argc) episodes = atoi(argv[++i]);
    else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--first") == 0 && i + 1 < argc) first = (uint64_t)atoll(argv[++i]);
    else if (strcmp(argv[i], "--verbose") == 0) verbose = 1;
    else {
      fprintf(stderr, "unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  agentlm_model *model = NULL;
  agentlm_adapter *adapter = NULL;
  agentlm_error *err = NULL;
  agentlm_status st = agentlm_model_load(argv[1], strlen(argv[1]), NULL, &model, &err);
  if (st != AGENTLM_STATUS_OK) return fail("load", st, err);
  if (adapter_dir && (st = agentlm_adapter_load(model, adapter_dir, strlen(adapter_dir), &adapter, &err)) != AGENTLM_STATUS_OK)
    return fail("adapter", st, err);
  int solved = 0;
  uint32_t all_actions = 0, all_accepted = 0;
  const char *verbs[] = {"go to", "open", "take", "put", "inventory", "look"};
  for (int e = 0; e < episodes; e++) {
    cottage c;
    generate(&c, first + (uint64_t)e);
    char task[1024];
    int off = snprintf(task, sizeof task, "You are in a cottage. Around you are ");
    for (int i = 0; i < c.n; i++)
      off += snprintf(task + off, sizeof task - (size_t)off, "%sa %s", i == 0 ? "" : (i == c.n - 1 ? " and " : ", "), c.spots[i].name);
    char kind[NAME];
    snprintf(kind, NAME, "%s", c.thing);
    kind[strlen(kind) - 2] = 0;
    snprintf(task + off, sizeof task - (size_t)off, ".\nYour task is to: put some %s in/on %s.", kind, c.spots[c.target].name);
    agentlm_agent_params p = agentlm_agent_params_default();
    p.format = AGENTLM_FORMAT_ALFWORLD;
    p.max_steps = (uint32_t)steps;
    p.max_tokens_per_step = 40;
    agentlm_agent *agent = NULL;
    st = agentlm_agent_new(model, &p, INSTRUCTIONS, strlen(INSTRUCTIONS), task, strlen(task), &agent, &err);
    if (st != AGENTLM_STATUS_OK) return fail("agent", st, err);
    for (size_t v = 0; v < sizeof verbs / sizeof verbs[0]; v++)
      if ((st = agentlm_agent_add_tool(agent, verbs[v], strlen(verbs[v]), verbs[v], strlen(verbs[v]), NULL, 0, NULL, NULL,
                                       NULL, &err)) != AGENTLM_STATUS_OK)
        return fail("add tool", st, err);
    if (adapter && (st = agentlm_agent_set_adapter(agent, adapter, 1.0f, &err)) != AGENTLM_STATUS_OK)
      return fail("set adapter", st, err);
    if (verbose) printf("--- episode %d\n%s\n", e + 1, task);
    int done = 0, replies = 0;
    while (!done && !c.solved) {
      char acts[MAXP + 4][ACT];
      int n = admissible(&c, acts, MAXP + 4);
      agentlm_str list[MAXP + 4];
      for (int i = 0; i < n; i++) list[i] = (agentlm_str){acts[i], strlen(acts[i])};
      if ((st = agentlm_agent_set_admissible(agent, list, (size_t)n, &err)) != AGENTLM_STATUS_OK) return fail("admissible", st, err);
      agentlm_agent_step_result s;
      if ((st = agentlm_agent_step(agent, 0, 0, &s, &err)) != AGENTLM_STATUS_OK) return fail("step", st, err);
      if (s.kind == AGENTLM_STEP_ACTION) {
        replies++;
        char obs[256];
        int ok = act(&c, s.action.ptr, obs, sizeof obs);
        if (verbose) printf("> %s\n%s\n", s.action.ptr, obs);
        if ((st = agentlm_agent_submit_result(agent, obs, strlen(obs), ok, &err)) != AGENTLM_STATUS_OK) return fail("result", st, err);
      } else if (s.kind == AGENTLM_STEP_INVALID) {
        replies++;
      } else {
        done = 1;
      }
    }
    uint32_t a = 0, ok = 0;
    agentlm_agent_accepted_actions(agent, &a, &ok, NULL);
    all_actions += a;
    all_accepted += ok;
    solved += c.solved;
    printf("episode %d: %s in %d steps\n", e + 1, c.solved ? "solved" : "not solved", replies);
    fflush(stdout);
    agentlm_agent_free(agent);
  }
  printf("cottage: success %d/%d, accepted actions %u/%u\n", solved, episodes, all_accepted, all_actions);
  agentlm_adapter_free(adapter);
  agentlm_model_free(model);
  return 0;
}
