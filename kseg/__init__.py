"""kseg: weakly- and semi-supervised DeepLab training (Papandreou et al., ICCV 2015)."""

__version__ = "0.1.0"
