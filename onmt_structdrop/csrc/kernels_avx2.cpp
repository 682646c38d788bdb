// The kernels built for avx2 (see kernels_impl.h).
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <utility>
#if defined(__x86_64__)
#pragma GCC target("avx2,fma")
#define STRUCTDROP_ISA avx2
#define STRUCTDROP_VBYTES 32
#define NN_MR 6
#define NN_NV 2
#define NT_JR 4
#define NT_MR 2
#define TN_JR 6
#define TN_NV 2
#include "kernels_impl.h"
#endif
