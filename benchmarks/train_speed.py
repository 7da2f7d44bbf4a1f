"""Training-step throughput (samples/s) on the CPU, fp32, batch 256: the study MLP, the conv DAE, and a naive
conv U-Net of the same widths (full resolution, concatenated skip, NCHW) for the speed ratio.

Usage: PYTHONPATH=src python benchmarks/train_speed.py [THREADS]
"""
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from daelab.models import ModelConfig, build_model


class NaiveConv(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.LeakyReLU(0.3), nn.Conv2d(c, c, 3, padding=1),
                                 nn.LeakyReLU(0.3))
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.3),
                                  nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.LeakyReLU(0.3))
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.tail = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.LeakyReLU(0.3), nn.Conv2d(c, 1, 3, padding=1),
                                  nn.Sigmoid())

    def forward(self, images):
        skip = self.enc(images)
        return self.tail(torch.cat([self.up(self.down(skip)), skip], 1))


def samples_per_second(model, shape, steps=10, warmup=3):
    images = torch.rand(shape)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for i in range(warmup + steps):
        if i == warmup:
            began = time.perf_counter()
        loss = F.mse_loss(model(images), images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * shape[0] / (time.perf_counter() - began)


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    torch.manual_seed(0)
    rates = {
        "mlp": samples_per_second(build_model(ModelConfig()), (256, 784)),
        "conv": samples_per_second(build_model(ModelConfig(name="conv")), (256, 1, 28, 28)),
        "naive-conv": samples_per_second(NaiveConv(), (256, 1, 28, 28)),
    }
    for name, rate in rates.items():
        print(f"{name:10s} {rate:7.0f} samples/s (threads={torch.get_num_threads()})")
    print(f"conv / naive-conv speed ratio: {rates['conv'] / rates['naive-conv']:.1f}x")


if __name__ == "__main__":
    main()
