# Compile-only CUDA check without cuBLAS (tqpatch.backends.cuda.compile_check).
#
# Passed as -DCMAKE_PROJECT_INCLUDE=<this file>, so it runs after every project().
# Where the CUDA toolkit has cuBLAS (and the driver library) nothing happens.
# Where it does not, ggml-cuda's target_link_libraries(... CUDA::cublas
# CUDA::cuda_driver) would fail to configure: this defines empty imported
# targets of those names, the cuBLAS one carrying include/ (a declaration-only
# cublas_v2.h). The objects compile; nothing built this way can be linked.
find_package(CUDAToolkit QUIET)
if (NOT TARGET CUDA::cublas)
    message(STATUS "tqpatch compile check: no cuBLAS here, using the declaration stub in ${CMAKE_CURRENT_LIST_DIR}/include (compile only)")
    add_library(CUDA::cublas INTERFACE IMPORTED GLOBAL)
    target_include_directories(CUDA::cublas INTERFACE "${CMAKE_CURRENT_LIST_DIR}/include")
endif()
if (NOT TARGET CUDA::cuda_driver)
    message(STATUS "tqpatch compile check: no CUDA driver library here (compile only)")
    add_library(CUDA::cuda_driver INTERFACE IMPORTED GLOBAL)
endif()
