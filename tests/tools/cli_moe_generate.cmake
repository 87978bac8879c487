# CTest script: `modula CMD --model MODEL --experts EXPERTS --top-k TOPK --out OUT` writes a MODULA_MOE_FFN folder, then
# `modula generate --adapter OUT` must print the base model's greedy tokens (moefy with
# --top-k = --experts and a fresh upcycle both equal the dense model).
#   cmake -DMODULA=... -DMODEL=... -DOUT=... -DCMD=moefy -DEXPERTS=4 -DTOPK=4 -P cli_moe_generate.cmake
file(REMOVE_RECURSE ${OUT})
execute_process(COMMAND ${MODULA} ${CMD} --model ${MODEL} --experts ${EXPERTS} --top-k ${TOPK} --out ${OUT} RESULT_VARIABLE rc OUTPUT_VARIABLE made
                ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "modula ${CMD} failed (${rc}): ${made}${err}")
endif()
set(gen ${MODULA} generate --model ${MODEL} --prompt-ids 1,2,3 -n 8 --ignore-eos)
execute_process(COMMAND ${gen} RESULT_VARIABLE rc1 OUTPUT_VARIABLE base ERROR_VARIABLE err1)
execute_process(COMMAND ${gen} --adapter ${OUT} RESULT_VARIABLE rc2 OUTPUT_VARIABLE moe ERROR_VARIABLE err2)
if(NOT rc1 EQUAL 0 OR NOT rc2 EQUAL 0)
  message(FATAL_ERROR "modula generate failed: ${err1}${err2}")
endif()
if(NOT base STREQUAL moe)
  message(FATAL_ERROR "tokens differ: base model '${base}', with ${OUT} '${moe}'")
endif()
message("${made}same tokens as the base model: ${moe}")
