/* Loads a model through an installed libagentlm and generates a few tokens. */
#include <agentlm.h>

#include <stdio.h>
#include <string.h>

static bool print_piece(void *user, uint32_t token, const char *text, size_t len) {
  (void)user;
  (void)token;
  fwrite(text, 1, len, stdout);
  return true;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  agentlm_model *model = NULL;
  agentlm_session *session = NULL;
  agentlm_error *err = NULL;
  printf("libagentlm %s (ABI %u)\n", agentlm_version(), agentlm_abi_version());
  if (agentlm_model_load(argv[1], strlen(argv[1]), NULL, &model, &err) != AGENTLM_STATUS_OK ||
      agentlm_session_new(model, NULL, &session, &err) != AGENTLM_STATUS_OK ||
      agentlm_session_append_text(session, "The capital of France is", 24, &err) != AGENTLM_STATUS_OK) {
    fprintf(stderr, "error: %s\n", agentlm_error_message(err));
    agentlm_error_free(err);
    agentlm_model_free(model);
    return 1;
  }
  agentlm_generate_params gp = agentlm_generate_params_default();
  gp.max_tokens = 4;
  agentlm_status st = agentlm_session_generate(session, &gp, print_piece, NULL, NULL, &err);
  printf("\n");
  agentlm_error_free(err);
  agentlm_session_free(session);
  agentlm_model_free(model);
  return st == AGENTLM_STATUS_OK ? 0 : 1;
}
