# kumiko_add_test(NAME <name> SOURCES <files...> LIBS <targets...>
#                 LABELS <unit|mpi|gpu|slow|...> [NP <ranks>] [TIMEOUT <s>])
# Registers one GoogleTest executable with ctest. With NP, the test runs under
# mpirun with that many ranks (oversubscribed, root allowed: tests are tiny).
find_package(GTest REQUIRED)
include(GoogleTest)

function(kumiko_add_test)
  cmake_parse_arguments(T "" "NAME;NP;TIMEOUT" "SOURCES;LIBS;LABELS;ARGS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest kumiko::warnings)
  if(NOT T_SOURCES MATCHES "main")
    target_link_libraries(${T_NAME} PRIVATE GTest::gtest_main)
  endif()
  target_compile_definitions(${T_NAME} PRIVATE
    KUMIKO_SOURCE_DIR="${CMAKE_SOURCE_DIR}" KUMIKO_BINARY_DIR="${CMAKE_BINARY_DIR}")
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  if(T_NP)
    add_test(NAME ${T_NAME}
      COMMAND ${MPIEXEC_EXECUTABLE} --oversubscribe --allow-run-as-root
              ${MPIEXEC_NUMPROC_FLAG} ${T_NP} $<TARGET_FILE:${T_NAME}> ${T_ARGS})
    set_tests_properties(${T_NAME} PROPERTIES ENVIRONMENT
      "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMP_NUM_THREADS=1")
  else()
    add_test(NAME ${T_NAME} COMMAND ${T_NAME} ${T_ARGS})
  endif()
  set_tests_properties(${T_NAME} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
    WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
endfunction()
