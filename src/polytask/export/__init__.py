"""Writing trained models out for deployment: ``polytask export RUN --merge`` (a plain checkpoint with LoRA/IA³
folded into the encoder's weights)."""

from polytask.export.merge import export_merged

__all__ = ["export_merged"]
