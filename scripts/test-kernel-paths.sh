#!/usr/bin/env bash
# Reruns the kernel unit tests and the host-path training goldens on each lower kernel path this CPU
# has: the main test run takes the best one (AMX tiles, else AVX512-BF16 vectors, else the int16
# products of AVX2 CPUs), so without this a machine with AMX never checks the code other CPUs train
# with. `AGENTLM_AMX=0` selects the AVX512-BF16 vectors, `AGENTLM_BF16=0` the int8 kernels of AVX-512
# CPUs, `AGENTLM_ISA=avx2` the int16 products of AVX2 CPUs, `AGENTLM_ISA=avx2 AGENTLM_INT16=0` their
# f32 unit and `AGENTLM_ISA=avx2 AGENTLM_DENSE=0` the AVX2 int8 kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)"
paths=()
case " $flags " in *" amx_tile "*) paths+=(AGENTLM_AMX=0) ;; esac
case " $flags " in *" avx512_bf16 "*) paths+=(AGENTLM_BF16=0) ;; esac
case " $flags " in *" avx512_vnni "*) paths+=(AGENTLM_ISA=avx2) ;; esac
case " $flags " in *" avx2 "*) paths+=("AGENTLM_ISA=avx2 AGENTLM_INT16=0" "AGENTLM_ISA=avx2 AGENTLM_DENSE=0") ;; esac
if [ "${#paths[@]}" -eq 0 ]; then
    echo "this CPU has one kernel path only: nothing to rerun"
    exit 0
fi
for path in "${paths[@]}"; do
    echo "== $path"
    # shellcheck disable=SC2086 # a path may set two variables
    env $path cargo test --locked --lib -- engine::kernels model::host_train
    # shellcheck disable=SC2086
    env $path cargo test --locked --test lora -- host_path
done
