// The LSTM cell's pointwise work for one step, fused (gate order i, f, g, o; the cell state is never dropped).
//   lstm_pointwise_forward:  act = [sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)] of `gates` (B x 4H, in place),
//                            c = f * c_prev + i * g,  tanh_c = tanh(c),  h = o * tanh_c
//   lstm_pointwise_backward: from dh, dc (either may be null) to dgates (B x 4H) and dc_prev (which may be dc:
//                            each thread reads its element of dc before it writes that of dc_prev)
// One thread per (row, unit); launch with at least B * H threads.

extern "C" __global__ void lstm_pointwise_forward(float* __restrict__ gates, const float* __restrict__ c_prev,
                                                  float* __restrict__ c, float* __restrict__ tanh_c,
                                                  float* __restrict__ h, int B, int H) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)B * H) return;
    const long long b = idx / H, u = idx % H;
    float* g = gates + b * 4 * H;
    const float i = 1.f / (1.f + expf(-g[u]));
    const float f = 1.f / (1.f + expf(-g[H + u]));
    const float gg = tanhf(g[2 * H + u]);
    const float o = 1.f / (1.f + expf(-g[3 * H + u]));
    g[u] = i; g[H + u] = f; g[2 * H + u] = gg; g[3 * H + u] = o;
    const float cc = f * c_prev[idx] + i * gg;
    const float tc = tanhf(cc);
    c[idx] = cc; tanh_c[idx] = tc; h[idx] = o * tc;
}

extern "C" __global__ void lstm_pointwise_backward(const float* __restrict__ act, const float* __restrict__ c_prev,
                                                   const float* __restrict__ tanh_c, const float* __restrict__ dh,
                                                   const float* dc, float* __restrict__ dgates, float* dc_prev,
                                                   int B, int H) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)B * H) return;
    const long long b = idx / H, u = idx % H;
    const float* s = act + b * 4 * H;
    const float i = s[u], f = s[H + u], g = s[2 * H + u], o = s[3 * H + u];
    const float tc = tanh_c[idx];
    const float dh_v = dh ? dh[idx] : 0.f;
    const float dc_v = (dc ? dc[idx] : 0.f) + dh_v * o * (1.f - tc * tc);
    float* d = dgates + b * 4 * H;
    d[u] = dc_v * g * i * (1.f - i);
    d[H + u] = dc_v * c_prev[idx] * f * (1.f - f);
    d[2 * H + u] = dc_v * i * (1.f - g * g);
    d[3 * H + u] = dh_v * tc * o * (1.f - o);
    dc_prev[idx] = dc_v * f;
}
