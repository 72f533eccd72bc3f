// Where the Python backends are reached (python_backends.cpp).
#pragma once

#include <torch/extension.h>

namespace maskops {

// Calls of the torch and triton backends go to `function` (maskops.backends.bridge.run).
void set_python_bridge(pybind11::object function);

}  // namespace maskops
