# Tests: the busted specs run inside the tide binary, and every example.
find_program(BUSTED busted)
find_program(LUA54 lua5.4)
add_test(NAME specs
  COMMAND $<TARGET_FILE:tide> ${BUSTED} --no-auto-insulate -o utfTerminal spec/
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
# A getaddrinfo that stalls on "*.slow" names (LD_PRELOAD by http_spec).
add_library(slowdns MODULE spec/c/slowdns.c)
target_link_libraries(slowdns PRIVATE dl)
set(TIDE_SPEC_ENV "TIDE_BIN=$<TARGET_FILE:tide>" "TIDE_SLOWDNS=$<TARGET_FILE:slowdns>")
set_tests_properties(specs PROPERTIES TIMEOUT 600 ENVIRONMENT "${TIDE_SPEC_ENV}")
file(GLOB TIDE_EXAMPLES ${CMAKE_SOURCE_DIR}/scripts/examples/expected/*.txt)
foreach(f IN LISTS TIDE_EXAMPLES)
  get_filename_component(name ${f} NAME_WE)
  add_test(NAME example_${name}
    COMMAND ${LUA54} scripts/examples/check.lua $<TARGET_FILE:tide> ${name}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(example_${name} PROPERTIES TIMEOUT 60)
endforeach()

add_executable(runtime_test spec/c/runtime_test.c)
target_link_libraries(runtime_test PRIVATE libtide)
add_test(NAME c_runtime COMMAND runtime_test)
add_executable(alloc_test spec/c/alloc_test.c)
target_link_libraries(alloc_test PRIVATE libtide)
add_test(NAME c_alloc COMMAND alloc_test)

# The same examples under Debian's lua5.4 with the module form (tide.so):
# seed-style scripts that call tide.run(main) work unchanged there.
# Under the sanitizers the uninstrumented lua5.4 must preload their runtime.
set(TIDE_PRELOAD "")
if(TIDE_SANITIZE)
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=libasan.so
    OUTPUT_VARIABLE asan_lib OUTPUT_STRIP_TRAILING_WHITESPACE)
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=libubsan.so
    OUTPUT_VARIABLE ubsan_lib OUTPUT_STRIP_TRAILING_WHITESPACE)
  set(TIDE_PRELOAD "LD_PRELOAD='${asan_lib} ${ubsan_lib}' ")
endif()
file(WRITE ${CMAKE_BINARY_DIR}/lua54-tide
  "#!/bin/sh\n${TIDE_PRELOAD}LUA_CPATH='${CMAKE_BINARY_DIR}/lua/?.so;;' exec ${LUA54} \"$@\"\n")
file(CHMOD ${CMAKE_BINARY_DIR}/lua54-tide PERMISSIONS OWNER_READ OWNER_WRITE
  OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
foreach(f IN LISTS TIDE_EXAMPLES)
  get_filename_component(name ${f} NAME_WE)
  add_test(NAME lua54_example_${name}
    COMMAND ${LUA54} scripts/examples/check.lua ${CMAKE_BINARY_DIR}/lua54-tide ${name}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(lua54_example_${name} PROPERTIES TIMEOUT 60)
endforeach()

# The whole busted suite again under Debian's lua5.4 with tide.so: each test
# run happens inside one tide.run (lua/tide/busted.lua, the helper .busted names).
add_test(NAME specs_lua54
  COMMAND ${CMAKE_BINARY_DIR}/lua54-tide ${BUSTED} --no-auto-insulate -o utfTerminal spec/
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(specs_lua54 PROPERTIES TIMEOUT 600 ENVIRONMENT "${TIDE_SPEC_ENV}")

# The embedding API (tide.h): an application that owns its loop, and the
# C tests of every function. Both also run under the sanitizer build.
add_executable(sensor_app scripts/embed/sensor_app.c)
target_link_libraries(sensor_app PRIVATE libtide)
add_test(NAME embed_sensor_app COMMAND sensor_app scripts/embed/sensor.lua
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
add_executable(embed_test spec/c/embed_test.c)
target_link_libraries(embed_test PRIVATE libtide)
add_test(NAME embed_c_api COMMAND embed_test WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(embed_sensor_app embed_c_api PROPERTIES TIMEOUT 60)
# What `cmake --install` gives a consumer: tide.pc, the header, the library
# and the lua5.4 module, from a scratch prefix (not for the sanitizer build,
# whose library needs the sanitizers' runtime in the consumer too).
if(NOT TIDE_SANITIZE)
  add_test(NAME install_consumer
    COMMAND ${CMAKE_SOURCE_DIR}/scripts/embed/check_install ${CMAKE_BINARY_DIR})
  set_tests_properties(install_consumer PROPERTIES TIMEOUT 60)
endif()
