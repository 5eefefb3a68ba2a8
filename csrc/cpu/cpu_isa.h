// Which instruction set the float kernels run with, and the macro that compiles them for each.
//
// The row passes and the packed GEMM are compiled three times, for AVX-512 (x86-64-v4), for
// AVX2 + FMA (x86-64-v3) and for any x86-64, and one is picked at run time: the gate maths
// vectorises 8-wide only with AVX2, and with AVX-512's 32 registers its constants stop spilling
// (LSTM gate pass 14.1 -> 9.6 us per step of 32 x 128 units on Zen 4; the whole forward op ~8%
// faster at B = 32, H = 256). FUSED_RNN_CPU_ISA=avx2 or =baseline caps the choice, so that the
// tests run every variant on one machine (tests/test_cpu_isa.py).
#pragma once

namespace fused_rnn::cpu {

enum class CpuIsa { kBaseline, kAvx2, kAvx512 };

// The best variant this CPU runs, capped by FUSED_RNN_CPU_ISA; decided once.
CpuIsa cpu_isa();

// "avx512", "avx2" or "baseline"
const char* cpu_isa_name();

}  // namespace fused_rnn::cpu

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define FUSED_RNN_CPU_MULTI_ISA 1
#else
#define FUSED_RNN_CPU_MULTI_ISA 0
#endif

// Defines `void name params` running the statement __VA_ARGS__ (with the parameters `args`)
// compiled for each ISA. The statement should call always_inline code, which is then compiled
// anew in each variant.
#if FUSED_RNN_CPU_MULTI_ISA
#define FUSED_RNN_CPU_ISA_VARIANTS(name, params, args, ...)                     \
  __attribute__((target("arch=x86-64-v4"))) void name##_avx512 params {         \
    __VA_ARGS__;                                                                \
  }                                                                             \
  __attribute__((target("arch=x86-64-v3"))) void name##_avx2 params {           \
    __VA_ARGS__;                                                                \
  }                                                                             \
  void name##_baseline params { __VA_ARGS__; }                                  \
  void name params {                                                            \
    switch (::fused_rnn::cpu::cpu_isa()) {                                      \
      case ::fused_rnn::cpu::CpuIsa::kAvx512: return name##_avx512 args;        \
      case ::fused_rnn::cpu::CpuIsa::kAvx2: return name##_avx2 args;            \
      default: return name##_baseline args;                                     \
    }                                                                           \
  }
#else
#define FUSED_RNN_CPU_ISA_VARIANTS(name, params, args, ...) \
  void name params { __VA_ARGS__; }
#endif
