# CTest script: runs `MODULA ARGS...` and checks its exit code and what it printed (CTest's
# PASS_REGULAR_EXPRESSION alone ignores the exit code).
#   cmake -DMODULA=... "-DARGS=train|run.yaml|--threads|0" -DRC=2 "-DSTDERR=--threads" [-DSTDOUT=...] -P cli_expect.cmake
# ARGS separates the arguments with '|'; STDOUT / STDERR are regular expressions.
string(REPLACE "|" ";" args "${ARGS}")
execute_process(COMMAND ${MODULA} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
string(STRIP "${out}" out)  # the regular expressions may end with $
string(STRIP "${err}" err)
set(what "modula ${ARGS}: exit ${rc}\nstdout: ${out}\nstderr: ${err}")
if(NOT rc STREQUAL "${RC}")
  message(FATAL_ERROR "expected exit code ${RC}; ${what}")
endif()
if(DEFINED STDOUT AND NOT out MATCHES "${STDOUT}")
  message(FATAL_ERROR "stdout does not match '${STDOUT}'; ${what}")
endif()
if(DEFINED STDERR AND NOT err MATCHES "${STDERR}")
  message(FATAL_ERROR "stderr does not match '${STDERR}'; ${what}")
endif()
message("as expected: ${what}")
