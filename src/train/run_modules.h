// Internal: the modules of a run around one backbone — which run inside a composition,
// which are on for a task's batches, and the routing ids of a batch's rows. Shared by the
// trainer and evaluation (evaluate.h), so that both run a task's batches the same way.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "modula/composition/apply_spec.h"
#include "modula/modules/adapter.h"
#include "modula/routing/router.h"
#include "modula/train/config.h"
#include "modula/train/data.h"
#include "task_runtime.h"

namespace modula::train::detail {

// Records the members of `a` when it is a MODULA_FUSION or MODULA_COMPOSITION: they run
// inside it (`composed`, never switched per task) and those under a fusion stay frozen
// (`fused`).
void note_members(const Adapter& a, std::set<std::string>& composed, std::set<std::string>& fused);

// Turns on the adapters a task names (all when `enabled` is null or empty) and returns the
// input modules to apply: the enabled adapters', then the composition's. Members of a
// composition are left as the composition set them (switching them on would run them twice).
InputModules activate_modules(std::vector<Adapter>& adapters, const std::set<std::string>& composed,
                              const std::vector<std::string>* enabled, const Composition* composition);

// Every row of a batch of task `ti` carries the task's index ("task": route(task, ...),
// modules with routing_key task) and its id of each metadata field (key: the field name),
// set in `context` and, when not null, in `also` (a composition's own context).
void route_batch(RoutingContext& context, RoutingContext* also, const std::vector<MetadataField>& metadata, size_t ti,
                 const Batch& b, const torch::Device& device);

}  // namespace modula::train::detail
