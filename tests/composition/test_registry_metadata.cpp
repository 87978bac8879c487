// Registry matrix: metadata (see registry_matrix.h).
#include "composition/registry_matrix.h"
