"""Packaging: a plain `pip install .` (not only the editable install) ships what the code reads at run time."""
import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_non_python_file_of_the_package_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["package-data"]["daelab"])
    package = ROOT / "src" / "daelab"
    needed = {str(path.relative_to(package)) for path in package.rglob("*")
              if path.is_file() and path.suffix in {".c", ".h", ".json", ".safetensors", ".toml"}}
    assert needed, "expected the kernels' C sources"
    missing = [name for name in needed if not any(fnmatch.fnmatch(name, pattern) for pattern in listed)]
    assert not missing, f"not shipped by pip install .: {sorted(missing)}"


def test_the_shipped_pretrained_models_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = config["tool"]["setuptools"]["package-data"]["daelab"]
    folder = ROOT / "src" / "daelab" / "pretrained"
    shipped = [f"pretrained/{path.name}" for path in folder.iterdir() if path.suffix in {".json", ".safetensors"}]
    assert "pretrained/manifest.json" in shipped and "pretrained/fashion-mlp.safetensors" in shipped
    assert all(any(fnmatch.fnmatch(name, pattern) for pattern in listed) for name in shipped)
    assert any(dep.startswith("safetensors") for dep in config["project"]["dependencies"])
