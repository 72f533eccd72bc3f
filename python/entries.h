// Direct Python entries into the public ops (entries.cpp).
#pragma once

#include <torch/extension.h>

namespace maskops {

void bind_entries(pybind11::module& m);

}  // namespace maskops
