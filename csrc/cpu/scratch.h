// Per-thread scratch memory that survives across calls, so hot loops do not allocate.
#pragma once

#include <cstdint>
#include <vector>

namespace maskops::cpu {

// Scratch starts on a cache line, as BLAS and the vector loops want their operands.
constexpr int64_t kScratchAlign = 64;

// At least `count` elements, private to the calling thread, valid until its next call.
template <class T>
T* thread_scratch(int64_t count) {
  static_assert(kScratchAlign % sizeof(T) == 0, "elements that tile a cache line");
  thread_local std::vector<T> buffer;
  constexpr int64_t pad = kScratchAlign / sizeof(T);
  if (int64_t(buffer.size()) < count + pad) buffer.resize(count + pad);
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  return buffer.data() + (kScratchAlign - address % kScratchAlign) % kScratchAlign / sizeof(T);
}

}  // namespace maskops::cpu
