// Masked products of a whole sequence (the output layer): every step's product on its kept inputs, blocked over
// the weight's columns, and their gradients.
#include "engine.h"

namespace structdrop {
namespace {

// out[t] = (a[t][:, K_t] * mult) @ wt[K_t] + bias, a [T, B, n], wt [n, N] (see as_stored); returns out and the
// gathered inputs [T, B, k] for the backward
template <typename T>
std::vector<Tensor> sequence_forward(const Tensor& a, const Tensor& wt, const MaskView<T>& mask,
                                     const c10::optional<Tensor>& bias) {
  const Kernels<T> K = kernels<T>();
  const int64_t T_ = a.size(0), B = a.size(1), n = wt.size(0), N = wt.size(1);
  const Stored<T> w_in = stored<T>(wt);
  constexpr int64_t L = 64 / sizeof(T);  // the widest vector: a block's width is padded to a multiple of it
  Tensor out = at::empty({T_, B, N}, a.options());  // written once by the products, never zeroed
  Tensor init = bias && bias->defined() ? bias->contiguous() : zeros({N}, a.options());
  Tensor ak = gather_steps(a, mask);
  const T *akp = ak.data_ptr<T>(), *ip = init.data_ptr<T>();
  T* op = out.data_ptr<T>();
  for_each_column_block(N, [&](int64_t c0, int64_t c1) {
    // the block's columns of every weight row, packed into per-thread scratch (n x wpad, aligned to whole cache
    // lines): the steps' kept rows are then read from one compact block instead of scattered rows of a wide
    // matrix; the last, narrower block runs in whole vectors too, into a local tile that is then copied out
    const int64_t w = c1 - c0, wpad = (w + L - 1) / L * L;
    const bool narrow = w < wpad;
    Tensor block = scratch(9, {n + 1 + (narrow ? B : 0), wpad}, a.options(), narrow);
    T *packed = block.data_ptr<T>(), *row = packed + n * wpad, *tile = row + wpad;
    w_in.read(K, c0, w, packed, wpad);
    std::copy_n(ip + c0, w, row);
    for (int64_t t = 0; t < T_; ++t) {
      K.kept_nn(B, mask.k, akp + t * B * mask.k, mask.k, mask.units(t), packed, wpad,
                narrow ? tile : op + t * B * N + c0, narrow ? wpad : N, 0, wpad, row);
      if (narrow)
        for (int64_t m = 0; m < B; ++m) std::copy_n(tile + m * wpad, w, op + (t * B + m) * N + c0);
    }
  });
  return {out, ak};
}

// Its gradients from the forward's gathered inputs ak: da (or undefined), dwt stored as wt is, and the bias's (or
// undefined). The bias's sums run in the weight gradient's sweep over dout, on the block each step has just read.
template <typename T>
std::vector<Tensor> sequence_backward(const Tensor& ak, const Tensor& wt, const MaskView<T>& mask, const Tensor& dout,
                                      int64_t n, bool need_input_grad, bool need_bias_grad) {
  const Kernels<T> K = kernels<T>();
  const int64_t T_ = ak.size(0), B = ak.size(1), N = wt.size(1);
  Tensor dwt = empty_like_stored(wt), db = need_bias_grad ? at::empty({N}, ak.options()) : Tensor();
  const Stored<T> dw_out = stored<T>(dwt);
  const Tensor akt = transposed_steps(K, ak, 3);
  const T *aktp = akt.data_ptr<T>(), *dp = dout.data_ptr<T>();
  T* dbp = need_bias_grad ? db.data_ptr<T>() : nullptr;
  for_each_column_block(N, [&](int64_t c0, int64_t c1) {
    // the block's gradient is summed over the steps in per-thread scratch (it stays in L2), then written out once
    const int64_t w = c1 - c0;
    T* block = scratch(10, {n, w}, ak.options(), true).template data_ptr<T>();
    if (dbp) std::fill_n(dbp + c0, w, T(0));
    for (int64_t t = 0; t < T_; ++t) {
      const T* d = dp + t * B * N + c0;
      K.kept_tn(B, mask.k, aktp + t * B * mask.k, B, mask.units(t), d, N, block, w, 0, w);
      if (dbp) K.column_sums(B, w, d, N, dbp + c0);
    }
    dw_out.write(K, c0, w, block, w);
  });
  Tensor da = need_input_grad ? input_gradients(K, dp, stored<T>(wt), mask, T_, B, ak.options()) : Tensor();
  return {da, dwt, db};
}

}  // namespace

// ---- the entry points: dtype dispatch ----------------------------------------------------------------------
std::vector<Tensor> sequence_product(const Tensor& a, const Tensor& wt, const MaskArgs& mask,
                                     const c10::optional<Tensor>& bias) {
  return AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "sequence_product", [&] {
    return sequence_forward<scalar_t>(a.contiguous(), as_stored(wt), view<scalar_t>(mask), bias);
  });
}

Tensor gathered(const Tensor& a, const MaskArgs& mask) {
  return AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "gathered", [&] {
    return gather_steps<scalar_t>(a.contiguous(), view<scalar_t>(mask));
  });
}

std::vector<Tensor> sequence_gradients(const Tensor& ak, const Tensor& wt, const MaskArgs& mask, const Tensor& dout,
                                       int64_t n, bool need_input_grad, bool need_bias_grad) {
  return AT_DISPATCH_FLOATING_TYPES(ak.scalar_type(), "sequence_backward", [&] {
    return sequence_backward<scalar_t>(ak, as_stored(wt), view<scalar_t>(mask), dout.contiguous(), n,
                                       need_input_grad, need_bias_grad);
  });
}

}  // namespace structdrop
