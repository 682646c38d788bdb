// The kernels built for base (see kernels_impl.h).
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <utility>
#define STRUCTDROP_ISA base
#define STRUCTDROP_VBYTES 16
#define NN_MR 4
#define NN_NV 2
#define NT_JR 4
#define NT_MR 2
#define TN_JR 4
#define TN_NV 2
#include "kernels_impl.h"
