"""Seconds per VOC-size image: the TensorFlow dense CRF against pydensecrf.

    python scripts/benchmark.py --what=crf_tf [--out=BENCHMARKS.md]
    python -m kseg.benchmarks.crf_tf [--rounds=5] [--cores=1,2]

Each core count runs in a fresh process (TensorFlow fixes its thread pools
when it starts), and inside it the two implementations alternate round by
round on the same synthetic images (:func:`kseg.benchmarks.crf.synthetic_crf_input`,
500x375, 21 labels, 10 iterations), so load from other work falls on both.
Medians over the rounds are reported.

On n cores:
  * TF, one image: intra- and inter-op threads = n, sparse products cut into
    n row blocks (``num_blocks``) -- the latency of one request;
  * TF, n in a pool: n images at once in a :class:`kseg.crf.evaluate.TFCRFPool`
    of n processes, TensorFlow on one thread in each, started and warmed up
    beforehand (what ``evaluate.py --crf --crf_impl=tf --workers=n`` does,
    :func:`kseg.crf.evaluate.crf_predictions`) -- seconds per image = wall
    time / n;
  * pydensecrf: single-threaded C++, so on n cores it runs n images at once
    in a pool of n processes started and warmed up beforehand; seconds per
    image = wall time / n. On one core, one image in-process.

Each figure also comes as CPU seconds per image (the process's CPU time, or
for pydensecrf in the pool the worker's own), which other work on the
machine changes far less than wall time: on a loaded machine compare those.
The TF/pydensecrf ratio takes TF's pool on n > 1 cores (the
throughput a split gets), its one image on one core.
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
from kseg.crf.evaluate import CRFSample, CRFSetting, TFCRFPool, crf_predictions


def _pydensecrf_labels(job):
    """Pool job: pydensecrf on one (image, probs, params) -> (labels, CPU seconds it took)."""
    image, probs, params = job
    start = time.process_time()
    labels = dense_crf(image, probs, params)[1]
    return labels, time.process_time() - start


def _cpu_seconds(pids):
    """User + system CPU seconds of these processes so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / ticks


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

    pool = tf_pool = None
    if cores > 1:
        pool = multiprocessing.get_context("spawn").Pool(cores)
        pool.map(_pydensecrf_labels, [(c[0], c[1], params) for c in cases])  # warm up
        tf_pool = TFCRFPool(cores)
    # What evaluate.py's --crf_impl=tf gives (its pool started, traced and warmed up here).
    predictions = (tf_pool.predictions(samples, setting) if tf_pool is not None
                   else crf_predictions(samples, setting, cores, impl="tf"))
    tf_labels = [labels for _, labels in predictions]
    reference = [dense_crf(image, p, params)[1] for image, p in cases]
    agreement = float(np.mean(np.stack(tf_labels) == np.stack(reference)))

    times = {"tf_one_image": [], "pydensecrf": [], "tf_one_image_cpu": [], "pydensecrf_cpu": []}
    if cores > 1:
        times.update(tf_pool=[], tf_pool_cpu=[])
    jobs = [(c[0], c[1], params) for c in cases]

    def timed(name, run, per=1):
        start, cpu = time.perf_counter(), time.process_time()
        run()
        times[name].append((time.perf_counter() - start) / per)
        times[name + "_cpu"].append((time.process_time() - cpu) / per)

    for _ in range(rounds):
        timed("tf_one_image", lambda: crf(images[:1], probs[:1])[1].numpy())
        if cores > 1:
            start, cpu = time.perf_counter(), _cpu_seconds(tf_pool.pids)
            list(tf_pool.predictions(samples, setting))
            times["tf_pool"].append((time.perf_counter() - start) / cores)
            times["tf_pool_cpu"].append((_cpu_seconds(tf_pool.pids) - cpu) / cores)
            start = time.perf_counter()
            cpu = [seconds for _, seconds in pool.map(_pydensecrf_labels, jobs)]
            times["pydensecrf"].append((time.perf_counter() - start) / cores)
            times["pydensecrf_cpu"].append(statistics.mean(cpu))
        else:
            timed("pydensecrf", lambda: _pydensecrf_labels(jobs[0]))
    if pool is not None:
        pool.close()
        pool.join()
        tf_pool.close()
    return {"cores": cores, "label_agreement": round(agreement, 5),
            **{name: round(statistics.median(values), 3) for name, values in times.items()}}


def benchmark_crf_tf(height=375, width=500, num_labels=21, rounds=5, cores=(1, 2),
                     params=CRFParams()):
    """Seconds per image of the TF CRF and of pydensecrf on each core count.

    Returns:
      dict: the workload, ``'load_average_before'`` (1-minute; well above 0
      means other work shared the cores and wall times are inflated), and
      ``'runs'``: per core count ``{'cores', 'tf_one_image', ['tf_pool',]
      'pydensecrf', 'label_agreement'}`` in seconds per image, each also as CPU
      seconds per image (``'..._cpu'``: the process's, or the pool worker's
      own, for pydensecrf), the agreement being the fraction of equal TF
      and pydensecrf labels.
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


def _ratio(a, b):
    """a / b to 2 decimals; 'n/a' when b rounded to 0 (tiny test images)."""
    return f"{a / b:.2f}" if b > 0 else "n/a"


def format_result(result):
    """Lines for BENCHMARKS.md."""
    lines = [f"dense CRF at {result['width']}x{result['height']}, {result['num_labels']} labels, "
             f"{result['num_iter']} iterations, median of {result['rounds']} alternating "
             f"rounds (load average before: {result['load_average_before']}):"]
    for run in result["runs"]:
        tf_name = "tf_pool" if "tf_pool" in run else "tf_one_image"
        tf_part = f"TF one image {run['tf_one_image']:.2f} s"
        if "tf_pool" in run:
            tf_part += f", {run['cores']} in a pool {run['tf_pool']:.2f} s/image"
        lines.append(
            f"  {run['cores']} core(s): {tf_part}; pydensecrf {run['pydensecrf']:.2f} s/image; "
            f"TF/pydensecrf {_ratio(run[tf_name], run['pydensecrf'])} (CPU seconds per image "
            f"{run[tf_name + '_cpu']:.2f} / {run['pydensecrf_cpu']:.2f} = "
            f"{_ratio(run[tf_name + '_cpu'], run['pydensecrf_cpu'])}); labels agree on "
            f"{100 * run['label_agreement']:.2f}% of pixels")
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
