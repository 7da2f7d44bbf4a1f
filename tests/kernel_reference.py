"""The fused MLP step's reference: the same training forward in fp32 autograd (used by the kernel tests)."""
import torch
import torch.nn.functional as F


def reference_loss(policy, noisy, clean, masks, weight_of=lambda layer: layer.linear.weight):
    """MSE of the model's training forward on ``noisy``, with the fused step's dropout ``masks``.

    ``weight_of(layer)`` gives the weight the products use (the bf16 test passes a leaf holding the
    bf16-rounded weight, kept as ``layer.ref_weight`` for its gradient).
    """
    x = noisy
    for layer, keep in zip(policy.layers, masks):
        weight = weight_of(layer)
        z = x @ weight.t() + layer.linear.bias
        if layer.kind == "bn":
            bn = layer.bn
            z = F.batch_norm(z, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias, True,
                             bn.momentum, bn.eps)
            if keep is not None:
                z = z * keep.float() / (1 - layer.dropout)
            z = F.leaky_relu(z, layer.slope)
        elif layer.kind == "sigmoid":
            z = torch.sigmoid(z)
        x = z
    return F.mse_loss(x, clean)
