"""The fully connected CRF: inference (`dense`), Bbox-Seg masks from boxes (`bbox_seg`),
post-processing a split in a process pool (`evaluate`) and the parameter
search (`search`). No module here imports TensorFlow: the pool's workers
import them."""
