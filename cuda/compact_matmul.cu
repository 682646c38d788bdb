// Compacted products of structured dropout, fp32, row-major, reading the kept rows of the weight in place.
//
// `keep` lists the k kept units (indices into the n_units rows of `wt`, the transposed weight, n_units x n_out);
// `mult` (k values, or null for all ones) multiplies each kept unit.
//   gather_k_matmul:       out[m, o] = beta * out[m, o] + alpha * sum_j a[m, keep[j]] * mult[j] * wt[keep[j], o]
//   scatter_k_matmul_t:    da[m, keep[j]] = alpha * mult[j] * sum_o dout[m, o] * wt[keep[j], o]
//                          (other columns untouched)
//   accumulate_k_weight:   dwt[keep[j], o] += alpha * mult[j] * sum_m a[m, keep[j]] * dout[m, o]
// All the steps of a sequence in one launch, step t with kept set s = step_set[t] (`keep` and `values` are
// [sets, k], rows padded with units whose values are 0; `values` null: every kept unit is multiplied by alpha):
//   gather_k_matmul_steps:     out[t, m, o] = bias[o] + alpha * sum_j a[t, m, keep[s, j]] * values[s, j]
//                                                                 * wt[keep[s, j], o]      (bias may be null)
//   scatter_k_matmul_t_steps:  da[t, m, keep[s, j]] = alpha * values[s, j] * sum_o dout[t, m, o] * wt[keep[s, j], o]
//                              (other columns untouched)
// Tiles of TILE x TILE outputs per block; the reduction runs over TILE-wide slices staged in shared memory.
// Launch: block (TILE, TILE); grid (ceil(cols / TILE), ceil(rows / TILE)), and T along z for the _steps kernels.

#define TILE 16

// One TILE x TILE tile of a[:, keep] * mult @ wt[keep]: the thread's (row, col) sum.
__device__ float gather_tile(const float* __restrict__ a, const float* __restrict__ wt,
                             const long long* __restrict__ keep, const float* __restrict__ mult, int row, int col,
                             int M, int n_units, int n_out, int k) {
    __shared__ float sa[TILE][TILE];
    __shared__ float sw[TILE][TILE];
    float acc = 0.f;
    for (int j0 = 0; j0 < k; j0 += TILE) {
        const int ja = j0 + threadIdx.x, jw = j0 + threadIdx.y;
        sa[threadIdx.y][threadIdx.x] =
            (row < M && ja < k) ? a[(long long)row * n_units + keep[ja]] * (mult ? mult[ja] : 1.f) : 0.f;
        sw[threadIdx.y][threadIdx.x] = (jw < k && col < n_out) ? wt[keep[jw] * n_out + col] : 0.f;
        __syncthreads();
#pragma unroll
        for (int j = 0; j < TILE; ++j) acc += sa[threadIdx.y][j] * sw[j][threadIdx.x];
        __syncthreads();
    }
    return acc;
}

// One TILE x TILE tile of dout @ wt[keep]^T: the thread's (row, j-th kept unit) sum.
__device__ float scatter_tile(const float* __restrict__ dout, const float* __restrict__ wt,
                              const long long* __restrict__ keep, int row, int col, int M, int n_out, int k) {
    __shared__ float sd[TILE][TILE];
    __shared__ float sw[TILE][TILE];
    float acc = 0.f;
    const int jw = blockIdx.x * TILE + threadIdx.x;
    for (int o0 = 0; o0 < n_out; o0 += TILE) {
        const int od = o0 + threadIdx.x, ow = o0 + threadIdx.y;
        sd[threadIdx.y][threadIdx.x] = (row < M && od < n_out) ? dout[(long long)row * n_out + od] : 0.f;
        sw[threadIdx.y][threadIdx.x] = (jw < k && ow < n_out) ? wt[keep[jw] * n_out + ow] : 0.f;
        __syncthreads();
#pragma unroll
        for (int o = 0; o < TILE; ++o) acc += sd[threadIdx.y][o] * sw[o][threadIdx.x];
        __syncthreads();
    }
    return acc;
}

extern "C" __global__ void gather_k_matmul(const float* __restrict__ a, const float* __restrict__ wt,
                                           const long long* __restrict__ keep, const float* __restrict__ mult,
                                           float* __restrict__ out, int M, int n_units, int n_out, int k,
                                           float alpha, float beta) {
    const int row = blockIdx.y * TILE + threadIdx.y;  // m
    const int col = blockIdx.x * TILE + threadIdx.x;  // o
    const float acc = gather_tile(a, wt, keep, mult, row, col, M, n_units, n_out, k);
    if (row < M && col < n_out) {
        float* o = out + (long long)row * n_out + col;
        *o = (beta == 0.f ? 0.f : beta * *o) + alpha * acc;
    }
}

extern "C" __global__ void gather_k_matmul_steps(const float* __restrict__ a, const float* __restrict__ wt,
                                                 const long long* __restrict__ keep,
                                                 const float* __restrict__ values,
                                                 const long long* __restrict__ step_set,
                                                 const float* __restrict__ bias, float* __restrict__ out, int M,
                                                 int n_units, int n_out, int k, float alpha) {
    const long long t = blockIdx.z, s = step_set[t];
    const int row = blockIdx.y * TILE + threadIdx.y;  // m
    const int col = blockIdx.x * TILE + threadIdx.x;  // o
    const float acc = gather_tile(a + t * M * n_units, wt, keep + s * k, values ? values + s * k : nullptr, row,
                                  col, M, n_units, n_out, k);
    if (row < M && col < n_out) out[(t * M + row) * n_out + col] = (bias ? bias[col] : 0.f) + alpha * acc;
}

extern "C" __global__ void scatter_k_matmul_t(const float* __restrict__ dout, const float* __restrict__ wt,
                                              const long long* __restrict__ keep, const float* __restrict__ mult,
                                              float* __restrict__ da, int M, int n_units, int n_out, int k,
                                              float alpha) {
    const int row = blockIdx.y * TILE + threadIdx.y;  // m
    const int col = blockIdx.x * TILE + threadIdx.x;  // j: the col-th kept unit
    const float acc = scatter_tile(dout, wt, keep, row, col, M, n_out, k);
    if (row < M && col < k) da[(long long)row * n_units + keep[col]] = alpha * (mult ? mult[col] : 1.f) * acc;
}

extern "C" __global__ void scatter_k_matmul_t_steps(const float* __restrict__ dout, const float* __restrict__ wt,
                                                    const long long* __restrict__ keep,
                                                    const float* __restrict__ values,
                                                    const long long* __restrict__ step_set, float* __restrict__ da,
                                                    int M, int n_units, int n_out, int k, float alpha) {
    const long long t = blockIdx.z, s = step_set[t];
    const int row = blockIdx.y * TILE + threadIdx.y;  // m
    const int col = blockIdx.x * TILE + threadIdx.x;  // j: the col-th kept unit of set s
    const float acc = scatter_tile(dout + t * M * n_out, wt, keep + s * k, row, col, M, n_out, k);
    if (row < M && col < k)
        da[(t * M + row) * n_units + keep[s * k + col]] = alpha * (values ? values[s * k + col] : 1.f) * acc;
}

extern "C" __global__ void accumulate_k_weight(const float* __restrict__ a, const float* __restrict__ dout,
                                               const long long* __restrict__ keep, const float* __restrict__ mult,
                                               float* __restrict__ dwt, int M, int n_units, int n_out, int k,
                                               float alpha) {
    __shared__ float sa[TILE][TILE];
    __shared__ float sd[TILE][TILE];
    const int row = blockIdx.y * TILE + threadIdx.y;  // j: the row-th kept unit
    const int col = blockIdx.x * TILE + threadIdx.x;  // o
    float acc = 0.f;
    for (int m0 = 0; m0 < M; m0 += TILE) {
        const int ma = m0 + threadIdx.x, md = m0 + threadIdx.y;
        const int ja = blockIdx.y * TILE + threadIdx.y;
        sa[threadIdx.y][threadIdx.x] = (ja < k && ma < M) ? a[(long long)ma * n_units + keep[ja]] : 0.f;
        sd[threadIdx.y][threadIdx.x] = (md < M && col < n_out) ? dout[(long long)md * n_out + col] : 0.f;
        __syncthreads();
#pragma unroll
        for (int m = 0; m < TILE; ++m) acc += sa[threadIdx.y][m] * sd[m][threadIdx.x];
        __syncthreads();
    }
    if (row < k && col < n_out) dwt[keep[row] * n_out + col] += alpha * (mult ? mult[row] : 1.f) * acc;
}
