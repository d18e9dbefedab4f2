/*
 * A ReAct agent driven from C: the host implements a household (household.h: places, some closed, an
 * object hidden in one of them), registers its verbs as tools whose callbacks act on it and report
 * whether each action was accepted, hands the agent the admissible actions before every reply, and
 * steps the agent on the real model, printing each Thought / Action / Observation.
 *
 *   react_agent MODEL [--adapter DIR] [--layout N] [--steps N] [--frame-tokens N] [--free]
 *
 * --adapter DIR      a LoRA adapter (PEFT format, e.g. what train_agent --out saved) hot-swapped in
 * --layout N         which household layout (seed; default 1, one train_agent never trains on)
 * --frame-tokens N   generate at most N tokens per agentlm_agent_step call, as a game loop would per
 *                    frame (the step returns PENDING until the reply is complete)
 * --free             no admissible actions: the model writes any action
 *
 * The last line is the honest outcome: "task completed in N steps" or "task not completed", with the
 * number of actions the household accepted. Exit status 0 when the episode ran (completed or not).
 */
#include "agentlm.h"
#include "household.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, agentlm_status st, agentlm_error *err) {
  fprintf(stderr, "error: %s: %s (%s)\n", what, err ? agentlm_error_message(err) : "", agentlm_status_string(st));
  agentlm_error_free(err);
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: react_agent MODEL [--adapter DIR] [--layout N] [--steps N] [--frame-tokens N] [--free]\n");
    return 2;
  }
  int free_mode = 0;
  uint32_t steps = 15, frame_tokens = 0;
  uint64_t layout = 1;
  const char *adapter_dir = NULL;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--free") == 0) free_mode = 1;
    else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = (uint32_t)atoi(argv[++i]);
    else if (strcmp(argv[i], "--frame-tokens") == 0 && i + 1 < argc) frame_tokens = (uint32_t)atoi(argv[++i]);
    else if (strcmp(argv[i], "--layout") == 0 && i + 1 < argc) layout = (uint64_t)atoll(argv[++i]);
    else if (strcmp(argv[i], "--adapter") == 0 && i + 1 < argc) adapter_dir = argv[++i];
    else {
      fprintf(stderr, "unknown argument %s\n", argv[i]);
      return 2;
    }
  }

  house h;
  house_generate(&h, layout);
  char task[1024];
  house_task(&h, task, sizeof task);

  agentlm_model *model = NULL;
  agentlm_agent *agent = NULL;
  agentlm_adapter *adapter = NULL;
  agentlm_error *err = NULL;
  agentlm_status st = agentlm_model_load(argv[1], strlen(argv[1]), NULL, &model, &err);
  if (st != AGENTLM_STATUS_OK) return fail("load", st, err);
  if (adapter_dir && (st = agentlm_adapter_load(model, adapter_dir, strlen(adapter_dir), &adapter, &err)) != AGENTLM_STATUS_OK)
    return fail("adapter", st, err);

  agentlm_agent_params p = agentlm_agent_params_default();
  p.format = AGENTLM_FORMAT_ALFWORLD;
  p.max_steps = steps;
  p.max_tokens_per_step = free_mode ? 48 : 40;
  st = agentlm_agent_new(model, &p, HOUSE_INSTRUCTIONS, strlen(HOUSE_INSTRUCTIONS), task, strlen(task), &agent, &err);
  agentlm_model_free(model); /* the agent keeps the model alive */
  if (st != AGENTLM_STATUS_OK) return fail("agent", st, err);
  if ((st = house_add_tools(agent, &h, &err)) != AGENTLM_STATUS_OK) return fail("add tool", st, err);
  if (adapter && (st = agentlm_agent_set_adapter(agent, adapter, 1.0f, &err)) != AGENTLM_STATUS_OK)
    return fail("set adapter", st, err);
  agentlm_adapter_free(adapter); /* the agent keeps it */

  printf("%s\n(%s; %s)\n", task, adapter_dir ? "with the trained adapter" : "base model",
         free_mode ? "free actions" : "admissible actions set every step");
  int replies = 0, frames = 0, done = 0;
  while (!done && !h.solved) {
    if (!free_mode && (st = house_set_admissible(agent, &h, &err)) != AGENTLM_STATUS_OK) return fail("admissible", st, err);
    agentlm_agent_step_result s;
    do {
      st = agentlm_agent_step(agent, frame_tokens, 0, &s, &err);
      if (st != AGENTLM_STATUS_OK) return fail("step", st, err);
      frames++; /* a game would render a frame between PENDING steps */
    } while (s.kind == AGENTLM_STEP_PENDING);
    switch (s.kind) {
    case AGENTLM_STEP_ACTION:
      replies++;
      if (s.thought.len) printf("Thought: %s\n", s.thought.ptr);
      printf("Action: %s%s\nObservation: %s\n", s.action.ptr, s.accepted == 1 ? "" : "  [not accepted]",
             s.observation.ptr);
      break;
    case AGENTLM_STEP_INVALID:
      replies++;
      printf("Invalid reply (%s): %.*s\n", s.answer.ptr, (int)(s.text.len > 120 ? 120 : s.text.len), s.text.ptr);
      break;
    case AGENTLM_STEP_REPEAT_LIMIT:
      replies++;
      printf("Action: %s (the same action %s times in a row: the episode ends)\n", s.action.ptr, "3");
      done = 1;
      break;
    case AGENTLM_STEP_FINAL:
      replies++;
      printf("Final answer: %s\n", s.answer.ptr);
      done = 1;
      break;
    default:
      done = 1; /* step limit or cancelled */
      break;
    }
  }
  uint32_t actions = 0, accepted = 0;
  agentlm_agent_accepted_actions(agent, &actions, &accepted, NULL);
  const char *outcome = h.solved ? "success" : "unsolved";
  agentlm_agent_set_outcome(agent, h.solved ? 1.0 : 0.0, outcome, strlen(outcome), NULL);
  if (h.solved) printf("task completed in %d steps", replies);
  else printf("task not completed (%d steps)", replies);
  printf("; %u of %u actions accepted by the household; %d step calls\n", accepted, actions, frames);
  agentlm_agent_free(agent);
  return 0;
}
