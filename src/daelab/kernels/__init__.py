"""daelab's fused CPU kernels: one C file compiled on first use, loaded with ctypes.

``_fused.c`` holds the elementwise work of a training step (BatchNorm, dropout, LeakyReLU, noise,
the sigmoid+MSE tail, Adam with the bf16 weight copy) and of the probe classifier's step; matrix
products stay in PyTorch. ``fused`` builds and loads the library and drives the fused MLP step.
"""
