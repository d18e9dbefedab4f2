/*
 * A text household for the C examples, in ALFWorld's style: a room of 6 or 7 places (some closed),
 * objects on and in them, and a task "put a <object> in/on <place>" whose object is hidden in one of
 * the places. Solving it takes exploring (going to places, opening closed ones), taking the object,
 * going to the target and putting it there: 4 to 14 actions. Layouts come from a seed, so training
 * and held-out layouts are disjoint sets of seeds.
 *
 * The host side of an agent: the admissible actions of each step (house_admissible, for
 * agentlm_agent_set_admissible), the actions themselves (house_act, also as tool callbacks that report
 * whether the action was accepted), and a scripted solver (house_demonstration) whose replies an agent
 * can take as demonstrations. Header-only (static functions); include it from one file.
 */
#ifndef AGENTLM_EXAMPLE_HOUSEHOLD_H
#define AGENTLM_EXAMPLE_HOUSEHOLD_H

#include "agentlm.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOUSE_MAX_PLACES 7
#define HOUSE_MAX_OBJECTS 4
#define HOUSE_NAME 32
#define HOUSE_MAX_ACTIONS 40
#define HOUSE_ACTION 96

typedef struct {
  char name[HOUSE_NAME];
  int closable, closed;
  char objects[HOUSE_MAX_OBJECTS][HOUSE_NAME];
} place;

typedef struct {
  place places[HOUSE_MAX_PLACES];
  int n_places;
  int at;      /* index of the place the agent is at; -1: the middle of the room */
  char holding[HOUSE_NAME];
  char goal_object[HOUSE_NAME]; /* "apple 1" */
  int goal_place;
  int visited[HOUSE_MAX_PLACES]; /* what the scripted solver has seen (the same observations the agent gets) */
  int solved;
  /* The last object put somewhere and where (-1: nothing put yet): what an episode did achieve. */
  char put_object[HOUSE_NAME];
  int put_place;
} house;

static const struct {
  const char *name;
  int closable;
} HOUSE_PLACE_KINDS[] = {{"cabinet", 1},  {"drawer", 1},  {"fridge", 1},   {"microwave", 1}, {"safe", 1},
                         {"countertop", 0}, {"diningtable", 0}, {"shelf", 0}, {"sidetable", 0}, {"dresser", 0},
                         {"desk", 0},     {"sinkbasin", 0}, {"garbagecan", 0}, {"armchair", 0}, {"coffeetable", 0}};
static const char *HOUSE_OBJECT_KINDS[] = {"apple",  "mug",   "book",  "pen",   "key",      "cup",    "bowl",
                                           "plate",  "egg",   "spoon", "candle", "cellphone", "tomato", "watch",
                                           "pencil", "knife", "vase",  "bread", "soapbar",  "newspaper"};
#define HOUSE_N_PLACE_KINDS (sizeof HOUSE_PLACE_KINDS / sizeof HOUSE_PLACE_KINDS[0])
#define HOUSE_N_OBJECT_KINDS (sizeof HOUSE_OBJECT_KINDS / sizeof HOUSE_OBJECT_KINDS[0])

static inline uint32_t house_rand(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return (uint32_t)(*s >> 16);
}

static inline int house_find_place(const house *h, const char *name, size_t len) {
  for (int i = 0; i < h->n_places; i++)
    if (strlen(h->places[i].name) == len && memcmp(h->places[i].name, name, len) == 0) return i;
  return -1;
}

/* A layout from `seed`: 6 or 7 places (at most 3 closed), 0-2 other objects in each, the goal object in
 * one place and the goal place another. */
static inline void house_generate(house *h, uint64_t seed) {
  memset(h, 0, sizeof *h);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  for (int i = 0; i < 4; i++) house_rand(&s);
  h->n_places = 6 + (int)(house_rand(&s) % 2);
  int counts[HOUSE_N_PLACE_KINDS] = {0}, closed = 0;
  for (int i = 0; i < h->n_places; i++) {
    size_t k;
    do k = house_rand(&s) % HOUSE_N_PLACE_KINDS;
    while (HOUSE_PLACE_KINDS[k].closable && closed >= 3);
    closed += HOUSE_PLACE_KINDS[k].closable;
    place *p = &h->places[i];
    snprintf(p->name, sizeof p->name, "%s %d", HOUSE_PLACE_KINDS[k].name, ++counts[k]);
    p->closable = p->closed = HOUSE_PLACE_KINDS[k].closable;
  }
  int used[HOUSE_N_OBJECT_KINDS] = {0};
  size_t goal = house_rand(&s) % HOUSE_N_OBJECT_KINDS;
  used[goal] = 1;
  snprintf(h->goal_object, sizeof h->goal_object, "%s 1", HOUSE_OBJECT_KINDS[goal]);
  int hidden = (int)(house_rand(&s) % (uint32_t)h->n_places);
  h->goal_place = (int)(house_rand(&s) % (uint32_t)(h->n_places - 1));
  if (h->goal_place >= hidden) h->goal_place++;
  for (int i = 0; i < h->n_places; i++) {
    int n = (int)(house_rand(&s) % 3), slot = 0;
    if (i == hidden) snprintf(h->places[i].objects[slot++], HOUSE_NAME, "%s", h->goal_object);
    for (int j = 0; j < n; j++) {
      size_t k = house_rand(&s) % HOUSE_N_OBJECT_KINDS;
      if (k == goal) continue;
      snprintf(h->places[i].objects[slot++], HOUSE_NAME, "%s %d", HOUSE_OBJECT_KINDS[k], ++used[k]);
    }
    /* The goal object is not always listed first. */
    if (i == hidden && slot > 1 && house_rand(&s) % 2) {
      char t[HOUSE_NAME];
      memcpy(t, h->places[i].objects[0], HOUSE_NAME);
      memcpy(h->places[i].objects[0], h->places[i].objects[slot - 1], HOUSE_NAME);
      memcpy(h->places[i].objects[slot - 1], t, HOUSE_NAME);
    }
  }
  h->at = -1;
  h->put_place = -1;
}

/* The goal object's kind ("apple" for "apple 1") and the task's preposition for the goal place. */
static inline void house_goal_words(const house *h, char *kind, size_t cap, const char **prep) {
  snprintf(kind, cap, "%s", h->goal_object);
  char *space = strrchr(kind, ' ');
  if (space) *space = 0;
  *prep = h->places[h->goal_place].closable ? "in" : "on";
}

/* The task line for putting `object` ("apple 1") in/on place `p`: "Your task is to: put a apple in
 * fridge 1." */
static inline void house_task_line(const house *h, const char *object, int p, char *out, size_t cap) {
  char kind[HOUSE_NAME];
  snprintf(kind, sizeof kind, "%s", object);
  char *space = strrchr(kind, ' ');
  if (space) *space = 0;
  snprintf(out, cap, "Your task is to: put a %s %s %s.", kind, h->places[p].closable ? "in" : "on", h->places[p].name);
}

/* The task as ALFWorld states it. */
static inline void house_task(const house *h, char *out, size_t cap) {
  size_t n = (size_t)snprintf(out, cap, "Here is your task. You are in the middle of a room. Looking quickly around you, you see");
  for (int i = 0; i < h->n_places && n < cap; i++)
    n += (size_t)snprintf(out + n, cap - n, "%s a %s", i == 0 ? "" : i + 1 == h->n_places ? ", and" : ",",
                          h->places[i].name);
  if (n < cap) n += (size_t)snprintf(out + n, cap - n, ".\n");
  if (n < cap) house_task_line(h, h->goal_object, h->goal_place, out + n, cap - n);
}

/* "On the table 1, you see a apple 1, and a mug 1." */
static inline size_t house_describe(const place *p, char *out, size_t cap) {
  size_t n = (size_t)snprintf(out, cap, p->closable ? "In it, you see" : "On the %s, you see", p->name);
  int count = 0, total = 0;
  for (int i = 0; i < HOUSE_MAX_OBJECTS; i++) total += p->objects[i][0] != 0;
  for (int i = 0; i < HOUSE_MAX_OBJECTS && n < cap; i++)
    if (p->objects[i][0]) {
      count++;
      n += (size_t)snprintf(out + n, cap - n, "%s a %s", count == 1 ? "" : count == total ? ", and" : ",", p->objects[i]);
    }
  if (n < cap) n += (size_t)snprintf(out + n, cap - n, "%s.", count ? "" : " nothing");
  return n;
}

/* Splits "apple 1 from table 1" at `sep`: the object into `obj`, the place's index returned (-1 if none). */
static inline int house_split(const house *h, const char *input, size_t len, const char *sep, char *obj) {
  const char *at = NULL;
  size_t sl = strlen(sep);
  for (size_t i = 0; i + sl <= len; i++)
    if (memcmp(input + i, sep, sl) == 0) {
      at = input + i;
      break;
    }
  if (!at || (size_t)(at - input) >= HOUSE_NAME) return -1;
  memcpy(obj, input, (size_t)(at - input));
  obj[at - input] = 0;
  return house_find_place(h, at + sl, len - (size_t)(at - input) - sl);
}

/* Runs `verb` with `input` (e.g. "go to", "cabinet 1"); the observation goes into `obs`. Returns 1 when
 * the action was accepted (did something), 0 for "Nothing happened.". */
static inline int house_do(house *h, const char *verb, const char *input, size_t len, char *obs, size_t cap) {
  snprintf(obs, cap, "Nothing happened.");
  place *here = h->at >= 0 ? &h->places[h->at] : NULL;
  char obj[HOUSE_NAME];
  if (strcmp(verb, "go to") == 0) {
    int i = house_find_place(h, input, len);
    if (i < 0 || i == h->at) return 0;
    h->at = i;
    place *p = &h->places[i];
    if (p->closed) snprintf(obs, cap, "The %s is closed.", p->name);
    else {
      h->visited[i] = 1;
      size_t n = p->closable ? (size_t)snprintf(obs, cap, "The %s is open. ", p->name) : 0;
      if (n < cap) house_describe(p, obs + n, cap - n);
    }
    return 1;
  }
  if (strcmp(verb, "open") == 0 || strcmp(verb, "close") == 0) {
    int open = verb[0] == 'o';
    int i = house_find_place(h, input, len);
    if (i < 0 || i != h->at || !here->closable || here->closed != open) return 0;
    here->closed = !open;
    if (!open) {
      snprintf(obs, cap, "You close the %s.", here->name);
      return 1;
    }
    h->visited[i] = 1;
    size_t n = (size_t)snprintf(obs, cap, "You open the %s. The %s is open. ", here->name, here->name);
    if (n < cap) house_describe(here, obs + n, cap - n);
    return 1;
  }
  if (strcmp(verb, "take") == 0) {
    int i = house_split(h, input, len, " from ", obj);
    if (i < 0 || i != h->at || here->closed || h->holding[0]) return 0;
    for (int j = 0; j < HOUSE_MAX_OBJECTS; j++)
      if (here->objects[j][0] && strcmp(here->objects[j], obj) == 0) {
        memcpy(h->holding, here->objects[j], HOUSE_NAME);
        here->objects[j][0] = 0;
        snprintf(obs, cap, "You pick up the %s from the %s.", h->holding, here->name);
        return 1;
      }
    return 0;
  }
  if (strcmp(verb, "put") == 0) {
    int i = house_split(h, input, len, " in/on ", obj);
    if (i < 0 || i != h->at || here->closed || !h->holding[0] || strcmp(obj, h->holding) != 0) return 0;
    for (int j = 0; j < HOUSE_MAX_OBJECTS; j++)
      if (!here->objects[j][0]) {
        memcpy(here->objects[j], h->holding, HOUSE_NAME);
        snprintf(obs, cap, "You put the %s in/on the %s.", h->holding, here->name);
        if (i == h->goal_place && strcmp(h->holding, h->goal_object) == 0) h->solved = 1;
        memcpy(h->put_object, h->holding, HOUSE_NAME);
        h->put_place = i;
        h->holding[0] = 0;
        return 1;
      }
    return 0;
  }
  if (strcmp(verb, "inventory") == 0) {
    if (h->holding[0]) snprintf(obs, cap, "You are carrying: a %s.", h->holding);
    else snprintf(obs, cap, "You are not carrying anything.");
    return 1;
  }
  if (strcmp(verb, "look") == 0) {
    if (here) snprintf(obs, cap, "You are facing the %s. Next to it, you see nothing.", here->name);
    else snprintf(obs, cap, "You are in the middle of a room.");
    return 1;
  }
  return 0;
}

/* The verbs, longest first where one is a prefix of another. */
static const char *HOUSE_VERBS[] = {"go to", "open", "close", "take", "put", "inventory", "look"};
#define HOUSE_N_VERBS (sizeof HOUSE_VERBS / sizeof HOUSE_VERBS[0])

/* Runs a whole action line ("go to cabinet 1"); returns 1 when accepted. */
static inline int house_act(house *h, const char *action, char *obs, size_t cap) {
  for (size_t v = 0; v < HOUSE_N_VERBS; v++) {
    size_t n = strlen(HOUSE_VERBS[v]);
    if (strncmp(action, HOUSE_VERBS[v], n) == 0 && (action[n] == ' ' || action[n] == 0)) {
      const char *input = action[n] ? action + n + 1 : action + n;
      return house_do(h, HOUSE_VERBS[v], input, strlen(input), obs, cap);
    }
  }
  snprintf(obs, cap, "Nothing happened.");
  return 0;
}

/* The admissible actions now (ALFWorld's admissible commands), into `out`; returns how many. */
static inline int house_admissible(const house *h, char out[][HOUSE_ACTION], int max) {
  int n = 0;
#define HOUSE_ADD(...)                                                                             \
  do {                                                                                             \
    if (n < max) snprintf(out[n++], HOUSE_ACTION, __VA_ARGS__);                                    \
  } while (0)
  for (int i = 0; i < h->n_places; i++)
    if (i != h->at) HOUSE_ADD("go to %s", h->places[i].name);
  if (h->at >= 0) {
    const place *p = &h->places[h->at];
    if (p->closable) HOUSE_ADD("%s %s", p->closed ? "open" : "close", p->name);
    if (!p->closed) {
      for (int j = 0; j < HOUSE_MAX_OBJECTS && !h->holding[0]; j++)
        if (p->objects[j][0]) HOUSE_ADD("take %s from %s", p->objects[j], p->name);
      if (h->holding[0]) HOUSE_ADD("put %s in/on %s", h->holding, p->name);
    }
  }
  HOUSE_ADD("inventory");
  HOUSE_ADD("look");
#undef HOUSE_ADD
  return n;
}

/* The scripted solver's next reply: search the places in the order the task lists them (opening closed
 * ones), take the object when seen, go to the goal place, open it if closed, put the object there. It
 * knows only what the agent has seen. Every reply starts with a short THOUGHT: what it looks for and
 * whether it is here while searching, the object and its place once held; then its ACTION. Writes the
 * reply into `out`; returns 0 when solved. */
static inline int house_demonstration(const house *h, char *out, size_t cap) {
  if (h->solved) return 0;
  const place *here = h->at >= 0 ? &h->places[h->at] : NULL;
  const place *goal = &h->places[h->goal_place];
  char kind[HOUSE_NAME], thought[160], action[HOUSE_ACTION];
  const char *prep;
  house_goal_words(h, kind, sizeof kind, &prep);
  action[0] = 0;
  if (strcmp(h->holding, h->goal_object) == 0) {
    snprintf(thought, sizeof thought, "I have the %s. I put it %s %s.", h->goal_object, prep, goal->name);
    if (h->at != h->goal_place) snprintf(action, sizeof action, "go to %s", goal->name);
    else if (goal->closed) snprintf(action, sizeof action, "open %s", goal->name);
    else snprintf(action, sizeof action, "put %s in/on %s", h->goal_object, goal->name);
  } else if (!here) {
    snprintf(thought, sizeof thought, "I look for a %s to put %s %s.", kind, prep, goal->name);
  } else if (here->closed) {
    snprintf(thought, sizeof thought, "I look for a %s. The %s is closed.", kind, here->name);
    snprintf(action, sizeof action, "open %s", here->name);
  } else {
    /* The decision comes right after the object's name: it is here (take it) or not (go on). */
    snprintf(thought, sizeof thought, "I look for a %s. It is not here.", kind);
    for (int j = 0; j < HOUSE_MAX_OBJECTS; j++)
      if (strcmp(here->objects[j], h->goal_object) == 0) {
        snprintf(thought, sizeof thought, "I look for a %s. Here is the %s.", kind, h->goal_object);
        snprintf(action, sizeof action, "take %s from %s", h->goal_object, here->name);
      }
  }
  for (int i = 0; !action[0] && !h->holding[0] && i < h->n_places; i++)
    if (!h->visited[i] && i != h->at) snprintf(action, sizeof action, "go to %s", h->places[i].name);
  if (!action[0]) return 0;
  snprintf(out, cap, "THOUGHT: %s\n ACTION: %s", thought, action);
  return 1;
}

/* Tool callbacks (user_data: the house): the observation and the verdict go back through
 * agentlm_tool_result_set and agentlm_tool_result_set_accepted. */
#define HOUSE_TOOL(fn, verb)                                                                       \
  static inline bool fn(void *user, const char *input, size_t len, agentlm_tool_result *r) {     \
    char obs[512];                                                                                 \
    int ok = house_do((house *)user, verb, input, len, obs, sizeof obs);                          \
    agentlm_tool_result_set(r, obs, strlen(obs));                                                  \
    agentlm_tool_result_set_accepted(r, ok);                                                       \
    return true;                                                                                   \
  }
HOUSE_TOOL(house_tool_go, "go to")
HOUSE_TOOL(house_tool_open, "open")
HOUSE_TOOL(house_tool_close, "close")
HOUSE_TOOL(house_tool_take, "take")
HOUSE_TOOL(house_tool_put, "put")
HOUSE_TOOL(house_tool_inventory, "inventory")
HOUSE_TOOL(house_tool_look, "look")
#undef HOUSE_TOOL

/* Registers the household's verbs as tools on `agent` (user_data: `h`). */
static inline agentlm_status house_add_tools(agentlm_agent *agent, house *h, agentlm_error **err) {
  struct {
    const char *name, *description;
    agentlm_tool_fn fn;
  } tools[] = {
      {"go to", "go to a place, e.g. go to cabinet 1", house_tool_go},
      {"open", "open the closed place you are at, e.g. open drawer 1", house_tool_open},
      {"close", "close the place you are at", house_tool_close},
      {"take", "take an object from the place you are at, e.g. take mug 1 from shelf 1", house_tool_take},
      {"put", "put the object you hold in or on the place you are at, e.g. put mug 1 in/on desk 1", house_tool_put},
      {"inventory", "list what you carry", house_tool_inventory},
      {"look", "look around", house_tool_look},
  };
  for (size_t i = 0; i < sizeof tools / sizeof tools[0]; i++) {
    agentlm_status st = agentlm_agent_add_tool(agent, tools[i].name, strlen(tools[i].name), tools[i].description,
                                               strlen(tools[i].description), NULL, 0, tools[i].fn, h, NULL, err);
    if (st != AGENTLM_STATUS_OK) return st;
  }
  return AGENTLM_STATUS_OK;
}

/* Hands the agent the household's admissible actions for its next reply. */
static inline agentlm_status house_set_admissible(agentlm_agent *agent, const house *h, agentlm_error **err) {
  char actions[HOUSE_MAX_ACTIONS][HOUSE_ACTION];
  agentlm_str list[HOUSE_MAX_ACTIONS];
  int n = house_admissible(h, actions, HOUSE_MAX_ACTIONS);
  for (int i = 0; i < n; i++) list[i] = (agentlm_str){actions[i], strlen(actions[i])};
  return agentlm_agent_set_admissible(agent, list, (size_t)n, err);
}

static const char *HOUSE_INSTRUCTIONS =
    "Interact with a household to solve a task. Each turn, you are told what you see; reply with "
    "\"THOUGHT: your thoughts.\\n ACTION: your next action\" or just \"ACTION: your next action\". "
    "Search the places for the object, opening closed ones, take it, then put it in or on the target place.";

#endif
