"""Full-network speed: kseg's training step and inference against a plain PyTorch
reference and against the machine's peak (BENCHMARKS.md, `scripts/benchmark.py --what=network`).

    python scripts/benchmark.py --what=network [--network_rows=infer-b1-fp32,train-b1-bf16]

A *row* is one workload, named by dash-separated tokens (`Row.parse`):
`train` (a `Trainer.train_step`: forward, E-step, loss, backward, SGD with
momentum) or `infer` (the network's forward pass, dropout off) or `serve`
(kseg's exported SavedModel, `serve_images`, pre- and post-processing
included, against the plain PyTorch forward); `b<N>` the batch; `fp32`,
`bf16` or `fp16` (kseg: `--precision=mixed_bfloat16` / `mixed_float16`;
PyTorch: `torch.autocast`); optionally `xla` (kseg's `--jit_compile`), an
E-step kind (`em_fixed`, `em_adapt`, `bbox_em_fixed`: kseg's step with that
E-step, against PyTorch's strong step, which has none) and `embedded` (the
demo's network and crop: width 0.125, 129x129). Without `embedded` the
network is width 1 (DeepLab-LargeFOV, 20.5M parameters) at 321x321.

How it is measured. TensorFlow's and PyTorch's thread pools fight when both
live in one process, so each framework runs in a worker process of its own
(`python -m kseg.benchmarks.network --worker=kseg|torch`), both with the
same number of intra-op threads (the cores; TensorFlow's inter-op pool as
kseg's commands leave it, TensorFlow's default, unless `inter_op` says; PyTorch's
inter-op pool 1 thread). The parent sets up a row in both (build, trace or
compile, warm up), then alternates timed rounds between them, the other
worker idle meanwhile, so load from elsewhere falls on both alike; images/s
come from the median step time over all rounds. kseg's `infer` and `serve`
rows run in a second kseg worker started as kseg's inference commands start
(`kseg.inference.runtime.assume_frozen_weights`: oneDNN reorders each
kernel once, not on every call); its training rows in one started as
`train.py` is, without it. Without PyTorch installed
(`pip install -e '.[bench]'`) the kseg columns alone are printed.

FLOPs are counted from the layers: 2 x the multiply-adds of every
convolution (pools, ReLUs and biases are < 1%), walking kseg's Keras layers
and, separately, the PyTorch modules (the two counts must agree). A training
step is counted as 3 x the forward (the backward computes each convolution's
input gradient and its weight gradient, each as many multiply-adds as its
forward). The peak is derived from /proc/cpuinfo (`machine_peak`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
MODES = ("train", "infer", "serve")
ESTEP_KINDS = ("em_fixed", "em_adapt", "bbox_em_fixed")
# The embedded demo's network and crop (flags/embedded_base.cfg).
EMBEDDED = {"width": 0.125, "size": 129}
# What `--what=network` measures by default: about 8 minutes on the idle 2-core machine.
# XLA in bf16 is left out: on the loaded machine it ran inference 4.6x and training 13x
# slower than without (XLA's CPU convolutions do not use AMX), at a minute of compiling.
DEFAULT_ROWS = (
    "infer-b1-fp32", "infer-b1-bf16", "infer-b1-fp32-xla", "infer-b10-fp32", "infer-b10-bf16",
    "serve-b1-fp32",
    "train-b1-fp32", "train-b1-bf16", "train-b1-fp32-xla",
    "train-b1-fp32-em_fixed", "train-b1-fp32-em_adapt", "train-b1-fp32-bbox_em_fixed",
    "train-b10-fp32", "train-b10-bf16",
    "train-b10-fp32-embedded", "train-b10-bf16-embedded",
)
# Intel's figure for AMX-BF16: 1024 bfloat16 FLOPs per cycle and core (16x AVX-512 FP32).
AMX_BF16_FLOPS_PER_CYCLE = 1024


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmark workload (see the module docstring)."""

    mode: str
    batch: int
    precision: str = "fp32"
    xla: bool = False
    kind: str = "strong"
    width: float = 1.0
    size: int = 321
    num_classes: int = 21

    @classmethod
    def parse(cls, text: str, width: float = 1.0, size: int = 321,
              num_classes: int = 21) -> "Row":
        """`train-b1-bf16-xla-em_adapt` -> Row; `width` and `size` unless `embedded`."""
        fields: dict = {"width": width, "size": size, "num_classes": num_classes}
        for token in text.strip().split("-"):
            if token in MODES:
                fields["mode"] = token
            elif token.startswith("b") and token[1:].isdigit():
                fields["batch"] = int(token[1:])
            elif token in PRECISIONS:
                fields["precision"] = token
            elif token == "xla":
                fields["xla"] = True
            elif token in ESTEP_KINDS:
                fields["kind"] = token
            elif token == "embedded":
                fields.update(EMBEDDED)
            else:
                raise ValueError(f"--network_rows: unknown token {token!r} in {text!r}; expected "
                                 f"{'|'.join(MODES)}, b<batch>, {'|'.join(PRECISIONS)}, xla, "
                                 f"{'|'.join(ESTEP_KINDS)} or embedded")
        if "mode" not in fields or "batch" not in fields:
            raise ValueError(f"--network_rows: {text!r} needs a mode ({'|'.join(MODES)}) and a "
                             "batch (b<N>), e.g. train-b1-bf16")
        row = cls(**fields)
        if row.kind != "strong" and row.mode != "train":
            raise ValueError(f"--network_rows: {text!r}: an E-step kind needs a train row")
        return row

    @property
    def name(self) -> str:
        parts = [{"train": "training", "infer": "inference", "serve": "SavedModel"}[self.mode],
                 f"b{self.batch}", self.precision]
        parts += ["XLA"] if self.xla else []
        parts += [self.kind] if self.kind != "strong" else []
        if (self.width, self.size) == (EMBEDDED["width"], EMBEDDED["size"]):
            parts.append("embedded")
        return " ".join(parts)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def torch_available() -> bool:
    """Whether PyTorch can be imported (the optional `bench` extra)."""
    return importlib.util.find_spec("torch") is not None


def machine_peak(cores: int | None = None, ghz: float | None = None, fma_units: int = 2,
                 cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The CPU's peak FLOP/s, derived as cores x clock x FMA units x lanes x 2.

    cores: those this process may run on; the clock: /proc/cpuinfo's
    "cpu MHz" (under a hypervisor the nominal clock: turbo may run above
    it, so achieved figures over 100% are possible); lanes: 16 float32 per
    512-bit FMA with avx512f, 8 with avx2 + fma; `fma_units`: 2 per core
    (Xeon Scalable Gold/Platinum; /proc/cpuinfo cannot tell). bfloat16: AMX
    (amx_bf16) 1024 FLOPs per cycle and core, else AVX512_BF16 at twice the
    float32 rate, else float32's. Returns a dict with the inputs, `fp32` and
    `bf16` in GFLOP/s, and `how` (the derivation as text).
    """
    text = open(cpuinfo).read() if os.path.exists(cpuinfo) else ""
    fields: dict = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    cores = cores or len(os.sched_getaffinity(0))
    ghz = ghz or float(fields.get("cpu MHz", "0") or 0) / 1000
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4
    per_cycle = fma_units * lanes * 2  # float32 FLOPs per cycle and core
    fp32 = cores * ghz * per_cycle
    if "amx_bf16" in flags:
        bf16, bf16_how = cores * ghz * AMX_BF16_FLOPS_PER_CYCLE, (
            f"AMX-BF16 {AMX_BF16_FLOPS_PER_CYCLE} FLOPs/cycle/core")
    elif "avx512_bf16" in flags:
        bf16, bf16_how = 2 * fp32, "AVX512_BF16 at twice the fp32 rate"
    else:
        bf16, bf16_how = fp32, "no bfloat16 arithmetic: the fp32 rate"
    how = (f"{cores} cores x {ghz:.2f} GHz (/proc/cpuinfo 'cpu MHz', nominal) x {fma_units} "
           f"FMA units (assumed) x {lanes} fp32 lanes "
           f"({'avx512f' if lanes == 16 else 'avx2' if lanes == 8 else 'sse'}) x 2 = "
           f"{fp32:.1f} GFLOP/s fp32; bf16 {bf16:.0f} GFLOP/s ({bf16_how})")
    return {"model": fields.get("model name", "?"), "cores": cores, "ghz": ghz,
            "fma_units": fma_units, "lanes": lanes, "fp32": fp32, "bf16": bf16, "how": how}


# --- the kseg worker ----------------------------------------------------------------


def keras_forward_flops(network, height: int, width: int) -> int:
    """2 x the multiply-adds of every Conv2D of a Keras DeepLab for one image,
    tracking the spatial size through its pools ('same' padding)."""
    import keras
    total = 0
    for layer in network.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            total += 2 * height * width * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.MaxPooling2D):
            stride_h, stride_w = layer.strides
            height, width = -(-height // stride_h), -(-width // stride_w)
    return int(total)


class KsegRunner:
    """One row in kseg: `setup(row)` builds, traces and warms up; `run()` is one timed call."""

    def __init__(self, threads: int, inter_op: int = 0):
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)  # 0: TF's default
        self.run = None
        self._keep = None
        self._tmp = None

    def setup(self, row: dict) -> dict:
        import keras
        import numpy as np
        import tensorflow as tf

        from kseg import model as model_lib
        from kseg.benchmarks.training import synthetic_batch, with_kind
        from kseg.config import ModelConfig, OptimConfig
        from kseg.training.trainer import Trainer, make_optimizer

        keras.utils.set_random_seed(0)
        precision = PRECISIONS[row["precision"]]
        config = ModelConfig(row["num_classes"], width=row["width"], precision=precision)
        network = model_lib.build_deeplab(config)
        batch, size = row["batch"], row["size"]
        if row["mode"] == "train":
            trainer = Trainer(network, optim_config=OptimConfig())
            trainer.compile(optimizer=make_optimizer(trainer.optim_config, precision))
            data = with_kind(synthetic_batch(batch, size, row["num_classes"]), row["kind"])
            step = tf.function(trainer.train_step, jit_compile=row["xla"])
            self.run = lambda: float(step(data)["loss"])
            self._keep = trainer
        elif row["mode"] == "infer":
            images = tf.random.stateless_normal([batch, size, size, 3], [0, 0]) * 60.0
            forward = tf.function(lambda x: network(x, training=False), jit_compile=row["xla"])
            self.run = lambda: float(tf.reduce_sum(forward(images)))
            self._keep = network
        else:  # serve: the exported SavedModel, uint8 in, labels and probabilities out
            from kseg.inference.export import export_saved_model
            self._tmp = tempfile.TemporaryDirectory(prefix="kseg-bench-")
            path = export_saved_model(network, os.path.join(self._tmp.name, "model"),
                                      [str(i) for i in range(row["num_classes"])],
                                      jit_compile=row["xla"])
            serve = tf.saved_model.load(path).signatures["serve_images"]
            images = tf.constant(np.random.default_rng(0).integers(
                0, 256, (batch, size, size, 3), np.uint8))
            self.run = lambda: int(tf.reduce_sum(serve(images=images)["labels"]))
            self._keep = serve
        return {"flops": keras_forward_flops(network, size, size),
                "params": int(network.count_params())}

    def release(self) -> None:
        self.run = self._keep = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        import keras
        keras.backend.clear_session()

    def gemm(self, n: int = 2048, repeats: int = 5) -> dict:
        """GFLOP/s of an n x n x n matmul in float32 and bfloat16 (the
        machine's practical peak through TensorFlow/oneDNN)."""
        import tensorflow as tf
        out = {}
        for dtype in ("float32", "bfloat16"):
            a = tf.cast(tf.random.stateless_normal([n, n], [0, 1]), dtype)
            b = tf.cast(tf.random.stateless_normal([n, n], [0, 2]), dtype)
            matmul = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y), tf.float32)))
            matmul(a, b).numpy()
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                matmul(a, b).numpy()
                seconds.append(time.perf_counter() - start)
            out[dtype] = 2 * n ** 3 / statistics.median(seconds) / 1e9
        return out


def _worker_loop(framework: str, threads: int, inter_op: int) -> None:
    """A worker's loop: one JSON request per stdin line, one '@@'-prefixed JSON
    reply per request on stdout (other output, e.g. TensorFlow's, is ignored)."""
    if framework == "torch":
        from kseg.benchmarks.torch_reference import TorchRunner
        runner = TorchRunner(threads)
    else:
        runner = KsegRunner(threads, inter_op)
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "quit":
            break
        start = time.perf_counter()
        if op == "setup":
            reply = runner.setup(request["row"])
            for _ in range(request.get("warmup", 2)):
                runner.run()
            reply["setup_seconds"] = time.perf_counter() - start
        elif op == "time":
            reply = {"seconds": []}
            for _ in range(request["steps"]):
                start = time.perf_counter()
                runner.run()
                reply["seconds"].append(time.perf_counter() - start)
        elif op == "release":
            runner.release()
            reply = {}
        elif op == "gemm":
            reply = runner.gemm(request["n"])
        else:
            raise ValueError(f"unknown request {op!r}")
        sys.stdout.write("@@" + json.dumps(reply) + "\n")
        sys.stdout.flush()


class _Worker:
    """A worker process (`_worker_loop`) and its request/reply pipe."""

    def __init__(self, framework: str, threads: int, inter_op: int, inference: bool = False):
        self.framework = framework
        self._stderr = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS=str(threads))
        if framework == "kseg" and inference:
            from kseg.inference import runtime
            runtime.assume_frozen_weights(env)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "kseg.benchmarks.network", f"--worker={framework}",
             f"--threads={threads}", f"--inter_op={inter_op}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env=env)

    def request(self, op: str, **fields) -> dict:
        self._process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self._process.stdin.flush()
        for line in self._process.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        self._stderr.seek(0)
        tail = self._stderr.read()[-3000:]
        raise RuntimeError(f"the {self.framework} benchmark worker stopped during {op!r}:\n{tail}")

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self._process.stdin.flush()
                self._process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._stderr.close()


def benchmark_network(rows, threads: int | None = None, rounds: int = 3, steps: int = 1,
                      warmup: int = 2, with_torch: bool | None = None, inter_op: int = 0,
                      progress=None, gemm_size: int = 2048) -> dict:
    """Times each Row in kseg and (if installed) PyTorch, alternating rounds.

    Args:
      rows: Row objects.
      threads: intra-op threads of both frameworks (default: the usable cores).
      rounds: alternating rounds per row; `steps` timed calls per round and
        framework (median over all); `warmup` untimed calls after setup (the
        first traces or compiles; one only for batches over 4, whose calls
        are long enough to be warm after one).
      with_torch: None: PyTorch if installed.
      inter_op: TensorFlow's inter-op threads (0: TensorFlow's default, as
        kseg's commands run).
      progress: callable taking a line per finished row (e.g. to stderr).
      gemm_size: side of the calibration matmul.

    Returns a dict: `threads`, `rounds`, `steps`, `load_average_before`
    and `_after` (1-minute), `peak` (machine_peak), `gemm` (GFLOP/s of a
    gemm_size^3 matmul per dtype in TensorFlow), `torch` (bool) and `rows`: per
    row its name, dict, `flops` (forward, per image), `params`, per framework
    `<fw>_seconds` (median per call), `<fw>_images_per_s`, `<fw>_setup_seconds`.
    """
    threads = threads or len(os.sched_getaffinity(0))
    with_torch = torch_available() if with_torch is None else with_torch
    frameworks = ["kseg"] + (["torch"] if with_torch else [])
    result = {"threads": threads, "inter_op": inter_op, "rounds": rounds, "steps": steps,
              "gemm_size": gemm_size,
              "load_average_before": round(os.getloadavg()[0], 2), "peak": machine_peak(threads),
              "torch": with_torch, "rows": []}
    # kseg's training rows in a worker started as train.py is, its inference rows
    # in one started as the inference commands are (the module docstring).
    kseg_workers = {}

    def workers_for(row) -> dict:
        inference = row.mode != "train"
        if inference not in kseg_workers:
            kseg_workers[inference] = _Worker("kseg", threads, inter_op, inference)
        return {"kseg": kseg_workers[inference], **torch_worker}

    torch_worker = {}
    try:
        if with_torch:
            torch_worker["torch"] = _Worker("torch", threads, inter_op)
        result["gemm"] = workers_for(Row("train", 1))["kseg"].request("gemm", n=gemm_size)
        for row in rows:
            workers = workers_for(row)
            out = {"name": row.name, "row": row.as_dict()}
            for framework, worker in workers.items():
                info = worker.request("setup", row=row.as_dict(),
                                      warmup=warmup if row.batch <= 4 else min(warmup, 1))
                out[f"{framework}_setup_seconds"] = round(info["setup_seconds"], 1)
                out[f"{framework}_flops"], out["params"] = info["flops"], info["params"]
            times = {framework: [] for framework in workers}
            for r in range(rounds):
                for framework in (frameworks if r % 2 == 0 else frameworks[::-1]):
                    times[framework] += workers[framework].request("time", steps=steps)["seconds"]
            for framework, worker in workers.items():
                worker.request("release")
                seconds = statistics.median(times[framework])
                out[f"{framework}_seconds"] = seconds
                out[f"{framework}_images_per_s"] = row.batch / seconds
            out["flops"] = out["kseg_flops"]
            result["rows"].append(out)
            if progress:
                progress(format_row(out, result))
    finally:
        for worker in [*kseg_workers.values(), *torch_worker.values()]:
            worker.close()
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    return result


def achieved_gflops(out: dict, framework: str = "kseg") -> float:
    """GFLOP/s a row's framework achieved (training: 3 x forward)."""
    per_image = out["flops"] * (3 if out["row"]["mode"] == "train" else 1)
    return per_image * out[f"{framework}_images_per_s"] / 1e9


def format_row(out: dict, result: dict) -> str:
    peak = result["peak"]
    half = out["row"]["precision"] != "fp32"
    gflops = achieved_gflops(out)
    share = gflops / (peak["bf16"] if half else peak["fp32"])
    line = (f"  {out['name']:<34} {out['kseg_images_per_s']:9.2f}")
    if result["torch"]:
        ratio = out["kseg_images_per_s"] / out["torch_images_per_s"]
        line += f" {out['torch_images_per_s']:9.2f} {ratio:8.2f}x"
    line += (f" {gflops:7.0f} {100 * share:5.0f}% {'bf16' if half else 'fp32'}"
             f" {out['kseg_setup_seconds']:6.0f}")
    return line


def checks(result: dict) -> list[str]:
    """The targets of issue 12 that the measured rows allow to check, one line each."""
    by_name = {out["name"]: out for out in result["rows"]}
    lines = []

    targets = [
        ("inference b1: kseg bf16 / PyTorch fp32", "inference b1 bf16", "kseg",
         "inference b1 fp32", "torch", 2.0),
        ("inference b1: kseg bf16 / PyTorch bf16", "inference b1 bf16", "kseg",
         "inference b1 bf16", "torch", 1.2),
        ("inference b1: kseg fp32 / PyTorch fp32", "inference b1 fp32", "kseg",
         "inference b1 fp32", "torch", 1.1),
    ]
    for batch in (1, 10):
        for precision in ("fp32", "bf16"):
            name = f"training b{batch} {precision}"
            targets.append((f"{name}: kseg / PyTorch", name, "kseg", name, "torch", 1.0))
    targets.append(("training b1: kseg bf16 / PyTorch fp32", "training b1 bf16", "kseg",
                    "training b1 fp32", "torch", 1.4))
    for text, a, fa, b, fb, threshold in targets:
        if not result["torch"] or a not in by_name or b not in by_name:
            continue
        value = by_name[a][f"{fa}_images_per_s"] / by_name[b][f"{fb}_images_per_s"]
        lines.append(f"  {text} = {value:.2f} (target >= {threshold}: "
                     f"{'met' if value >= threshold else 'NOT met'})")
    if "inference b1 fp32" in by_name:
        share = achieved_gflops(by_name["inference b1 fp32"]) / result["peak"]["fp32"]
        lines.append(f"  inference b1 fp32 at {100 * share:.0f}% of the derived fp32 peak "
                     f"(target >= 80%: {'met' if share >= 0.8 else 'NOT met'}); "
                     f"{100 * achieved_gflops(by_name['inference b1 fp32']) / result['gemm']['float32']:.0f}% "
                     "of the measured fp32 GEMM rate")
    return lines


def format_result(result: dict) -> list[str]:
    """Lines for BENCHMARKS.md."""
    rows = result["rows"]
    peak, gemm = result["peak"], result.get("gemm", {})
    main = [out for out in rows if "embedded" not in out["name"]]
    width, size = ((main[0]["row"]["width"], main[0]["row"]["size"]) if main else (1.0, 321))
    lines = [f"DeepLab-VGG16 (LargeFOV, {rows[0]['row']['num_classes'] if rows else 21} "
             f"labels): width {width:g} at {size}x{size} unless 'embedded' (width "
             f"{EMBEDDED['width']}, {EMBEDDED['size']}x{EMBEDDED['size']}); "
             f"{result['threads']} intra-op threads in each framework (TF inter-op "
             f"{result['inter_op'] or 'default'}), each in its own process; median of "
             f"{result['rounds']} "
             f"alternating rounds x {result['steps']} step(s) after warm-up; load average "
             f"{result['load_average_before']} before, {result['load_average_after']} after."]
    if main:
        lines.append(f"Forward: {main[0]['flops'] / 1e9:.1f} GFLOP per {size}x{size} image, "
                     f"{main[0]['params'] / 1e6:.1f}M parameters; a training step counts "
                     "3 x forward.")
    lines.append(f"Peak: {peak['how']}. Measured {result['gemm_size']}^3 matmul in "
                 f"TensorFlow: {gemm.get('float32', 0):.0f} GFLOP/s fp32, "
                 f"{gemm.get('bfloat16', 0):.0f} bf16.")
    if not result["torch"]:
        lines.append("PyTorch not measured (not installed? pip install -e '.[bench]'): kseg "
                     "figures only.")
    header = f"  {'row':<34} {'kseg/s':>9}"
    if result["torch"]:
        header += f" {'torch/s':>9} {'ratio':>9}"
    header += f" {'GFLOP/s':>7} {'of peak':>11} {'setup s':>6}"
    lines += ["images/s (kseg, PyTorch), kseg/PyTorch, kseg's achieved GFLOP/s and share of "
              "the derived peak of its precision, kseg's setup (build, trace/compile, warm-up):",
              header]
    lines += [format_row(out, result) for out in rows]
    mismatch = [out["name"] for out in rows
                if result["torch"] and out["kseg_flops"] != out.get("torch_flops")]
    if mismatch:
        lines.append(f"warning: kseg and PyTorch count different FLOPs for {mismatch}")
    found = checks(result)
    if found:
        lines += ["Targets (issue 12):"] + found
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("kseg", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--inter_op", type=int, default=0)
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        _worker_loop(args.worker, args.threads or len(os.sched_getaffinity(0)), args.inter_op)
        return
    result = benchmark_network([Row.parse(r) for r in args.rows.split(",")], args.threads,
                               args.rounds, inter_op=args.inter_op,
                               progress=lambda line: print(line, file=sys.stderr, flush=True))
    print("\n".join(format_result(result)))


if __name__ == "__main__":
    main()
