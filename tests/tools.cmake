add_test(NAME tools_plot COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/tools_plot.sh ${CMAKE_SOURCE_DIR})
set_tests_properties(tools_plot PROPERTIES LABELS unit TIMEOUT 120)
add_test(NAME bench_ab COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/bench_ab.sh ${CMAKE_BINARY_DIR})
set_tests_properties(bench_ab PROPERTIES LABELS unit TIMEOUT 120)
