#pragma once
#include "rust/cxx.h"

#include <cstdint>

namespace agentlm {
namespace bridge_test {
// Exercises the bridge from C++; returns the number of failed checks.
int32_t run_bridge_test(rust::Str model_path);
}  // namespace bridge_test
}  // namespace agentlm
