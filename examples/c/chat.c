/*
 * Streaming chat through the C API.
 *
 *   chat MODEL [PROMPT [MAX_TOKENS]]
 *
 * With PROMPT: renders it as one user message with the model's chat template, streams the greedy
 * answer to stdout (the same output as `examples/generate --chat --greedy --prompt PROMPT`), and prints
 * statistics to stderr. Without PROMPT: reads one user message per line from stdin and answers each,
 * keeping the conversation.
 */
#include "agentlm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TURNS 64

static bool print_piece(void *user, uint32_t token, const char *text, size_t len) {
  (void)user;
  (void)token;
  fwrite(text, 1, len, stdout);
  fflush(stdout);
  return true;
}

static int fail(const char *what, agentlm_status st, agentlm_error *err) {
  fprintf(stderr, "error: %s: %s (%s)\n", what, err ? agentlm_error_message(err) : "", agentlm_status_string(st));
  agentlm_error_free(err);
  return 1;
}

/* Renders the conversation so far and answers its last user message. */
static int answer(agentlm_model *model, agentlm_session *session, const agentlm_message *msgs, size_t n,
                  uint32_t max_tokens, char **reply) {
  agentlm_error *err = NULL;
  /* The whole conversation, rendered with the model's template; message contents are tokenized as plain
   * text (a user typing "<|im_end|>" cannot end the turn), and the tokens of the history already in the
   * session are kept. */
  agentlm_status st = agentlm_session_sync_chat(session, msgs, n, true, &err);
  if (st != AGENTLM_STATUS_OK) return fail("chat", st, err);

  size_t before = 0;
  agentlm_session_tokens(session, NULL, 0, &before, NULL);
  agentlm_generate_params gp = agentlm_generate_params_default(); /* greedy */
  gp.max_tokens = max_tokens;
  agentlm_generation g;
  st = agentlm_session_generate(session, &gp, print_piece, NULL, &g, &err);
  if (st < 0) return fail("generate", st, err);
  printf("\n");
  fprintf(stderr, "[%u prompt tokens, %.1f tok/s prefill; %u new tokens, %.1f tok/s decode]\n", g.prefill_tokens,
          g.prefill_tokens_per_s, g.n_tokens, g.decode_tokens_per_s);

  /* The reply, for the next turn's history: the generated tokens, special tokens skipped. */
  size_t total = 0;
  agentlm_session_tokens(session, NULL, 0, &total, NULL);
  uint32_t *ids = malloc(total * sizeof *ids);
  if (!ids) return 1;
  agentlm_session_tokens(session, ids, total, &total, NULL);
  size_t text_len = 0;
  agentlm_model_detokenize(model, ids + before, total - before, true, NULL, 0, &text_len, NULL);
  *reply = malloc(text_len);
  if (*reply) agentlm_model_detokenize(model, ids + before, total - before, true, *reply, text_len, &text_len, NULL);
  free(ids);
  return *reply ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: chat MODEL [PROMPT [MAX_TOKENS]]\n");
    return 2;
  }
  if (agentlm_abi_version() != AGENTLM_ABI_VERSION) {
    fprintf(stderr, "error: libagentlm ABI %u, this program was built for %u\n", agentlm_abi_version(),
            AGENTLM_ABI_VERSION);
    return 1;
  }
  uint32_t max_tokens = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 256;

  agentlm_model *model = NULL;
  agentlm_session *session = NULL;
  agentlm_error *err = NULL;
  agentlm_status st = agentlm_model_load(argv[1], strlen(argv[1]), NULL, &model, &err);
  if (st != AGENTLM_STATUS_OK) return fail("load", st, err);
  if ((st = agentlm_session_new(model, NULL, &session, &err)) != AGENTLM_STATUS_OK) {
    agentlm_model_free(model);
    return fail("session", st, err);
  }

  agentlm_message msgs[2 * MAX_TURNS];
  char *owned[2 * MAX_TURNS];
  size_t n = 0, n_owned = 0;
  int rc = 0;
  if (argc > 2) {
    char *reply = NULL;
    msgs[0].role = (agentlm_str){"user", 4};
    msgs[0].content = (agentlm_str){argv[2], strlen(argv[2])};
    rc = answer(model, session, msgs, 1, max_tokens, &reply);
    free(reply);
  } else {
    char line[4096];
    while (n + 2 <= 2 * MAX_TURNS && fgets(line, sizeof line, stdin)) {
      line[strcspn(line, "\n")] = 0;
      char *user = strdup(line);
      char *reply = NULL;
      if (!user) break;
      owned[n_owned++] = user;
      msgs[n].role = (agentlm_str){"user", 4};
      msgs[n].content = (agentlm_str){user, strlen(user)};
      n++;
      if ((rc = answer(model, session, msgs, n, max_tokens, &reply)) != 0) break;
      owned[n_owned++] = reply;
      msgs[n].role = (agentlm_str){"assistant", 9};
      msgs[n].content = (agentlm_str){reply, strlen(reply)};
      n++;
    }
  }
  for (size_t i = 0; i < n_owned; i++) free(owned[i]);
  agentlm_session_free(session);
  agentlm_model_free(model);
  return rc;
}
