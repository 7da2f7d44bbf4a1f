/* The interface of daelab's fused CPU kernels: read by the C compiler and by the Python loader.
 *
 * _fused.c (the MLP's bf16 step), _fused32.c (its fp32 step) and _classifier.c (the probe classifier's
 * step) include this file and are compiled with -Werror=missing-prototypes into one library, so a kernel whose definition differs
 * from its prototype here, or that is not declared here, does not build.
 * daelab.kernels._abi parses this file for ctypes (types, parameter names) and for the checks the
 * Python side makes before each call: the comment after an array parameter gives how many elements
 * the kernel touches there, in the scalar parameters' terms, then optionally "; in [lo, hi)" (the
 * range of the indices it holds), "; may be NULL", "; returned" (an out value the Python wrapper
 * returns). Arrays are contiguous and row-major, except those given as "a x b at strides (sa, sb)",
 * which the kernel reads through those strides (in elements). bf16 values are stored as uint16_t.
 *
 * Every kernel returns a daelab_status: 0 when it did its work, else the reason it did none.
 * Sizes, strides, required arrays and fixed work-array limits are checked in every build; the
 * indices themselves (row numbers, labels) by the Python wrappers, and in C too by a debug build
 * (-DDAELAB_DEBUG, see daelab.kernels._loader).
 */
#ifndef DAELAB_FUSED_H
#define DAELAB_FUSED_H

#include <stdint.h>

enum daelab_status {
    DAELAB_OK = 0,          /* done */
    DAELAB_BAD_SIZE = 1,    /* a size or stride is negative, or a batch is empty */
    DAELAB_TOO_LARGE = 2,   /* a size is larger than this kernel's fixed work arrays */
    DAELAB_NULL_ARRAY = 3,  /* a required array is NULL */
    DAELAB_BAD_INDEX = 4,   /* an index (a row number, a label) is outside its range */
};

/* A kernel's first lines: return `status` unless `ok`. The checks come before any work, so a
 * refused call leaves every output as it was. */
#define DAELAB_REQUIRE(ok, status) \
    do { \
        if (!(ok)) return (status); \
    } while (0)

/* The largest hidden width and class count classifier_tail has room for (its per-copy arrays). */
#define DAELAB_TAIL_MAX_HIDDEN 256
#define DAELAB_TAIL_MAX_CLASSES 16

/* The sha256 of this header as the build saw it (passed with -DDAELAB_HEADER_SHA256), so that the
 * loader can refuse a library built from another interface. */
const char *daelab_header_sha256(void);

/* 1 in a debug build (-DDAELAB_DEBUG: every index checked in C), else 0. */
int daelab_debug_build(void);

int gather_gaussian(const float *data,      /* n_rows * dim */
                    int64_t n_rows,
                    const int64_t *index,   /* batch; in [0, n_rows) */
                    int64_t batch,
                    int64_t dim,
                    float sigma,
                    uint64_t seed,
                    uint32_t stream,
                    float *clean,           /* batch * dim */
                    uint16_t *noisy);       /* batch * dim */

int dropout_mask(uint64_t seed,
                 uint32_t stream,
                 int64_t n,
                 uint32_t threshold,
                 uint8_t *keep,             /* n; may be NULL */
                 float scale,
                 float *scaled);            /* n; may be NULL */

int bn_forward(const uint16_t *z,           /* batch * feat */
               int64_t batch,
               int64_t feat,
               const float *bias,           /* feat */
               const float *gamma,          /* feat */
               const float *beta,           /* feat */
               float eps,
               float momentum,
               float *running_mean,         /* feat */
               float *running_var,          /* feat */
               const uint8_t *keep,         /* batch * feat; may be NULL */
               float keep_scale,
               float slope,
               uint16_t *act,               /* batch * feat */
               float *mean_out,             /* feat */
               float *rstd_out);            /* feat */

int bn_backward(const uint16_t *dact,       /* batch * feat */
                const uint16_t *act,        /* batch * feat */
                const uint16_t *z,          /* batch * feat */
                int64_t batch,
                int64_t feat,
                const uint8_t *keep,        /* batch * feat; may be NULL */
                float keep_scale,
                float slope,
                const float *gamma,         /* feat */
                const float *mean,          /* feat */
                const float *rstd,          /* feat */
                uint16_t *dz,               /* batch * feat */
                float *dgamma,              /* feat */
                float *dbeta);              /* feat */

int sigmoid_mse(const uint16_t *z,          /* batch * feat */
                const float *bias,          /* feat */
                const float *clean,         /* batch * feat */
                int64_t batch,
                int64_t feat,
                float grad_scale,
                uint16_t *dz,               /* batch * feat */
                float *dbias,               /* feat */
                double *total_out);         /* 1; returned */

/* The fp32 step's forms of the four kernels above (_fused32.c): the same work on fp32 activations. */
int gather_gaussian_f32(const float *data,  /* n_rows * dim */
                        int64_t n_rows,
                        const int64_t *index, /* batch; in [0, n_rows) */
                        int64_t batch,
                        int64_t dim,
                        float sigma,
                        uint64_t seed,
                        uint32_t stream,
                        float *clean,       /* batch * dim */
                        float *noisy);      /* batch * dim */

int bn_forward_f32(const float *z,          /* batch * feat */
                   int64_t batch,
                   int64_t feat,
                   const float *bias,       /* feat */
                   const float *gamma,      /* feat */
                   const float *beta,       /* feat */
                   float eps,
                   float momentum,
                   float *running_mean,     /* feat */
                   float *running_var,      /* feat */
                   const uint8_t *keep,     /* batch * feat; may be NULL */
                   float keep_scale,
                   float slope,
                   float *act,              /* batch * feat */
                   float *mean_out,         /* feat */
                   float *rstd_out);        /* feat */

int bn_backward_f32(const float *dact,      /* batch * feat */
                    const float *act,       /* batch * feat */
                    const float *z,         /* batch * feat */
                    int64_t batch,
                    int64_t feat,
                    const uint8_t *keep,    /* batch * feat; may be NULL */
                    float keep_scale,
                    float slope,
                    const float *gamma,     /* feat */
                    const float *mean,      /* feat */
                    const float *rstd,      /* feat */
                    float *dz,              /* batch * feat */
                    float *dgamma,          /* feat */
                    float *dbeta);          /* feat */

int sigmoid_mse_f32(const float *z,         /* batch * feat */
                    const float *bias,      /* feat */
                    const float *clean,     /* batch * feat */
                    int64_t batch,
                    int64_t feat,
                    float grad_scale,
                    float *dz,              /* batch * feat */
                    float *dbias,           /* feat */
                    double *total_out);     /* 1; returned */

int adam(float *param,                      /* n */
         const void *grad,                  /* n */
         int grad_bf16,
         float *exp_avg,                    /* n */
         float *exp_avg_sq,                 /* n */
         uint16_t *shadow,                  /* n; may be NULL */
         int64_t n,
         float beta1,
         float beta2,
         float eps,
         float step_size,
         float bias_correction2_sqrt);

int to_bf16(const float *src,               /* n */
            uint16_t *dst,                  /* n */
            int64_t n);

int relu_mask(float *a,                     /* seeds * batch * width */
              int64_t seeds,
              int64_t batch,
              int64_t width,
              const float *mask, /* seeds x batch x width at strides (mask_seed_stride, mask_row_stride, 1) */
              int64_t mask_seed_stride,
              int64_t mask_row_stride);

int relu_mask_backward(float *dh,           /* seeds * batch * width */
                       const float *h,      /* seeds * batch * width */
                       int64_t seeds,
                       int64_t batch,
                       int64_t width,
                       const float *mask, /* seeds x batch x width at strides (mask_seed_stride, mask_row_stride, 1) */
                       int64_t mask_seed_stride,
                       int64_t mask_row_stride,
                       float *dbias);       /* seeds * width */

int classifier_tail(const float *a2,        /* seeds * batch * hidden */
                    int64_t seeds,
                    int64_t batch,
                    int64_t hidden,
                    int64_t classes,
                    const float *mask, /* seeds x batch x hidden at strides (mask_seed_stride, mask_row_stride, 1) */
                    int64_t mask_seed_stride,
                    int64_t mask_row_stride,
                    const int64_t *labels,  /* seeds x batch at strides (label_seed_stride, 1); in [0, classes) */
                    int64_t label_seed_stride,
                    const float *gamma,     /* seeds * hidden */
                    const float *beta,      /* seeds * hidden */
                    const float *w3,        /* seeds * hidden * classes */
                    const float *b3,        /* seeds * classes */
                    float eps,
                    float momentum,
                    float *running_mean,    /* seeds * hidden */
                    float *running_var,     /* seeds * hidden */
                    float *h,               /* seeds * batch * hidden */
                    float *da2,             /* seeds * batch * hidden */
                    float *dw3,             /* seeds * hidden * classes */
                    float *db3,             /* seeds * classes */
                    float *dgamma,          /* seeds * hidden */
                    float *dbeta,           /* seeds * hidden */
                    float *db2,             /* seeds * hidden */
                    float *work,            /* seeds * (3 * batch * hidden + 2 * batch * classes) */
                    double *total_out);     /* 1; returned */

#endif
