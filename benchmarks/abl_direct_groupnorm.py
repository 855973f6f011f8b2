"""Ablation (not the default): the Direct Denoiser with GroupNorm (8 groups) in place of BatchNorm, all else
the default, on retina y. The VAE trains exactly as in the default run (same seed, same crops; the Direct
Denoiser's loss does not reach it), so the pair isolates the Direct Denoiser's normalisation. The model
file is not saved: its layout is not one the model format knows. Usage: python benchmarks/abl_direct_groupnorm.py"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_matrix as RM  # noqa: E402

Base = RM.Trainer


def swap(module):
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            setattr(module, name, torch.nn.GroupNorm(8, child.num_features))
        else:
            swap(child)


class GNTrainer(Base):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        swap(self.model.direct_denoiser)
        print("direct denoiser norms:", {type(m).__name__ for m in self.model.direct_denoiser.modules()
                                         if "Norm" in type(m).__name__}, flush=True)


RM.Trainer = GNTrainer
RM.save_model = lambda *a, **k: None
sys.argv = ["real_matrix.py", "run", "--cells", "retina_y", "--minutes", "10", "--tag", "abl27-direct-groupnorm"]
RM.main()
