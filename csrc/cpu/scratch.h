// Per-thread scratch memory that survives across calls, so hot loops do not allocate.
#pragma once

#include <cstdint>
#include <vector>

namespace maskops::cpu {

// At least `count` elements, private to the calling thread, valid until its next call.
template <class T>
T* thread_scratch(int64_t count) {
  thread_local std::vector<T> buffer;
  if (int64_t(buffer.size()) < count) buffer.resize(count);
  return buffer.data();
}

}  // namespace maskops::cpu
