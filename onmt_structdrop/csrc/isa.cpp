// The instruction set the kernels run with, chosen once from what the CPU supports (ONMT_STRUCTDROP_ISA may ask
// for less), and the kernels built for it.
#include <cstdlib>

#include "engine.h"

namespace structdrop {
namespace {

// name if this CPU runs the kernels built for it; a clear error otherwise (never an illegal instruction)
std::string checked_isa(const std::string& name, const char* source) {
  TORCH_CHECK(name == "avx512" || name == "avx2" || name == "base", source,
              ": the instruction set must be avx512, avx2 or base; got ", name);
#if defined(__x86_64__)
  __builtin_cpu_init();
  TORCH_CHECK(name != "avx512" || (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                                   __builtin_cpu_supports("avx512dq")),
              source, ": this CPU has no AVX-512 (F, VL, DQ)");
  TORCH_CHECK(name != "avx2" || (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")), source,
              ": this CPU has no AVX2 and FMA");
#else
  TORCH_CHECK(name == "base", source, ": only the portable kernels are built for this CPU");
#endif
  return name;
}

std::string best_isa() {
  for (const char* name : {"avx512", "avx2"}) {
    try {
      return checked_isa(name, "");
    } catch (const c10::Error&) {
    }
  }
  return "base";
}

}  // namespace

std::string& isa_name() {
  static std::string name = [] {
    const char* forced = std::getenv("ONMT_STRUCTDROP_ISA");
    return forced && *forced ? checked_isa(forced, "ONMT_STRUCTDROP_ISA") : best_isa();
  }();
  return name;
}

template <typename T>
Kernels<T> kernels() {
#if defined(__x86_64__)
  if (isa_name() == "avx512") return avx512::kernels<T>();
  if (isa_name() == "avx2") return avx2::kernels<T>();
#endif
  return base::kernels<T>();
}

void set_isa(const std::string& name) { isa_name() = checked_isa(name, "set_isa"); }

template Kernels<float> kernels<float>();
template Kernels<double> kernels<double>();

}  // namespace structdrop
