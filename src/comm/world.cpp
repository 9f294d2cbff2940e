// The launcher's world: MPI when built with it (MPI_Init_thread on first use),
// otherwise the local one-rank communicator.
#include <memory>

#include "kumiko/comm/communicator.h"

#ifdef KUMIKO_WITH_MPI
#include <mpi.h>

#include "mpi_communicator.h"
#endif

namespace kumiko::comm {
namespace {
std::unique_ptr<Communicator> g_world;
}

bool mpi_available() {
#ifdef KUMIKO_WITH_MPI
  return true;
#else
  return false;
#endif
}

Communicator& world() {
  if (g_world) return *g_world;
#ifdef KUMIKO_WITH_MPI
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  }
  MPI_Comm w = MPI_COMM_WORLD;
  g_world = std::make_unique<MpiCommunicator>(&w, false, "world");
#else
  g_world = make_local();
#endif
  return *g_world;
}

void finalize_world() {
#ifdef KUMIKO_WITH_MPI
  if (!g_world) return;
  g_world.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
#endif
  g_world.reset();
}

}  // namespace kumiko::comm
