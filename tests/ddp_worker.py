"""Run under torchrun by tests/test_distributed.py: train a small DAE with DDP, then save this rank's weights.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py RUN_DIR OUT_DIR [--sync-bn]
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_synthetic  # noqa: E402
from daelab.models import ModelConfig  # noqa: E402
from daelab.train import TrainConfig, fit  # noqa: E402

run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
config = TrainConfig(epochs=3, batch_size=32, threads=1, seed=4, sync_bn="--sync-bn" in sys.argv)
model_config = ModelConfig(hidden=(64, 32), code_dim=16, decoder_hidden=(32,))
result = fit(model_config, config, run_dir, dataset=make_synthetic(n_train=400, n_test=100), progress=False)
out_dir.mkdir(parents=True, exist_ok=True)
torch.save({"model": result["model"].state_dict(), "history": result["history"]},
           out_dir / f"rank{result['rank']}-of-{result['world_size']}.pt")
