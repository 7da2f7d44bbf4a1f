/* daelab's fused CPU kernels for the study MLP's fp32 training step (daelab/kernels/_mlp.py, precision
 * "fp32"): the layer kernels of _layers.h on fp32 activations, exported with an _f32 suffix.
 *
 * The bf16 step's kernels (_fused.c) instantiated for float: the same passes (BatchNorm + dropout +
 * LeakyReLU forward and backward, sigmoid + MSE + their gradient, Gaussian noise with the batch
 * gather) and the same Philox words (_philox.h), with no rounding at the loads and stores. Dropout
 * masks and Adam need no fp32 form: dropout_mask writes uint8 masks for either precision, and adam
 * takes fp32 gradients and no bf16 shadow (shadow NULL). Built into the same library as _fused.c, so
 * each ISA variant of the library (see daelab.kernels._loader) has both precisions.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_fused.h"
#include "_philox.h"

#define ACT_T float
#define LOAD_ACT(v) (v)
#define STORE_ACT(v) (v)
#define KERNEL(name) name##_f32
#include "_layers.h"
