"""The classifier side of the audit: the model card (`card`), safe loading (`loading`), the adapter that feeds
any format images and maps its outputs (`adapter`), batched cached inference (`inference`), a black box known
by its predictions (`blackbox`), the project's small CNN (`small_cnn`) and fine-tuning (`finetune`)."""
