#include "cpu/cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace fused_rnn::cpu {
namespace {

CpuIsa detected_isa() {
#if FUSED_RNN_CPU_MULTI_ISA
  __builtin_cpu_init();
#if __GNUC__ >= 12
  if (__builtin_cpu_supports("x86-64-v4")) return CpuIsa::kAvx512;
  if (__builtin_cpu_supports("x86-64-v3")) return CpuIsa::kAvx2;
#else
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi2");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    return CpuIsa::kAvx512;
  }
  if (avx2) return CpuIsa::kAvx2;
#endif
#endif
  return CpuIsa::kBaseline;
}

CpuIsa chosen_isa() {
  const CpuIsa detected = detected_isa();
  const char* env = std::getenv("FUSED_RNN_CPU_ISA");
  if (env == nullptr || *env == '\0') return detected;
  const std::string cap(env);
  CpuIsa limit;
  if (cap == "avx512") {
    limit = CpuIsa::kAvx512;
  } else if (cap == "avx2") {
    limit = CpuIsa::kAvx2;
  } else if (cap == "baseline") {
    limit = CpuIsa::kBaseline;
  } else {
    TORCH_CHECK(false, "FUSED_RNN_CPU_ISA must be avx512, avx2 or baseline, got '", cap, "'");
  }
  return static_cast<int>(limit) < static_cast<int>(detected) ? limit : detected;
}

}  // namespace

CpuIsa cpu_isa() {
  static const CpuIsa isa = chosen_isa();
  return isa;
}

const char* cpu_isa_name() {
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace fused_rnn::cpu
