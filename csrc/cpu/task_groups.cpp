#include "task_groups.h"

#include <array>
#include <cstring>
#include <stdexcept>
#include <string>

namespace maskops::cpu {

constexpr int kMaxTask = 255;

TaskGroups group_by_task(const int32_t* row_task, int64_t rows, int task) {
  TaskGroups out;
  if (row_task == nullptr) {
    out.groups.push_back({unsigned(task), 0, rows});
    return out;
  }
  std::array<int64_t, kMaxTask + 2> start{};
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t t = row_task[i];
    if (t < 1 || t > kMaxTask)
      throw std::invalid_argument("row task " + std::to_string(t) + " is outside 1.." +
                              std::to_string(kMaxTask));
    ++start[t + 1];
  }
  for (int t = 1; t <= kMaxTask; ++t) {
    if (start[t + 1]) out.groups.push_back({unsigned(t), start[t], start[t] + start[t + 1]});
    start[t + 1] += start[t];
  }
  if (out.groups.size() <= 1) {
    if (out.groups.empty()) out.groups.push_back({unsigned(task), 0, 0});
    return out;
  }
  out.order.resize(rows);
  for (int64_t i = 0; i < rows; ++i) out.order[start[row_task[i]]++] = i;
  return out;
}

template <class T>
void gather_rows(const T* src, int64_t lds, const std::vector<int64_t>& order, int64_t cols,
                 T* dst, int64_t ldd) {
  const int64_t rows = int64_t(order.size());
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
  for (int64_t i = 0; i < rows; ++i)
    std::memcpy(dst + i * ldd, src + order[i] * lds, sizeof(T) * cols);
}

template void gather_rows<float>(const float*, int64_t, const std::vector<int64_t>&, int64_t,
                                 float*, int64_t);
template void gather_rows<double>(const double*, int64_t, const std::vector<int64_t>&, int64_t,
                                  double*, int64_t);

}  // namespace maskops::cpu
