// Registry matrix: moe_ffn (see registry_matrix.h).
#include "composition/registry_matrix.h"
