// Registry matrix: compose (see registry_matrix.h).
#include "composition/registry_matrix.h"
