// The kernels built for avx512 (see kernels_impl.h).
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <utility>
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#define STRUCTDROP_ISA avx512
#define STRUCTDROP_VBYTES 64
#define NN_MR 6
#define NN_NV 4
#define NT_JR 4
#define NT_MR 5
#define TN_JR 6
#define TN_NV 4
#include "kernels_impl.h"
#endif
