"""Seconds per VOC-size image: the TensorFlow dense CRF against pydensecrf.

    python scripts/benchmark.py --what=crf_tf [--out=BENCHMARKS.md]
    python -m kseg.benchmarks.crf_tf [--rounds=3] [--cores=1,2]

Each core count runs in a fresh process (TensorFlow fixes its thread pools
when it starts), and inside it the two implementations alternate round by
round on the same synthetic images (:func:`kseg.benchmarks.crf.synthetic_crf_input`,
500x375, 21 labels, 10 iterations), so load from other work falls on both.
Medians over the rounds are reported.

On n cores:
  * TF, one image: intra- and inter-op threads = n, sparse products cut into
    n row blocks (``num_blocks``) -- the latency of one request;
  * TF, n in flight: n images, each called from its own thread with one
    block (what ``evaluate.py --crf --crf_impl=tf --workers=n`` does,
    :func:`kseg.crf.evaluate.crf_predictions`) -- seconds per image = wall
    time / n;
  * pydensecrf: single-threaded C++, so on n cores it runs n images at once
    in a pool of n processes started and warmed up beforehand; seconds per
    image = wall time / n. On one core, one image in-process.
"""

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from kseg.benchmarks.crf import synthetic_crf_input
from kseg.crf.dense import CRFParams, dense_crf
from kseg.crf.evaluate import CRFSample, CRFSetting, crf_predictions


def _pydensecrf_labels(job):
    """Pool job: pydensecrf on one (image, probs, params); only labels come back."""
    image, probs, params = job
    return dense_crf(image, probs, params)[1]


def _measure(cores, rounds, height, width, num_labels, params):
    """Runs in a fresh process; returns seconds per image of each variant."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    from kseg.crf import tf_dense as crf_tf

    cases = [synthetic_crf_input(height, width, num_labels, seed) for seed in range(cores)]
    images = np.stack([c[0] for c in cases])
    probs = np.stack([c[1] for c in cases])
    crf = crf_tf.dense_crf_function(params, num_labels, num_blocks=cores)
    crf(images[:1], probs[:1])  # trace and warm up
    samples = [CRFSample(str(i), c[0], None, c[1]) for i, c in enumerate(cases)]
    setting = CRFSetting(params, reference_size=0)  # the stds as given, as above
    tf_labels = [labels for _, labels in crf_predictions(samples, setting, cores, impl="tf")]
    reference = [dense_crf(image, p, params)[1] for image, p in cases]
    agreement = float(np.mean(np.stack(tf_labels) == np.stack(reference)))

    pool = None
    if cores > 1:
        pool = multiprocessing.get_context("spawn").Pool(cores)
        pool.map(_pydensecrf_labels, [(c[0], c[1], params) for c in cases])  # warm up

    times = {"tf_one_image": [], "pydensecrf": []}
    if cores > 1:
        times["tf_in_flight"] = []
    for _ in range(rounds):
        start = time.perf_counter()
        crf(images[:1], probs[:1])[1].numpy()
        times["tf_one_image"].append(time.perf_counter() - start)
        if cores > 1:
            start = time.perf_counter()
            for _ in crf_predictions(samples, setting, cores, impl="tf"):
                pass
            times["tf_in_flight"].append((time.perf_counter() - start) / cores)
            start = time.perf_counter()
            pool.map(_pydensecrf_labels, [(c[0], c[1], params) for c in cases])
            times["pydensecrf"].append((time.perf_counter() - start) / cores)
        else:
            start = time.perf_counter()
            dense_crf(cases[0][0], cases[0][1], params)
            times["pydensecrf"].append(time.perf_counter() - start)
    if pool is not None:
        pool.close()
        pool.join()
    return {"cores": cores, "label_agreement": round(agreement, 5),
            **{name: round(statistics.median(values), 3) for name, values in times.items()}}


def benchmark_crf_tf(height=375, width=500, num_labels=21, rounds=5, cores=(1, 2),
                     params=CRFParams()):
    """Seconds per image of the TF CRF and of pydensecrf on each core count.

    Returns:
      dict: the workload, ``'load_average_before'`` (1-minute; well above 0
      means other work shared the cores and wall times are inflated), and
      ``'runs'``: per core count ``{'cores', 'tf_one_image', ['tf_in_flight',]
      'pydensecrf', 'label_agreement'}`` in seconds per image, the agreement
      being the fraction of equal TF and pydensecrf labels.
    """
    load = os.getloadavg()[0]
    runs = []
    for count in cores:
        args = [sys.executable, "-m", "kseg.benchmarks.crf_tf", "--child",
                json.dumps({"cores": count, "rounds": rounds, "height": height,
                            "width": width, "num_labels": num_labels,
                            "params": params.as_dict()})]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {"height": height, "width": width, "num_labels": num_labels,
            "num_iter": params.num_iter, "rounds": rounds,
            "load_average_before": round(load, 2), "runs": runs}


def format_result(result):
    """Lines for BENCHMARKS.md."""
    lines = [f"dense CRF at {result['width']}x{result['height']}, {result['num_labels']} labels, "
             f"{result['num_iter']} iterations, median of {result['rounds']} alternating "
             f"rounds (load average before: {result['load_average_before']}):"]
    for run in result["runs"]:
        best = min(run["tf_one_image"], run.get("tf_in_flight", float("inf")))
        tf_part = f"TF one image {run['tf_one_image']:.2f} s"
        if "tf_in_flight" in run:
            tf_part += f", TF {run['cores']} in flight {run['tf_in_flight']:.2f} s/image"
        lines.append(f"  {run['cores']} core(s): {tf_part}; pydensecrf {run['pydensecrf']:.2f} "
                     f"s/image; TF/pydensecrf {best / run['pydensecrf']:.2f}; "
                     f"labels agree on {100 * run['label_agreement']:.2f}% of pixels")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cores", default="1,2", help="comma-separated core counts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(_measure(spec["cores"], spec["rounds"], spec["height"], spec["width"],
                                  spec["num_labels"], CRFParams(**spec["params"]))))
        return
    result = benchmark_crf_tf(rounds=args.rounds,
                              cores=tuple(int(c) for c in args.cores.split(",")))
    print("\n".join(format_result(result)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
