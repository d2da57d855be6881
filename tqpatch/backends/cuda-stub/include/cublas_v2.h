// Declaration-only stand-in for cuBLAS's cublas_v2.h, for tqpatch's CUDA
// compile check on machines whose CUDA toolkit has no cuBLAS
// (tests/data/cuda-stub/stub-cublas.cmake puts it on the include path only
// then). It declares just the names ggml-cuda's sources use, with the
// documented cuBLAS signatures; there is no library behind it, so objects
// compiled against it are never linked.
#pragma once

#include <cuda_runtime.h>
#include <library_types.h>
#include <stddef.h>

#define CUBLAS_VER_MAJOR 13
#define CUBLAS_VER_MINOR 0
#define CUBLAS_VER_PATCH 0

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cublasContext * cublasHandle_t;

typedef enum {
    CUBLAS_STATUS_SUCCESS          = 0,
    CUBLAS_STATUS_NOT_INITIALIZED  = 1,
    CUBLAS_STATUS_ALLOC_FAILED     = 3,
    CUBLAS_STATUS_INVALID_VALUE    = 7,
    CUBLAS_STATUS_ARCH_MISMATCH    = 8,
    CUBLAS_STATUS_MAPPING_ERROR    = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR   = 14,
    CUBLAS_STATUS_NOT_SUPPORTED    = 15,
    CUBLAS_STATUS_LICENSE_ERROR    = 16,
} cublasStatus_t;

typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;
typedef enum { CUBLAS_SIDE_LEFT = 0, CUBLAS_SIDE_RIGHT = 1 } cublasSideMode_t;
typedef enum { CUBLAS_FILL_MODE_LOWER = 0, CUBLAS_FILL_MODE_UPPER = 1 } cublasFillMode_t;
typedef enum { CUBLAS_DIAG_NON_UNIT = 0, CUBLAS_DIAG_UNIT = 1 } cublasDiagType_t;

typedef enum {
    CUBLAS_DEFAULT_MATH        = 0,
    CUBLAS_TENSOR_OP_MATH      = 1,
    CUBLAS_PEDANTIC_MATH       = 2,
    CUBLAS_TF32_TENSOR_OP_MATH = 3,
} cublasMath_t;

typedef enum {
    CUBLAS_COMPUTE_16F = 64,
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
} cublasComputeType_t;

typedef enum {
    CUBLAS_GEMM_DEFAULT           = -1,
    CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99,
} cublasGemmAlgo_t;

cublasStatus_t cublasCreate(cublasHandle_t * handle);
cublasStatus_t cublasDestroy(cublasHandle_t handle);
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void * workspace, size_t size);
cublasStatus_t cublasLoggerConfigure(int log_on, int log_to_stdout, int log_to_stderr, const char * file_name);
const char * cublasGetStatusString(cublasStatus_t status);

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                           int m, int n, int k, const float * alpha, const float * A, int lda,
                           const float * B, int ldb, const float * beta, float * C, int ldc);
cublasStatus_t cublasSgemmBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                  int m, int n, int k, const float * alpha, const float * const A[], int lda,
                                  const float * const B[], int ldb, const float * beta, float * const C[],
                                  int ldc, int batch_count);
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float * alpha,
                                         const float * A, int lda, long long int stride_a,
                                         const float * B, int ldb, long long int stride_b, const float * beta,
                                         float * C, int ldc, long long int stride_c, int batch_count);
cublasStatus_t cublasStrsmBatched(cublasHandle_t handle, cublasSideMode_t side, cublasFillMode_t uplo,
                                  cublasOperation_t trans, cublasDiagType_t diag, int m, int n,
                                  const float * alpha, const float * const A[], int lda, float * const B[],
                                  int ldb, int batch_count);

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                            int m, int n, int k, const void * alpha,
                            const void * A, cudaDataType a_type, int lda,
                            const void * B, cudaDataType b_type, int ldb, const void * beta,
                            void * C, cudaDataType c_type, int ldc,
                            cublasComputeType_t compute_type, cublasGemmAlgo_t algo);
cublasStatus_t cublasGemmBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                   int m, int n, int k, const void * alpha,
                                   const void * const A[], cudaDataType a_type, int lda,
                                   const void * const B[], cudaDataType b_type, int ldb, const void * beta,
                                   void * const C[], cudaDataType c_type, int ldc, int batch_count,
                                   cublasComputeType_t compute_type, cublasGemmAlgo_t algo);
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void * alpha,
                                          const void * A, cudaDataType a_type, int lda, long long int stride_a,
                                          const void * B, cudaDataType b_type, int ldb, long long int stride_b,
                                          const void * beta,
                                          void * C, cudaDataType c_type, int ldc, long long int stride_c,
                                          int batch_count, cublasComputeType_t compute_type,
                                          cublasGemmAlgo_t algo);

#ifdef __cplusplus
}
#endif
