/* The header can be included twice and compiles as strict C with every warning an error. */
#include "agentlm.h"
#include "agentlm.h"

#include <stdio.h>
#include <string.h>

int main(void) {
  agentlm_model_params p = agentlm_model_params_default();
  int ok = p.struct_size == sizeof p && agentlm_abi_version() == AGENTLM_ABI_VERSION;
  printf("%d passed, %d failed\n", ok, !ok);
  return ok ? 0 : 1;
}
