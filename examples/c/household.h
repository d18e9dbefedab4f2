/*
 * A small text household for the C examples (ALFWorld-like): places that can be closed, objects on
 * them, and the tools an agent acts with. Tool callbacks get the house as user_data and answer through
 * agentlm_tool_result_set. Header-only (static functions); include it from one file.
 */
#ifndef AGENTLM_EXAMPLE_HOUSEHOLD_H
#define AGENTLM_EXAMPLE_HOUSEHOLD_H

#include "agentlm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name;
  int closed;
  const char *objects[4];
} place;

typedef struct {
  place places[5];
  const char *at;
  const char *holding;
  int solved;
  /* The goal: goal_put 1: put `goal_object` in/on `goal_place`; 0: pick `goal_object` up; 2: go to
   * `goal_place`. */
  int goal_put;
  const char *goal_object, *goal_place;
} house;

/* Trims what models add around a name: a leading "the ", trailing spaces and punctuation. */
static inline void trim_name(const char **name, size_t *len) {
  while (*len && (**name == ' ')) (*name)++, (*len)--;
  if (*len > 4 && memcmp(*name, "the ", 4) == 0) *name += 4, *len -= 4;
  while (*len && strchr(" .,!\"'\n", (*name)[*len - 1])) (*len)--;
}

static inline place *find_place(house *h, const char *name, size_t len) {
  trim_name(&name, &len);
  for (int i = 0; i < 5; i++)
    if (strlen(h->places[i].name) == len && memcmp(h->places[i].name, name, len) == 0) return &h->places[i];
  return NULL;
}

static inline void describe(const place *p, char *out, size_t cap) {
  size_t n = (size_t)snprintf(out, cap, "On the %s, you see", p->name);
  int any = 0;
  for (int i = 0; i < 4 && n < cap; i++)
    if (p->objects[i]) n += (size_t)snprintf(out + n, cap - n, "%s a %s", any++ ? "," : "", p->objects[i]);
  if (n < cap) snprintf(out + n, cap - n, "%s.", any ? "" : " nothing");
}

/* Tool callbacks: user_data is the house; the observation goes back through agentlm_tool_result_set. */
static inline bool tool_go(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  house *h = (house *)user;
  char obs[256];
  place *p = find_place(h, input, len);
  if (!p) snprintf(obs, sizeof obs, "Nothing happened.");
  else if (p->closed) {
    h->at = p->name;
    snprintf(obs, sizeof obs, "The %s is closed.", p->name);
  } else {
    h->at = p->name;
    describe(p, obs, sizeof obs);
  }
  if (p && h->goal_put == 2 && strcmp(p->name, h->goal_place) == 0) h->solved = 1;
  agentlm_tool_result_set(r, obs, strlen(obs));
  return true;
}

static inline bool tool_open(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  house *h = (house *)user;
  char obs[256];
  place *p = find_place(h, input, len);
  if (!p || p->name != h->at || !p->closed) snprintf(obs, sizeof obs, "Nothing happened.");
  else {
    p->closed = 0;
    snprintf(obs, sizeof obs, "You open the %s. ", p->name);
    size_t n = strlen(obs);
    describe(p, obs + n, sizeof obs - n);
  }
  agentlm_tool_result_set(r, obs, strlen(obs));
  return true;
}

/* Splits "<object><sep><place>" (e.g. "apple 1 from table 1") into `obj` and the place, which must be
 * where the agent is and open; NULL otherwise. */
static inline place *object_at_place(house *h, const char *input, size_t len, const char *sep, char *obj, size_t cap) {
  if (len >= cap) return NULL;
  memcpy(obj, input, len);
  obj[len] = 0;
  char *at = strstr(obj, sep);
  if (!at) return NULL;
  *at = 0;
  const char *name = at + strlen(sep);
  const char *o = obj;
  size_t olen = strlen(obj);
  trim_name(&o, &olen);
  memmove(obj, o, olen);
  obj[olen] = 0;
  place *p = find_place(h, name, strlen(name));
  return p && p->name == h->at && !p->closed ? p : NULL;
}

static inline bool tool_take(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  house *h = (house *)user;
  char obs[256] = "Nothing happened.";
  char obj[128];
  place *p = h->holding ? NULL : object_at_place(h, input, len, " from ", obj, sizeof obj);
  for (int i = 0; p && i < 4; i++)
    if (p->objects[i] && strcmp(p->objects[i], obj) == 0) {
      h->holding = p->objects[i];
      p->objects[i] = NULL;
      if (h->goal_put == 0 && strcmp(h->holding, h->goal_object) == 0) h->solved = 1;
      snprintf(obs, sizeof obs, "You pick up the %s from the %s.", h->holding, p->name);
      break;
    }
  agentlm_tool_result_set(r, obs, strlen(obs));
  return true;
}

static inline bool tool_put(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  house *h = (house *)user;
  char obs[256] = "Nothing happened.";
  char obj[128];
  place *p = NULL;
  const char *seps[] = {" in/on ", " in ", " on ", " into "};
  for (int i = 0; h->holding && !p && i < 4; i++) p = object_at_place(h, input, len, seps[i], obj, sizeof obj);
  for (int i = 0; p && strcmp(obj, h->holding) == 0 && i < 4; i++)
    if (!p->objects[i]) {
      p->objects[i] = h->holding;
      snprintf(obs, sizeof obs, "You put the %s in/on the %s.", h->holding, p->name);
      if (h->goal_put == 1 && strcmp(h->holding, h->goal_object) == 0 && strcmp(p->name, h->goal_place) == 0) h->solved = 1;
      h->holding = NULL;
      break;
    }
  agentlm_tool_result_set(r, obs, strlen(obs));
  return true;
}

/* calculate: + - * / over integers, left to right. */
static inline bool tool_calculate(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  (void)user;
  char buf[128], obs[64];
  if (len >= sizeof buf) return false;
  memcpy(buf, input, len);
  buf[len] = 0;
  char *p = buf;
  long acc = strtol(p, &p, 10);
  while (*p) {
    while (*p == ' ') p++;
    char op = *p;
    if (!op) break;
    p++;
    long v = strtol(p, &p, 10);
    if (op == '+') acc += v;
    else if (op == '-') acc -= v;
    else if (op == '*') acc *= v;
    else if (op == '/' && v != 0) acc /= v;
    else return false;
  }
  snprintf(obs, sizeof obs, "%ld", acc);
  agentlm_tool_result_set(r, obs, strlen(obs));
  return true;
}

/* The other ALFWorld verbs: looking around and the inventory are answered; the rest change nothing. */
static inline bool tool_look(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  house *h = (house *)user;
  (void)input;
  (void)len;
  char obs[256];
  snprintf(obs, sizeof obs, "You are at the %s.", h->at);
  agentlm_tool_result_set(r, obs, strlen(obs));
  return true;
}

static inline bool tool_inventory(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  house *h = (house *)user;
  (void)input;
  (void)len;
  char obs[256];
  if (h->holding) snprintf(obs, sizeof obs, "You are carrying: a %s.", h->holding);
  else snprintf(obs, sizeof obs, "You are not carrying anything.");
  agentlm_tool_result_set(r, obs, strlen(obs));
  return true;
}

static inline bool tool_nothing(void *user, const char *input, size_t len, agentlm_tool_result *r) {
  (void)user;
  (void)input;
  (void)len;
  agentlm_tool_result_set(r, "Nothing happened.", 17);
  return true;
}

/* Registers the household's tools on `agent` (user_data: `h`): go to, open, take, put; then `calculate`
 * when `calculator`; then the other ALFWorld verbs (look, inventory, examine, close) when `all_verbs`. */
static inline agentlm_status house_add_tools(agentlm_agent *agent, house *h, int calculator, int all_verbs,
                                             agentlm_error **err) {
  struct {
    const char *name, *description;
    agentlm_tool_fn fn;
    int group; /* 0 always, 1 calculator, 2 all verbs */
  } tools[] = {
      {"go to", "go to a place, e.g. go to table 1", tool_go, 0},
      {"open", "open the closed place you are at, e.g. open cabinet 1", tool_open, 0},
      {"take", "take an object from the place you are at, e.g. take book 1 from table 1", tool_take, 0},
      {"put", "put what you hold in or on the place you are at, e.g. put book 1 in/on cabinet 1", tool_put, 0},
      {"calculate", "evaluate arithmetic, e.g. calculate 12 * 7", tool_calculate, 1},
      {"look", "look around", tool_look, 2},
      {"inventory", "list what you carry", tool_inventory, 2},
      {"examine", "examine something", tool_nothing, 2},
      {"close", "close a place", tool_nothing, 2},
  };
  for (size_t i = 0; i < sizeof tools / sizeof tools[0]; i++) {
    if ((tools[i].group == 1 && !calculator) || (tools[i].group == 2 && !all_verbs)) continue;
    agentlm_status st = agentlm_agent_add_tool(agent, tools[i].name, strlen(tools[i].name), tools[i].description,
                                               strlen(tools[i].description), NULL, 0, tools[i].fn, h, NULL, err);
    if (st != AGENTLM_STATUS_OK) return st;
  }
  return AGENTLM_STATUS_OK;
}

/* A fresh house with the goal given. */
static inline void house_init(house *h, int goal_put, const char *object, const char *place_name) {
  house fresh = {{{"countertop 1", 0, {"apple 1", "mug 1", NULL, NULL}},
                  {"fridge 1", 1, {"egg 1", NULL, NULL, NULL}},
                  {"cabinet 1", 1, {"plate 1", NULL, NULL, NULL}},
                  {"table 1", 0, {"book 1", "pen 1", NULL, NULL}},
                  {"middle of the room", 0, {NULL, NULL, NULL, NULL}}},
                 "middle of the room", NULL, 0, goal_put, object, place_name};
  *h = fresh;
}

/* The task as ALFWorld states it. */
static inline void house_task(const house *h, char *out, size_t cap) {
  char object[64];
  snprintf(object, sizeof object, "%s", h->goal_object ? h->goal_object : "");
  char *space = strrchr(object, ' ');
  if (space) *space = 0; /* "apple 1" -> "apple" */
  if (h->goal_put == 2)
    snprintf(out, cap,
             "Here is your task. You are in the middle of a room. Looking quickly around you, you see a countertop 1, "
             "a fridge 1, a cabinet 1 and a table 1.\nYour task is to: go to the %s and look at it.",
             h->goal_place);
  else if (h->goal_put == 1)
    snprintf(out, cap,
             "Here is your task. You are in the middle of a room. Looking quickly around you, you see a countertop 1, "
             "a fridge 1, a cabinet 1 and a table 1.\nYour task is to: put some %s in %s.",
             object, h->goal_place);
  else
    snprintf(out, cap,
             "Here is your task. You are in the middle of a room. Looking quickly around you, you see a countertop 1, "
             "a fridge 1, a cabinet 1 and a table 1.\nYour task is to: find some %s and take it.",
             object);
}

#endif
