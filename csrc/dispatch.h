// Dtype dispatch shared by the CPU kernels that take float32, bfloat16 and float16 (computed in float32).
#pragma once

#include <ATen/Dispatch.h>

// AT_DISPATCH over exactly the dtypes these kernels check for: no float64 instantiation.
#define FASTMMA_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)                      \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace fastmma {

// Whether `dtype` is one the FASTMMA_DISPATCH_FLOAT_TYPES kernels take.
inline bool is_kernel_float_type(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
}

}  // namespace fastmma
