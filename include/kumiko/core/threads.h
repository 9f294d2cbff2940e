#pragma once
// OpenMP thread counts that do not need the communicator: OMP_NUM_THREADS, and the
// rule kumiko plan uses for a node it is not running on. The trainer measures each
// rank's real share of its CPUs (train/threads.h).

namespace kumiko {

// OMP_NUM_THREADS's first number (nested lists: the outer level); 0 when unset. A
// value that is not a positive integer is a UserError naming it.
int omp_num_threads_env();

// The threads of one of `ranks` ranks sharing `cpus` CPUs: `configured` when > 0,
// else OMP_NUM_THREADS when set, else cpus / ranks (at least 1).
int planned_threads(int configured, int cpus, int ranks);

}  // namespace kumiko
