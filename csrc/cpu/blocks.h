// Which blocks of a weight a task can see at all: the few-row kernels visit only those, so a
// task that owns a quarter of a layer's blocks reads about a quarter of its weight.
#pragma once

#include <cstdint>
#include <vector>

#include "few_rows.h"

namespace maskops::cpu {

// The block grid the kernels skip at: 32 weight rows (output features) by 64 columns.
constexpr int64_t kBlockRows = 32;
constexpr int64_t kBlockCols = 64;

inline int64_t block_grid(int64_t size, int64_t block) { return (size + block - 1) / block; }

// What a task sees of a block.
enum BlockVisibility : uint8_t { kHidden = 0, kPartial = 1, kFull = 2 };

// visible[br * block_grid(K, kBlockCols) + bc]: how much of block (br, bc) of an (N, K) owner
// map is visible to `task` (0 < owner <= task).
void visible_blocks(const uint8_t* owner, int64_t N, int64_t K, unsigned task, uint8_t* visible);

// The maps of the tasks a call runs, by task id (null: no map, visit everything).
struct BlockMaps {
  std::vector<const uint8_t*> by_task;
  const uint8_t* of(unsigned task) const { return task < by_task.size() ? by_task[task] : nullptr; }
};

// The K ranges a block row visits: runs of fully and of partly visible blocks, each run
// merged, clipped to K.
std::vector<KRange> visible_ranges(const uint8_t* block_row, int64_t K);

}  // namespace maskops::cpu
