"""The networks, one file per part, and the model that joins them.

- ``blocks``: the convolutions, residual blocks, merges and resamplings the others are built from;
- ``ladder_vae``: the hierarchical VAE (bottom-up encoder, top-down latents, KL per level);
- ``ar_decoder``: the noise model, autoregressive along one line (row, column or depth);
- ``signal_decoder``: latents to one clean image (a posterior sample);
- ``direct_denoiser``: the U-Net trained to give the posterior mean in one pass;
- ``model``: ``COSDD``, the four parts, their losses, the normalisation and sampling.
"""
