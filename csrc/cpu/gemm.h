// The dense matrix product the linear drivers are built on, passed in by the caller:
// the binding layer passes the BLAS of its framework; `simple_gemm` is the portable one.
#pragma once

#include <cstdint>

namespace maskops::cpu {

// C (m x n, ldc) = op(A) op(B) + beta C, all row-major.  op(A) is m x k: A itself (lda >= k)
// or, with trans_a, the transpose of a k x m A (lda >= m).  Likewise B.  beta 0 overwrites C
// (it may hold garbage).  Must be safe to call from several threads at once.
template <class T>
using Gemm = void (*)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a,
                      int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

template <class T>
void simple_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a,
                 int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

}  // namespace maskops::cpu
