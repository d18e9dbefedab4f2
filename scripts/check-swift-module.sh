#!/usr/bin/env bash
# Checks the Swift binding's C module (bindings/swift/Sources/CAgentLM): a translation unit imports it
# through its module map with clang -fmodules and uses the declarations the Swift code calls.
# No Swift toolchain is needed (nor available here); the Swift sources themselves are not compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/check.m" <<'OBJC'
@import CAgentLM;
int check(void) {
  agentlm_model_params mp = agentlm_model_params_default();
  agentlm_session_params sp = agentlm_session_params_default();
  agentlm_generate_params gp = agentlm_generate_params_default();
  agentlm_agent_params ap = agentlm_agent_params_default();
  agentlm_trainer_params tp = agentlm_trainer_params_default();
  agentlm_token token;
  agentlm_agent_step_result step;
  agentlm_tool_fn tool = 0;
  agentlm_free_fn release = 0;
  (void)tool; (void)release; (void)token; (void)step;
  agentlm_str actions[1] = {{"look", 4}};
  (void)agentlm_agent_set_admissible(0, actions, 1, 0);
  return (int)(mp.struct_size + sp.struct_size + gp.struct_size + ap.struct_size + tp.struct_size) +
         (agentlm_abi_version() == AGENTLM_ABI_VERSION) + AGENTLM_STEP_ACTION + AGENTLM_STATUS_DONE;
}
OBJC
clang -fmodules -fsyntax-only -Werror -fmodules-cache-path="$tmp/cache" \
  -fmodule-map-file=bindings/swift/Sources/CAgentLM/include/module.modulemap \
  -I bindings/swift/Sources/CAgentLM/include "$tmp/check.m"
echo "swift C module: 1 passed, 0 failed"
