"""The fully connected CRF: inference (`dense`, pydensecrf's C++), the same CRF
as TensorFlow ops (`tf_dense`), Bbox-Seg masks from boxes (`bbox_seg`),
post-processing a split in a process pool (`evaluate`) and the parameter
search (`search`). Only `tf_dense` imports TensorFlow: the pool's workers
import the others."""
