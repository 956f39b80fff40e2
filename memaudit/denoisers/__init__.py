"""The denoising networks memaudit trains and loads: U-Net shapes (``architectures``, ``unet``), EDM's
preconditionings (``preconditioning``) and the saved-network format (``networks``: safetensors +
JSON). ``memaudit.retraining`` trains them; ``memaudit.adapters`` samples saved ones."""
