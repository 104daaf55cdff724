"""DataModules: embedded MNIST-5k (offline), torchvision MNIST / Fashion-MNIST / CIFAR-10, image folders.

Every module exposes num_classes, image_shape (C,H,W) and class_names right after construction;
after setup() its datasets yield (x float32 [C,H,W] in [-1,1], y int64).
"""

from .base import ImageDataModule, TensorImageDataset
from .config import DataConfig, as_data_config
from .image_folder import ImageFolderDataModule
from .mnist5k import MNIST5kDataModule, load_mnist5k
from .registry import DATAMODULES, build_datamodule
from .splits import stratified_split
from .torchvision_sets import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule
from .transforms import preprocess

__all__ = [
    "DATAMODULES",
    "CIFAR10DataModule",
    "DataConfig",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "TensorImageDataset",
    "as_data_config",
    "build_datamodule",
    "load_mnist5k",
    "preprocess",
    "stratified_split",
]
