// Placeholder until the quantized kernels land (replaced by native/src/cpu/quant.cpp proper).
#include "../common.h"
namespace weft {
float quantElement(const void*, DType d, size_t) { throw WeftError(Err::UnsupportedDtype, std::string(dtypeName(d)) + " is not supported yet"); }
}
