// Rows (linear) or images (conv) grouped by task, so each group runs with one selection.
#pragma once

#include <cstdint>
#include <vector>

namespace maskops::cpu {

struct TaskGroup {
  unsigned task;
  int64_t begin, end;  // positions in the grouped order
  int64_t size() const { return end - begin; }
};

struct TaskGroups {
  std::vector<TaskGroup> groups;
  std::vector<int64_t> order;  // order[i]: original row at grouped position i; empty: identity
  bool reordered() const { return !order.empty(); }
  int64_t row(int64_t i) const { return reordered() ? order[i] : i; }
};

// Stable counting sort of `rows` rows by row_task (values 1..255; throws std::invalid_argument
// otherwise).  With row_task null, or one task for every row, there is one group and no
// reordering.
TaskGroups group_by_task(const int32_t* row_task, int64_t rows, int task);

// dst[i, :] = src[order[i], :] for i < order.size(); rows of `cols` elements.
template <class T>
void gather_rows(const T* src, int64_t lds, const std::vector<int64_t>& order, int64_t cols,
                 T* dst, int64_t ldd);

}  // namespace maskops::cpu
