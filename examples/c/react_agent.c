/*
 * A ReAct agent driven from C: the host implements a small household (rooms, objects, `go to`,
 * `take`, `open`, `put`) and a calculator, registers them as tools, and steps the agent on the real
 * model, printing each Thought / Action / Observation.
 *
 *   react_agent MODEL [--constrained] [--steps N] [--frame-tokens N]
 *
 * --constrained      every action must name a registered tool (token-level constraint)
 * --frame-tokens N   generate at most N tokens per agentlm_agent_step call, as a game loop would per
 *                    frame (the step returns PENDING until the reply is complete)
 *
 * Exit status 0 when the episode ran to its end; prints "valid actions: N of M replies".
 */
#include "agentlm.h"
#include "household.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *INSTRUCTIONS =
    "Interact with a household to solve a task. Each turn, output \"THOUGHT: your thoughts.\\n ACTION: "
    "your next action\" or just \"ACTION: your next action\". Use only the available actions.";
static const char *TASK =
    "Here is your task. You are in the middle of a room. Looking quickly around you, you see a countertop 1, "
    "a fridge 1, a cabinet 1 and a table 1.\nYour task is to: put an apple in fridge 1.";

static int fail(const char *what, agentlm_status st, agentlm_error *err) {
  fprintf(stderr, "error: %s: %s (%s)\n", what, err ? agentlm_error_message(err) : "", agentlm_status_string(st));
  agentlm_error_free(err);
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: react_agent MODEL [--constrained] [--steps N] [--frame-tokens N]\n");
    return 2;
  }
  int constrained = 0;
  uint32_t steps = 8, frame_tokens = 0;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--constrained") == 0) constrained = 1;
    else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = (uint32_t)atoi(argv[++i]);
    else if (strcmp(argv[i], "--frame-tokens") == 0 && i + 1 < argc) frame_tokens = (uint32_t)atoi(argv[++i]);
    else {
      fprintf(stderr, "unknown argument %s\n", argv[i]);
      return 2;
    }
  }

  house h;
  house_init(&h, 1, "apple 1", "fridge 1");

  agentlm_model *model = NULL;
  agentlm_agent *agent = NULL;
  agentlm_error *err = NULL;
  agentlm_status st = agentlm_model_load(argv[1], strlen(argv[1]), NULL, &model, &err);
  if (st != AGENTLM_STATUS_OK) return fail("load", st, err);

  agentlm_agent_params p = agentlm_agent_params_default();
  p.format = AGENTLM_FORMAT_ALFWORLD;
  p.max_steps = steps;
  p.max_tokens_per_step = 48;
  p.constrained = constrained;
  st = agentlm_agent_new(model, &p, INSTRUCTIONS, strlen(INSTRUCTIONS), TASK, strlen(TASK), &agent, &err);
  agentlm_model_free(model); /* the agent keeps the model alive */
  if (st != AGENTLM_STATUS_OK) return fail("agent", st, err);

  st = house_add_tools(agent, &h, 1, 0, &err);
  if (st != AGENTLM_STATUS_OK) return fail("add tool", st, err);

  printf("Task: put an apple in fridge 1 (%s mode)\n", constrained ? "constrained" : "free");
  int replies = 0, valid = 0, frames = 0, done = 0;
  while (!done) {
    agentlm_agent_step_result s;
    st = agentlm_agent_step(agent, frame_tokens, 0, &s, &err);
    if (st != AGENTLM_STATUS_OK) return fail("step", st, err);
    frames++;
    switch (s.kind) {
    case AGENTLM_STEP_PENDING:
      continue; /* a game would render a frame here */
    case AGENTLM_STEP_ACTION:
      replies++;
      valid++;
      if (s.thought.len) printf("Thought: %s\n", s.thought.ptr);
      printf("Action: %s %s%s\nObservation: %s\n", s.tool.ptr, s.input.ptr, s.repeated ? " (repeated)" : "",
             s.observation.ptr);
      break;
    case AGENTLM_STEP_INVALID:
      replies++;
      printf("Invalid reply (%s): %.*s\n", s.answer.ptr, (int)(s.text.len > 120 ? 120 : s.text.len), s.text.ptr);
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
    if (h.solved) {
      printf("Solved: the apple is in the fridge.\n");
      done = 1;
    }
  }
  const char *outcome = h.solved ? "success" : "unsolved";
  agentlm_agent_set_outcome(agent, h.solved ? 1.0 : 0.0, outcome, strlen(outcome), NULL);
  size_t len = 0;
  agentlm_agent_trajectory_json(agent, NULL, 0, &len, NULL);
  printf("valid actions: %d of %d replies (%d step calls); trajectory JSON %zu bytes\n", valid, replies, frames,
         len);
  agentlm_agent_free(agent);
  return 0;
}
