from setuptools import find_packages, setup

setup(
    name="kseg",
    version="0.1.0",
    description="Weakly- and semi-supervised DeepLab training (Papandreou et al., ICCV 2015) "
                "in TensorFlow/Keras 3",
    packages=find_packages(include=["kseg", "kseg.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<3",
        "numpy>=1.26,<3",
        "absl-py>=2.1,<3",
        "tensorboard>=2.21,<3",
        "pydensecrf2>=1.1,<2",
        "pycocotools>=2.0.8,<3",
        # Palette PNGs (VOC masks) are read and written by index, which needs PIL.
        "pillow>=10,<14",
    ],
    extras_require={"test": ["pytest>=8,<10"]},
)
