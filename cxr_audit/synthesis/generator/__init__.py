"""The concept-conditioned diffusion generator, laid out the diffusers way: the network (`model`), its
training loop (`training`), the region sampler for inpainting training (`regions`) and saving/loading with
pinned hashes (`store`)."""
