# The one helper that registers every test with ctest.
#
#   kumiko_add_test(NAME <name> SOURCES <files...> LIBS <targets...>
#                   LABELS <unit|mpi|gpu|slow|...> [NP <ranks...>] [TIMEOUT <s>] [ARGS ...])
#     builds one GoogleTest executable. Without NP every GoogleTest case is its own
#     ctest entry (<name>.<Suite>.<Case>; a GTEST_SKIP shows as skipped). With NP the
#     binary runs under mpirun once per listed rank count (oversubscribed, root
#     allowed: tests are tiny), one ctest entry per count; its main()
#     (testing::mpi_test_main) exits 77 when every case skipped, which ctest reports
#     as skipped. A source whose name contains "main" provides its own main();
#     otherwise gtest_main is linked.
#
#   kumiko_add_test(NAME <name> SCRIPT <file.sh> ARGS <...> LABELS <...> [TIMEOUT <s>])
#     registers a bash script (integration tests of the kumiko binary); generator
#     expressions such as $<TARGET_FILE:kumiko> may appear in ARGS. With KUMIKO_MPI
#     the Open MPI root variables are set for it. A script that cannot run here prints
#     "SKIP: why" and exits 77: ctest reports it as skipped, not passed.
find_package(GTest REQUIRED)
include(GoogleTest)

set(KUMIKO_TEST_MPI_ENV "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMP_NUM_THREADS=1")

function(kumiko_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT;SCRIPT" "SOURCES;LIBS;LABELS;ARGS;NP" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  # An instrumented build (KUMIKO_SANITIZE) runs several times slower: its limits are
  # scaled, since every test sets its own and ctest --timeout only fills in missing ones.
  if(KUMIKO_SANITIZE)
    math(EXPR T_TIMEOUT "${T_TIMEOUT} * 4")
  endif()
  if(T_SCRIPT)
    add_test(NAME ${T_NAME} COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/${T_SCRIPT} ${T_ARGS})
    set_tests_properties(${T_NAME} PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
      WORKING_DIRECTORY ${CMAKE_BINARY_DIR} ENVIRONMENT "${KUMIKO_TEST_MPI_ENV}" SKIP_RETURN_CODE 77)
    return()
  endif()
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest kumiko::warnings)
  set(_has_main FALSE)
  foreach(_src ${T_SOURCES})
    get_filename_component(_base ${_src} NAME)
    if(_base MATCHES "main")
      set(_has_main TRUE)
    endif()
  endforeach()
  if(NOT _has_main)
    target_link_libraries(${T_NAME} PRIVATE GTest::gtest_main)
  endif()
  target_include_directories(${T_NAME} PRIVATE ${CMAKE_SOURCE_DIR}/tests/support)
  target_compile_definitions(${T_NAME} PRIVATE
    KUMIKO_SOURCE_DIR="${CMAKE_SOURCE_DIR}" KUMIKO_BINARY_DIR="${CMAKE_BINARY_DIR}")
  if(T_NP)
    # One ctest entry per rank count: <name> for the first, <name>_np<n> for the others.
    list(GET T_NP 0 _first)
    foreach(_np ${T_NP})
      set(_test ${T_NAME})
      if(NOT _np EQUAL _first)
        set(_test ${T_NAME}_np${_np})
      endif()
      add_test(NAME ${_test}
        COMMAND ${MPIEXEC_EXECUTABLE} --oversubscribe ${MPIEXEC_NUMPROC_FLAG} ${_np}
                $<TARGET_FILE:${T_NAME}> ${T_ARGS})
      set_tests_properties(${_test} PROPERTIES ENVIRONMENT "${KUMIKO_TEST_MPI_ENV}" LABELS "${T_LABELS}"
        TIMEOUT ${T_TIMEOUT} WORKING_DIRECTORY ${CMAKE_BINARY_DIR} SKIP_RETURN_CODE 77)
    endforeach()
  else()
    # One ctest entry per GoogleTest case (<name>.<Suite>.<Case>), so a case that
    # calls GTEST_SKIP (no GPU here) is reported by ctest as skipped, not passed.
    # gtest_discover_tests (CMake 3.25) splits a list-valued property, so several labels
    # travel as one joined label, "unit-grad": ctest -L takes a regular expression, so
    # -L unit and -L grad both select these cases (an anchored -LE '^io$' would miss a
    # one-process test labelled "mpi io": it carries "mpi-io").
    string(JOIN "-" _label ${T_LABELS})
    gtest_discover_tests(${T_NAME} TEST_PREFIX "${T_NAME}." EXTRA_ARGS ${T_ARGS}
      DISCOVERY_MODE PRE_TEST DISCOVERY_TIMEOUT 60 NO_PRETTY_VALUES
      PROPERTIES LABELS ${_label} TIMEOUT ${T_TIMEOUT} WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  endif()
endfunction()
