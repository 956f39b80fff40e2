"""What every training-data-free detector of memorized prompts needs from a text-to-image
pipeline: its U-Net, prompt embeddings (the empty prompt is the unconditional branch of
classifier-free guidance), its DDIM timesteps and the seeded starting noises x_T.

Generation g of every prompt starts from the noise of seed ``seed + g`` (float32, drawn on the
CPU), so prompts are compared on the same noises and results do not depend on batch size."""

from __future__ import annotations

from memaudit.errors import ModelError


class TextConditionalModel:
    """A text-to-image pipeline's parts, as the detectors query them."""

    def __init__(self, pipeline, steps: int, device: str = "cpu"):
        from diffusers import DDIMScheduler

        self.unet, self.tokenizer, self.text_encoder = (getattr(pipeline, name, None)
                                                        for name in ("unet", "tokenizer", "text_encoder"))
        if self.unet is None or self.tokenizer is None or self.text_encoder is None:
            raise ModelError("detect: needs a text-to-image pipeline with a U-Net, a tokenizer and a text encoder")
        self.device = device
        self.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
        self.scheduler.set_timesteps(steps)
        if self.scheduler.config.prediction_type != "epsilon":
            raise ModelError(f"detect: the U-Net predicts {self.scheduler.config.prediction_type!r}; the detectors "
                             "are defined on noise (epsilon) predictions")
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.shape = (self.unet.config.in_channels, height, width)

    @property
    def timesteps(self):
        return self.scheduler.timesteps

    def embed(self, texts):
        import torch

        ids = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        with torch.inference_mode():
            return self.text_encoder(ids)[0]

    def noises(self, generations: int, seed: int):
        """(generations, C, H, W) starting noises x_T, scaled as the scheduler starts from them."""
        import torch

        return torch.stack([torch.randn(self.shape, generator=torch.Generator("cpu").manual_seed(seed + g))
                            for g in range(generations)]) * self.scheduler.init_noise_sigma

    def eps(self, x, t, states):
        """The U-Net's noise prediction eps(x, t, prompt embedding)."""
        return self.unet(self.scheduler.scale_model_input(x, t), t, encoder_hidden_states=states).sample
