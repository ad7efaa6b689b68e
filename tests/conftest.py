"""Test setup: no network, a private HF cache, tiny timm backbones saved in Hub layout."""

import atexit
import os
import shutil
import tempfile

# Before anything imports huggingface_hub: never reach the network, use a throwaway cache (removed at exit).
SCRATCH = tempfile.mkdtemp(prefix="fedsq-hf-tests-")
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
for variable, name in (("HF_HOME", "hf-home"),  # no stored Hub token either
                       ("HF_HUB_CACHE", "hf-cache"), ("FEDSQ_HF_CACHE", "backbones")):  # converted backbones
    os.environ[variable] = os.path.join(SCRATCH, name)
    os.makedirs(os.environ[variable])
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def save_backbone(folder, arch: str, **kwargs) -> str:
    """A randomly initialised timm model saved in Hub layout, as a Hub download would look."""
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    timm.models.save_for_hf(model, str(folder), safe_serialization=True)
    return str(folder)


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory):
    """Factory: a Hub-layout folder for a timm architecture, made once per session."""
    made = {}

    def make(arch: str = "resnet10t") -> str:
        if arch not in made:
            made[arch] = save_backbone(tmp_path_factory.mktemp(arch), arch)
        return made[arch]

    return make


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """scikit-learn's 8x8 digits as parquet train/test files with Hub-style image + ClassLabel columns."""
    from datasets import ClassLabel, Dataset, Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [(img * 15).astype(np.uint8) for img in digits.images]
    ds = Dataset.from_dict({"img": images, "label": digits.target.astype(np.int64)})
    ds = ds.cast_column("img", Image()).cast_column("label", ClassLabel(names=[str(i) for i in range(10)]))
    split = ds.train_test_split(test_size=0.1, seed=0)
    folder = tmp_path_factory.mktemp("digits")
    split["train"].to_parquet(str(folder / "train.parquet"))
    split["test"].to_parquet(str(folder / "test.parquet"))
    return str(folder)
