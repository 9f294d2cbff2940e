// The launcher's world: MPI when built with it (MPI_Init_thread on first use),
// otherwise the local one-rank communicator.
#include <memory>
#include <string>

#include "kumiko/comm/communicator.h"
#include "kumiko/comm/watchdog.h"
#include "kumiko/core/log.h"

#ifdef KUMIKO_WITH_MPI
#include <mpi.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // Open MPI's extensions: MPIX_Query_cuda_support
#endif

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

bool mpi_cuda_aware() {
#if defined(KUMIKO_WITH_MPI) && defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
#endif
}

bool mpi_thread_multiple() {
#ifdef KUMIKO_WITH_MPI
  int initialized = 0, level = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return false;
  MPI_Query_thread(&level);
  return level >= MPI_THREAD_MULTIPLE;
#else
  return false;
#endif
}

std::string mpi_library_version() {
#ifdef KUMIKO_WITH_MPI
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  std::string v(version, len);
  return v.substr(0, v.find_first_of(",\n"));
#else
  return "none (built with KUMIKO_MPI=OFF)";
#endif
}

Communicator& world() {
  if (g_world) return *g_world;
#ifdef KUMIKO_WITH_MPI
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // The watchdog's thread calls MPI_Abort while the main thread may be inside MPI.
    const int want = MPI_THREAD_MULTIPLE;  // the watchdog thread may call MPI_Abort
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, want, &provided), "MPI_Init_thread");
    if (provided < want)
      log::get("comm")->warn("the MPI library provides thread level {} < MPI_THREAD_MULTIPLE ({}): the "
                             "watchdog's MPI_Abort may not end the other ranks (it still exits this one)",
                             provided, want);
  }
  MPI_Comm w = MPI_COMM_WORLD;
  g_world = std::make_unique<MpiCommunicator>(&w, false, "world");
  Watchdog::set_rank(g_world->world_rank());
  Watchdog::add_handler([] { MPI_Abort(MPI_COMM_WORLD, kWatchdogExitCode); });
#else
  g_world = make_local();
#endif
  return *g_world;
}

void finalize_world() {
  Watchdog::stop();
#ifdef KUMIKO_WITH_MPI
  if (!g_world) return;
  g_world.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
#endif
  g_world.reset();
}

size_t dtype_bytes(DType t) {
  switch (t) {
    case DType::bf16: return 2;
    case DType::f32:
    case DType::i32: return 4;
    case DType::f64:
    case DType::i64: return 8;
  }
  return 8;
}

}  // namespace kumiko::comm
