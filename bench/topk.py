#!/usr/bin/env python
"""Scoring benchmark: users/s of exact top-k (recstream, plain torch, faiss flat) and of approximate indexes.

Item 3 of the benchmark issue. For each catalog size N (``--sizes``) and batch size B (``--batches``)
it measures, in one process and interleaved (every repetition runs each method once, in a rotating
order, so that noise from other jobs on the machine hits all of them alike):

* ``recstream_score_topk``: recstream's own path, as the worker uses it: an
  :class:`scoring.topk.ItemMatrix` built with ``upsert`` and :func:`scoring.topk.score_topk` called
  with empty exclusions and no history (no ``because`` explanation, a cost that does not depend on N);
  the result is turned into integer row ids (B x k ``int()`` calls, included in the time);
* ``torch_topk``: plain ``torch.topk(queries @ items.T, k)`` on the same device and dtype;
* ``faiss_flat_ip``: faiss ``IndexFlatIP.search`` (always on the CPU: faiss-gpu is not installed);

and, at the largest N, approximate indexes, with their build time and recall@k against the exact
top-k of the same queries:

* ``faiss_ivf_flat``: ``IndexIVFFlat`` (inner product), ``--nlist`` lists (default round(sqrt(N))),
  trained on ``--ivf-train-per-list`` x nlist items, one method per ``--nprobe`` value;
* ``faiss_hnsw_flat``: ``IndexHNSWFlat`` (M ``--hnsw-m``, efConstruction ``--hnsw-ef-construction``),
  one method per ``--ef-search`` value. On a small machine building HNSW on a million 384-d vectors
  takes many minutes, so it is built on the first ``--hnsw-size`` items (a random sample: the items
  are i.i.d.) and timed against a faiss flat index of the same subsample.

Figures: users/s = B / median seconds per call (median of the repetitions after one warm-up call
per method; the repetition count is scaled so that a cell takes about ``--cell-target-s``, at least
``--min-reps``; a cell whose round, each method once, takes more than ``--slow-round-s`` gets 2
repetitions, and when that is expected from the previous batch size it gets no separate warm-up
either, so that the 1M x 1,024 cells stay affordable on a small machine); memory: the
bytes of each index/matrix, the RSS growth (and peak RSS growth) while building it, and the peak
RSS growth during a search call (``/proc/self/status`` VmHWM, reset through
``/proc/self/clear_refs`` before each call). With ``--device cuda`` the GPU memory figures come
from ``torch.cuda.max_memory_allocated``.

Data: random unit-norm float32 vectors from a seeded mixture (topics -> clusters -> items, each item
a cluster centre plus variation in a shared low-rank subspace plus isotropic noise), so that nearest
neighbours are structured and an approximate index's recall means something; queries come from
the same distribution (a separate random stream). Smaller N are prefixes of the largest N's items.

One JSON document goes to stdout (``--output`` also writes it to a file); progress goes to stderr.
Exit status 0 on success, 1 on an error (the JSON then has ``error``), 130 when interrupted.

Run from the repository root::

    .venv/bin/python bench/topk.py --output bench/results/topk.json     # full run
    .venv/bin/python bench/topk.py --quick                                  # smoke run, < 1 minute
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):  # bench/ (common.py), then the checkout first
    if _p not in sys.path:
        sys.path.insert(0, _p)

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from recstream.scoring.topk import ItemMatrix, default_dtype, score_topk  # noqa: E402
from common import Guarded, add_run_args, bench_header, cpu_model, finish, mem_total_gib, pkg_version  # noqa: E402

MiB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[scoring {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ settings


@dataclass
class Settings:
    sizes: list[int] = field(default_factory=lambda: [10_000, 100_000, 1_000_000])
    batches: list[int] = field(default_factory=lambda: [1, 16, 128, 1024])
    dim: int = 384
    k: int = 10
    seed: int = 42
    device: str = "cpu"
    threads: int = 0  # 0: the CPUs this process may use
    # timing
    cell_target_s: float = 2.0
    min_reps: int = 3
    max_reps: int = 300
    slow_round_s: float = 6.0
    # data
    clusters: int = 1000
    topics: int = 32
    cluster_spread: float = 1.0
    subspace_rank: int = 32
    subspace_scale: float = 1.25
    noise_scale: float = 0.5
    # approximate indexes (at the largest N)
    ann: list[str] = field(default_factory=lambda: ["ivf", "hnsw"])
    nlist: int = 0  # 0: round(sqrt(N))
    ivf_train_per_list: int = 40
    nprobe: list[int] = field(default_factory=lambda: [4, 16, 64])
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    ef_search: list[int] = field(default_factory=lambda: [32, 64, 128])
    hnsw_size: int = 200_000  # 0: no HNSW; larger than N: N
    quick: bool = False

    def resolved_threads(self) -> int:
        if self.threads > 0:
            return self.threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ------------------------------------------------------------------------------ environment


def loaded_libraries(*needles: str) -> list[str]:
    """Base names of the shared libraries mapped into this process that contain one of ``needles``."""
    found: set[str] = set()
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split()[-1] if line.split() else ""
            base = os.path.basename(path)
            if ".so" in base and any(n in base.lower() for n in needles):
                found.add(base)
    except OSError:
        pass
    return sorted(found)


def machine_info(device: torch.device, threads: int) -> dict:
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem_total_gib(),
        "platform": platform.platform(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "faiss_device": "cpu",
        "threading_libraries": loaded_libraries("gomp", "iomp", "openblas", "mkl"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "faiss": getattr(faiss, "__version__", None) or pkg_version("faiss-cpu"),
        "faiss_compile_options": faiss.get_compile_options().strip() if hasattr(faiss, "get_compile_options") else None,
        "numpy": np.__version__,
        "recstream": pkg_version("recstream"),
    }


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available here (no GPU, or a CPU-only torch)")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"--device {name}: only cpu and cuda are supported")
    return device


# ------------------------------------------------------------------------------ memory probes


class Memory:
    """Resident-set and peak figures of this process (Linux /proc), plus the GPU's when on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.can_reset_peak = self._reset_peak()

    @staticmethod
    def _status_kib(key: str) -> int | None:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith(key):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return None

    def rss(self) -> int | None:
        kib = self._status_kib("VmRSS:")
        return None if kib is None else kib * 1024

    def peak(self) -> int | None:
        kib = self._status_kib("VmHWM:")
        return None if kib is None else kib * 1024

    @staticmethod
    def _reset_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def start(self) -> tuple[int | None, int | None]:
        """Reset the peaks; returns (rss, gpu bytes allocated) before the measured step."""
        ok = self._reset_peak()
        rss = self.rss() if ok else None
        gpu = None
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            gpu = torch.cuda.memory_allocated(self.device)
        return rss, gpu

    def stop(self, before: tuple[int | None, int | None]) -> dict:
        rss0, gpu0 = before
        out: dict = {}
        if rss0 is not None:
            peak, rss = self.peak(), self.rss()
            out["peak_rss_growth"] = None if peak is None else max(0, peak - rss0)
            out["rss_growth"] = None if rss is None else rss - rss0
        if self.cuda and gpu0 is not None:
            torch.cuda.synchronize(self.device)
            out["peak_gpu_growth"] = max(0, torch.cuda.max_memory_allocated(self.device) - gpu0)
            out["gpu_growth"] = torch.cuda.memory_allocated(self.device) - gpu0
        return out


# ------------------------------------------------------------------------------ data


class Mixture:
    """Seeded generator of unit vectors with cluster structure.

    ``topics`` random unit directions; ``clusters`` centres, each ``normalize(topic + spread * g)``
    (``g`` isotropic with unit expected norm); an item of cluster ``c`` is
    ``normalize(centre_c + subspace_scale * z W + noise_scale * g)`` with ``z`` a standard normal in
    a shared ``subspace_rank``-dimensional subspace ``W`` (orthonormal rows, scaled to unit expected
    norm) and ``g`` isotropic noise. Clusters are picked uniformly.
    """

    def __init__(self, s: Settings) -> None:
        self.s = s
        g = torch.Generator().manual_seed(s.seed)
        d = s.dim
        topics = _unit(torch.randn(s.topics, d, generator=g))
        self.centres = _unit(topics[torch.arange(s.clusters) % s.topics] + s.cluster_spread * torch.randn(s.clusters, d, generator=g) / math.sqrt(d))
        rank = max(1, min(s.subspace_rank, d))
        self.basis = torch.linalg.qr(torch.randn(d, rank, generator=g))[0].T.contiguous()  # (rank, d)
        self.rank = rank

    def sample(self, n: int, stream: int, chunk: int = 65_536) -> np.ndarray:
        """``n`` unit float32 vectors from random stream ``stream`` (deterministic for a seed)."""
        s, d = self.s, self.s.dim
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + 7919 * stream + 1)
        out = np.empty((n, d), dtype=np.float32)
        noise = torch.empty(min(chunk, n), d)
        sub_scale = s.subspace_scale / math.sqrt(self.rank)
        for lo in range(0, n, chunk):  # in place, into reused buffers: fresh memory is slow to touch on a VM
            m = min(chunk, n - lo)
            x = torch.from_numpy(out[lo : lo + m])
            c = torch.randint(0, s.clusters, (m,), generator=g)
            torch.index_select(self.centres, 0, c, out=x)
            x.addmm_(torch.randn(m, self.rank, generator=g), self.basis, alpha=sub_scale)
            x.add_(torch.randn(m, d, generator=g, out=noise[:m]), alpha=s.noise_scale / math.sqrt(d))
            x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12))
        return out

    def describe(self) -> dict:
        s = self.s
        return {
            "kind": "seeded mixture: topics -> clusters -> items (synthetic, not real embeddings)",
            "topics": s.topics,
            "clusters": s.clusters,
            "cluster_spread": s.cluster_spread,
            "subspace_rank": self.rank,
            "subspace_scale": s.subspace_scale,
            "noise_scale": s.noise_scale,
            "unit_norm": True,
            "dtype": "float32",
            "items": "smaller N are prefixes of the largest N's items (i.i.d. samples)",
            "queries": "same distribution, separate random stream",
        }


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, p=2, dim=1)


# ------------------------------------------------------------------------------ methods


class Method:
    """One way to get the top-k row ids of a batch of queries."""

    name = "method"
    kind = "exact"
    engine = "cpu"

    def __init__(self, k: int) -> None:
        self.k = k
        self.params: dict = {}
        self.last_scores: np.ndarray | None = None

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params.items() if k in ("nprobe", "ef_search"))
        return f"{self.name}[{extra}]" if extra else self.name

    def build(self, items: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, queries: np.ndarray) -> np.ndarray:
        """(B, k) int64 row ids, best first."""
        raise NotImplementedError

    def index_bytes(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RecstreamTopK(Method):
    """recstream's worker path: ``ItemMatrix.upsert`` + ``score_topk`` with empty exclusions."""

    name = "recstream_score_topk"

    def __init__(self, k: int, device: torch.device) -> None:
        super().__init__(k)
        self.device = device
        self.engine = str(device)
        self.matrix: ItemMatrix | None = None
        self._no_excl: list[tuple] = []

    def build(self, items: np.ndarray) -> None:
        n, d = items.shape
        self.matrix = ItemMatrix(d, self.device, capacity=n)
        self.matrix.upsert([str(i) for i in range(n)], items)
        self.params = {"dtype": str(self.matrix.dtype).replace("torch.", ""), "exclude": "empty", "history": None}

    def search(self, queries: np.ndarray) -> np.ndarray:
        b = len(queries)
        if len(self._no_excl) < b:
            self._no_excl = [()] * b
        res = score_topk(self.matrix, queries, self.k, exclude=self._no_excl[:b])
        return np.array([[int(r.item_id) for r in row] for row in res], dtype=np.int64)

    def index_bytes(self) -> int:
        m = self.matrix
        return m.capacity * m.dim * torch.empty((), dtype=m.dtype).element_size() + m.capacity  # data + valid mask

    def close(self) -> None:
        self.matrix = None


class TorchTopK(Method):
    """Plain ``torch.topk(queries @ items.T, k)``; on the CPU the items tensor shares the benchmark's array."""

    name = "torch_topk"

    def __init__(self, k: int, device: torch.device) -> None:
        super().__init__(k)
        self.device = device
        self.engine = str(device)
        self.dtype = default_dtype(device)  # the same dtype ItemMatrix picks: fp32 on CPU, fp16 on CUDA
        self.items: torch.Tensor | None = None
        self.shares_input = False

    def build(self, items: np.ndarray) -> None:
        t = torch.from_numpy(items)
        self.items = t.to(device=self.device, dtype=self.dtype)
        self.shares_input = self.items.data_ptr() == t.data_ptr()
        self.params = {"dtype": str(self.dtype).replace("torch.", ""), "shares_benchmark_array": self.shares_input}

    def search(self, queries: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            q = torch.from_numpy(queries).to(device=self.device, dtype=self.dtype)
            idx = torch.topk(q @ self.items.T, self.k, dim=1, largest=True, sorted=True).indices
            return idx.cpu().numpy().astype(np.int64, copy=False)

    def index_bytes(self) -> int:
        return self.items.numel() * self.items.element_size()

    def close(self) -> None:
        self.items = None


class FaissFlat(Method):
    """faiss ``IndexFlatIP`` (exact, CPU)."""

    name = "faiss_flat_ip"

    def __init__(self, k: int) -> None:
        super().__init__(k)
        self.index = None

    def build(self, items: np.ndarray) -> None:
        self.index = faiss.IndexFlatIP(items.shape[1])
        self.index.add(items)
        self.params = {"dtype": "float32"}

    def search(self, queries: np.ndarray) -> np.ndarray:
        scores, ids = self.index.search(queries, self.k)
        self.last_scores = scores
        return ids

    def index_bytes(self) -> int:
        return int(self.index.ntotal) * int(self.index.d) * 4

    def close(self) -> None:
        self.index = None


class SharedIndex(Method):
    """A variant (one search parameter) of an approximate index shared with its siblings."""

    kind = "approximate"

    def __init__(self, k: int, holder: dict, setter: Callable, params: dict, name: str) -> None:
        super().__init__(k)
        self.holder = holder
        self.setter = setter
        self.params = params
        self.name = name

    def build(self, items: np.ndarray) -> None:  # built once, by the holder
        raise AssertionError("built by its holder")

    def search(self, queries: np.ndarray) -> np.ndarray:
        index = self.holder["index"]
        self.setter(index)
        return index.search(queries, self.k)[1]

    def index_bytes(self) -> int:
        return self.holder["bytes"]


def build_ivf(items: np.ndarray, s: Settings, k: int) -> tuple[dict, list[Method]]:
    n, d = items.shape
    nlist = s.nlist or max(1, int(round(math.sqrt(n))))
    n_train = min(n, s.ivf_train_per_list * nlist)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    index.train(items[:n_train])
    t_train = time.perf_counter() - t0
    index.add(items)
    t_all = time.perf_counter() - t0
    holder = {
        "index": index,
        "quantizer": quantizer,
        "bytes": n * d * 4 + n * 8 + nlist * d * 4,  # vectors + ids + centroids
        "info": {
            "nlist": nlist,
            "train_points": n_train,
            "kmeans_iterations": int(index.cp.niter),
            "train_s": round(t_train, 2),
            "build_s": round(t_all, 2),
            "n": n,
        },
    }
    variants = []
    for p in s.nprobe:
        p = min(p, nlist)

        def setter(ix, p=p):
            ix.nprobe = p

        variants.append(SharedIndex(k, holder, setter, {"nlist": nlist, "nprobe": p}, "faiss_ivf_flat"))
    return holder, variants


def build_hnsw(items: np.ndarray, s: Settings, k: int) -> tuple[dict, list[Method]]:
    n, d = items.shape
    index = faiss.IndexHNSWFlat(d, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = s.hnsw_ef_construction
    t0 = time.perf_counter()
    index.add(items)
    t_all = time.perf_counter() - t0
    # level-0 links (2M per node) plus upper levels (~1/ln(M) of nodes with M links each), 4-byte ids
    links = int(index.hnsw.neighbors.size()) * 4 if hasattr(index.hnsw, "neighbors") else 0
    holder = {
        "index": index,
        "bytes": n * d * 4 + links,
        "info": {"m": s.hnsw_m, "ef_construction": s.hnsw_ef_construction, "build_s": round(t_all, 2), "n": n},
    }
    variants = []
    for ef in s.ef_search:

        def setter(ix, ef=ef):
            ix.hnsw.efSearch = ef

        variants.append(SharedIndex(k, holder, setter, {"m": s.hnsw_m, "ef_search": ef}, "faiss_hnsw_flat"))
    return holder, variants


# ------------------------------------------------------------------------------ timing


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approx_i ∩ exact_i| / |exact_i| (ids < 0, faiss's "no result", never match)."""
    approx, exact = np.asarray(approx), np.asarray(exact)
    if approx.shape[0] != exact.shape[0]:
        raise ValueError("approx and exact have different numbers of queries")
    if exact.shape[0] == 0:
        return float("nan")
    hits = 0
    total = 0
    for a, e in zip(approx, exact):
        e_set = {int(x) for x in e if x >= 0}
        hits += len(e_set.intersection(int(x) for x in a if x >= 0))
        total += len(e_set)
    return hits / total if total else float("nan")


def time_cell(methods: list[Method], pool: np.ndarray, batch: int, s: Settings, mem: Memory, expected_round_s: float = 0.0) -> dict:
    """Times every method on batches of ``batch`` queries, interleaved; returns per-method figures.

    Normally one warm-up call per method (on ``pool[:batch]``), then ``reps`` rounds, each calling every
    method once in a rotating order on the same queries. When ``expected_round_s`` (extrapolated from
    the previous batch size) is above ``s.slow_round_s``, the cell has no separate warm-up and 2 timed
    rounds (the first on ``pool[:batch]``): one-off first-call costs are then small next to a call.
    The ids of the call on ``pool[:batch]`` are kept (``first_ids``) for the checks.
    """
    per: dict[str, dict] = {m.label: {"times": [], "peak_rss_growth": 0, "peak_gpu_growth": 0, "warmup_s": None} for m in methods}
    first_ids: dict[str, np.ndarray] = {}
    warmup = expected_round_s <= s.slow_round_s
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        if warmup:
            warm_total = 0.0
            for m in methods:
                q = np.ascontiguousarray(pool[:batch])
                before = mem.start()
                t0 = time.perf_counter()
                ids = m.search(q)
                dt = time.perf_counter() - t0
                _merge_mem(per[m.label], mem.stop(before))
                first_ids[m.label] = ids
                per[m.label]["warmup_s"] = dt
                warm_total += dt
            reps = int(math.ceil(s.cell_target_s / max(warm_total, 1e-6)))
            reps = max(s.min_reps, min(s.max_reps, reps))
            if warm_total > s.slow_round_s:
                reps = min(reps, 2)
        else:
            reps = min(2, s.max_reps)
        span = max(1, len(pool) - batch + 1)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for r in range(reps):
            off = 0 if (r == 0 and not warmup) else (r * batch + 1) % span
            q = np.ascontiguousarray(pool[off : off + batch])
            order = methods[r % len(methods) :] + methods[: r % len(methods)]
            for m in order:
                before = mem.start()
                t0 = time.perf_counter()
                ids = m.search(q)
                dt = time.perf_counter() - t0
                _merge_mem(per[m.label], mem.stop(before))
                per[m.label]["times"].append(dt)
                if off == 0 and m.label not in first_ids:
                    first_ids[m.label] = ids
        cpu_per_wall = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
    finally:
        if gc_was:
            gc.enable()
    load1 = round(os.getloadavg()[0], 2)
    out = {}
    for m in methods:
        p = per[m.label]
        t = np.asarray(p["times"])
        med = float(np.median(t))
        row = {
            "method": m.name,
            "kind": m.kind,
            "label": m.label,
            "engine": m.engine,
            "params": m.params,
            "batch": batch,
            "reps": int(t.size),
            "warmup": warmup,
            "users_per_s": round(batch / med, 1),
            "median_ms": round(med * 1000, 4),
            "p25_ms": round(float(np.percentile(t, 25)) * 1000, 4),
            "p75_ms": round(float(np.percentile(t, 75)) * 1000, 4),
            "min_ms": round(float(t.min()) * 1000, 4),
            "warmup_ms": None if p["warmup_s"] is None else round(p["warmup_s"] * 1000, 4),
            "search_peak_rss_growth_mib": _mib(p["peak_rss_growth"]) if mem.can_reset_peak else None,
            # noise indicators of the whole cell: this process's CPU seconds per wall second while the
            # repetitions ran (about the thread count when compute-bound and alone), the 1-min load average
            "cell_cpu_per_wall": round(cpu_per_wall, 2),
            "cell_loadavg_1m": load1,
        }
        if mem.cuda:
            row["search_peak_gpu_growth_mib"] = _mib(p["peak_gpu_growth"])
        out[m.label] = row
    return {"rows": out, "first_ids": first_ids, "reps": reps, "warmup": warmup}


def log_cell(n: int, batch: int, cell: dict) -> None:
    figures = ", ".join(f"{r['label']} {r['users_per_s']:.0f}/s" for r in cell["rows"].values())
    log(f"N={n} B={batch}: {figures} (reps {cell['reps']}{'' if cell['warmup'] else ', no warm-up'})")


def expected_round(cell: dict, batches: list[int], batch: int) -> float:
    """Seconds one round of the next batch size should take: per-user medians of this cell x next batch."""
    later = [b for b in batches if b > batch]
    if not later:
        return 0.0
    return sum(r["median_ms"] / 1000.0 / batch for r in cell["rows"].values()) * later[0]


def _merge_mem(acc: dict, m: dict) -> None:
    for key in ("peak_rss_growth", "peak_gpu_growth"):
        if m.get(key) is not None:
            acc[key] = max(acc[key], m[key])


def _mib(x: int | None) -> float | None:
    return None if x is None else round(x / MiB, 1)


def build_with_memory(method_or_fn, items: np.ndarray, mem: Memory) -> dict:
    gc.collect()
    before = mem.start()
    t0 = time.perf_counter()
    result = method_or_fn(items)
    dt = time.perf_counter() - t0
    m = mem.stop(before)
    return {
        "build_s": round(dt, 3),
        "result": result,
        "rss_growth_mib": _mib(m.get("rss_growth")),
        "peak_rss_growth_mib": _mib(m.get("peak_rss_growth")),
        **({"gpu_growth_mib": _mib(m.get("gpu_growth")), "peak_gpu_growth_mib": _mib(m.get("peak_gpu_growth"))} if mem.cuda else {}),
    }


# ------------------------------------------------------------------------------ the run


def exact_methods(k: int, device: torch.device) -> list[Method]:
    return [RecstreamTopK(k, device), TorchTopK(k, device), FaissFlat(k)]


def run_benchmark(s: Settings) -> dict:
    """Runs the whole measurement described by ``s``; returns the JSON-ready result (without machine facts)."""
    device = resolve_device(s.device)
    threads = s.resolved_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    mem = Memory(device)
    sizes = sorted(set(s.sizes))
    batches = sorted(set(s.batches))
    n_max = sizes[-1]
    if s.k > sizes[0]:
        raise ValueError(f"k={s.k} is larger than the smallest size {sizes[0]}")
    hnsw_n = min(s.hnsw_size, n_max) if "hnsw" in s.ann and s.hnsw_size > 0 else 0

    notes: list[str] = []
    t0 = time.perf_counter()
    mix = Mixture(s)
    items_all = mix.sample(n_max, stream=1)
    pool = mix.sample(max(batches), stream=2)
    data_s = time.perf_counter() - t0
    log(f"data: {n_max} x {s.dim} items and {len(pool)} queries in {data_s:.1f} s; threads {threads}")

    rows: list[dict] = []
    builds: list[dict] = []
    checks: list[dict] = []
    ann_builds: list[dict] = []
    data_stats: list[dict] = []

    for n in sizes:
        items = items_all[:n]
        methods = exact_methods(s.k, device)
        for m in methods:
            b = build_with_memory(m.build, items, mem)
            b.pop("result")
            builds.append(
                {"n": n, "method": m.name, "engine": m.engine, "params": m.params, "index_bytes": m.index_bytes(), "index_mib": _mib(m.index_bytes()), **b}
            )
            log(f"N={n}: built {m.name} in {b['build_s']:.2f} s ({_mib(m.index_bytes())} MiB)")
        ann_holders: list[dict] = []
        if n == n_max and "ivf" in s.ann:
            b = build_with_memory(lambda x: build_ivf(x, s, s.k), items, mem)
            holder, variants = b.pop("result")
            ann_holders.append(holder)
            methods += variants
            ann_builds.append(
                {
                    "method": "faiss_ivf_flat",
                    "n": n,
                    "index_bytes": holder["bytes"],
                    "index_mib": _mib(holder["bytes"]),
                    **holder["info"],
                    **{k: v for k, v in b.items() if k != "build_s"},
                }
            )
            log(f"N={n}: built IVF {holder['info']} ")
        if n == n_max and hnsw_n == n:
            b = build_with_memory(lambda x: build_hnsw(x, s, s.k), items, mem)
            holder, variants = b.pop("result")
            ann_holders.append(holder)
            methods += variants
            ann_builds.append(
                {
                    "method": "faiss_hnsw_flat",
                    "n": n,
                    "index_bytes": holder["bytes"],
                    "index_mib": _mib(holder["bytes"]),
                    **holder["info"],
                    **{k: v for k, v in b.items() if k != "build_s"},
                }
            )
            log(f"N={n}: built HNSW {holder['info']}")

        first_at_max: dict[str, np.ndarray] = {}
        expected = 0.0
        for batch in batches:
            cell = time_cell(methods, pool, batch, s, mem, expected)
            expected = expected_round(cell, batches, batch)
            for r in cell["rows"].values():
                rows.append({"n": n, **r})
            if batch == batches[-1]:
                first_at_max = cell["first_ids"]
                flat = next(m for m in methods if isinstance(m, FaissFlat))
                if flat.last_scores is not None:
                    data_stats.append(
                        {
                            "n": n,
                            "queries": int(len(flat.last_scores)),
                            "mean_top1_cosine": round(float(flat.last_scores[:, 0].mean()), 4),
                            f"mean_top{s.k}_cosine": round(float(flat.last_scores[:, -1].mean()), 4),
                        }
                    )
            log_cell(n, batch, cell)
        checks.extend(compare_to_reference(n, methods, first_at_max))
        for m in methods:
            m.close()
        ann_holders.clear()
        del methods
        gc.collect()

    if hnsw_n and hnsw_n < n_max:
        notes.append(
            f"HNSW was built on a {hnsw_n}-item subsample (the first {hnsw_n} of the i.i.d. items), "
            f"not on all {n_max}: building it on {n_max} x {s.dim} takes many minutes on this machine; "
            "its speed and recall are compared with a faiss flat index of the same subsample, "
            "timed interleaved with it"
        )
        items = items_all[:hnsw_n]
        flat = FaissFlat(s.k)
        b = build_with_memory(flat.build, items, mem)
        b.pop("result")
        builds.append(
            {
                "n": hnsw_n,
                "method": flat.name,
                "engine": flat.engine,
                "params": flat.params,
                "index_bytes": flat.index_bytes(),
                "index_mib": _mib(flat.index_bytes()),
                "purpose": "reference for the HNSW subsample",
                **b,
            }
        )
        b = build_with_memory(lambda x: build_hnsw(x, s, s.k), items, mem)
        holder, variants = b.pop("result")
        ann_builds.append(
            {
                "method": "faiss_hnsw_flat",
                "n": hnsw_n,
                "subsample_of": n_max,
                "index_bytes": holder["bytes"],
                "index_mib": _mib(holder["bytes"]),
                **holder["info"],
                **{k: v for k, v in b.items() if k != "build_s"},
            }
        )
        log(f"N={hnsw_n}: built HNSW {holder['info']}")
        methods = [flat, *variants]
        first_at_max = {}
        expected = 0.0
        for batch in batches:
            cell = time_cell(methods, pool, batch, s, mem, expected)
            expected = expected_round(cell, batches, batch)
            for r in cell["rows"].values():
                rows.append({"n": hnsw_n, "subsample_of": n_max, **r})
            if batch == batches[-1]:
                first_at_max = cell["first_ids"]
            log_cell(hnsw_n, batch, cell)
        checks.extend(compare_to_reference(hnsw_n, methods, first_at_max, subsample_of=n_max))
        for m in methods:
            m.close()
        del methods, holder
        gc.collect()

    cold = sorted({(r["n"], r["batch"]) for r in rows if not r["warmup"]})
    if cold:
        notes.append(
            "cells timed without a separate warm-up call (2 timed rounds; expected to take more than "
            f"--slow-round-s {s.slow_round_s} s a round): " + ", ".join(f"N={n} B={b}" for n, b in cold)
        )
    if not mem.can_reset_peak:
        notes.append("/proc/self/clear_refs is not writable here: peak RSS growth figures are missing")
    if device.type == "cuda":
        notes.append(
            "faiss runs on the CPU (faiss-gpu is not installed); recstream_score_topk and torch_topk run "
            f"on {device} in {default_dtype(device)}; their times include moving the queries to the GPU "
            "and the top-k back"
        )

    result = {
        "data": {**mix.describe(), "generate_s": round(data_s, 2), "neighbour_cosines": data_stats},
        "results": {
            "exact": [r for r in rows if r["kind"] == "exact"],
            "approximate": [r for r in rows if r["kind"] == "approximate"],
            "builds": builds,
            "approximate_builds": ann_builds,
            "checks": checks,
        },
        "notes": notes,
    }
    result["ratios"] = ratios(rows, checks, n_max)
    return result


def compare_to_reference(n: int, methods: list[Method], first_ids: dict[str, np.ndarray], subsample_of: int | None = None) -> list[dict]:
    """Recall@k of every method's warm-up ids at the largest batch against faiss flat's (the reference)."""
    ref = next((m for m in methods if isinstance(m, FaissFlat)), None)
    if ref is None or ref.label not in first_ids:
        return []
    exact = first_ids[ref.label]
    out = []
    for m in methods:
        if m is ref:
            continue
        ids = first_ids[m.label]
        out.append(
            {
                "n": n,
                **({"subsample_of": subsample_of} if subsample_of else {}),
                "method": m.name,
                "label": m.label,
                "kind": m.kind,
                "reference": ref.name,
                "queries": int(len(exact)),
                f"recall_at_{ids.shape[1]}": round(recall_at_k(ids, exact), 4),
                "identical_ranked_lists": round(float(np.mean(np.all(ids == exact, axis=1))), 4),
            }
        )
    return out


def ratios(rows: list[dict], checks: list[dict], n_max: int) -> dict:
    by = {(r["n"], r["batch"], r["label"], r.get("subsample_of")): r for r in rows}
    cells = sorted({(r["n"], r["batch"]) for r in rows if r["kind"] == "exact" and r["method"] != "faiss_flat_ip"})

    def ratio(a: str, b: str) -> list[dict]:
        out = []
        for n, batch in cells:
            ra, rb = by.get((n, batch, a, None)), by.get((n, batch, b, None))
            if ra and rb:
                out.append({"n": n, "batch": batch, "ratio": round(ra["users_per_s"] / rb["users_per_s"], 3)})
        return out

    recall = {(c["n"], c["label"], c.get("subsample_of")): next(v for k, v in c.items() if k.startswith("recall_at_")) for c in checks}
    approx = []
    for r in rows:
        if r["kind"] != "approximate":
            continue
        n, batch, sub = r["n"], r["batch"], r.get("subsample_of")
        flat = by.get((n, batch, "faiss_flat_ip", sub))
        ours = by.get((n, batch, "recstream_score_topk", sub))
        approx.append(
            {
                "n": n,
                "batch": batch,
                "label": r["label"],
                **({"subsample_of": r["subsample_of"]} if "subsample_of" in r else {}),
                "users_per_s": r["users_per_s"],
                "recall_at_k": recall.get((n, r["label"], sub)),
                "speedup_vs_faiss_flat": round(r["users_per_s"] / flat["users_per_s"], 3) if flat else None,
                "speedup_vs_recstream": round(r["users_per_s"] / ours["users_per_s"], 3) if ours else None,
            }
        )
    return {
        "recstream_over_faiss_flat": ratio("recstream_score_topk", "faiss_flat_ip"),
        "torch_over_faiss_flat": ratio("torch_topk", "faiss_flat_ip"),
        "recstream_over_torch": ratio("recstream_score_topk", "torch_topk"),
        "approximate_over_exact": approx,
        "explanation": "ratios of users/s in the same (N, batch) cell: above 1 means the first is faster; "
        "approximate_over_exact compares each approximate variant with the exact methods of the "
        "same N (for an HNSW subsample: the faiss flat index of that subsample)",
    }


# ------------------------------------------------------------------------------ CLI


def int_list(text: str) -> list[int]:
    try:
        values = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("values must be positive integers")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Users/s and memory of exact top-k (recstream, torch, faiss flat) and approximate indexes.",
        epilog="Prints one JSON document to stdout; progress on stderr.",
    )
    p.add_argument("--sizes", type=int_list, help="catalog sizes N (default 10000,100000,1000000; --quick 10000,50000)")
    p.add_argument("--batches", type=int_list, help="query batch sizes (default 1,16,128,1024; --quick 1,64)")
    p.add_argument("--dim", type=int, default=384, help="embedding dimension (default 384)")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--seed", type=int, default=42, help="seed of items and queries (default 42)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where recstream and torch score (faiss: always CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch and faiss OpenMP threads (default: the CPUs this process may use)")
    p.add_argument("--cell-target-s", type=float, default=2.0, help="aim for this many seconds of timed calls per (N, batch) cell (default 2)")
    p.add_argument("--min-reps", type=int, default=3, help="repetitions per method and cell at least (default 3)")
    p.add_argument("--max-reps", type=int, default=300, help="repetitions per method and cell at most (default 300)")
    p.add_argument(
        "--slow-round-s",
        type=float,
        default=6.0,
        help="when one round of a cell (each method once) takes, or is expected from the previous batch "
        "size to take, longer: 2 repetitions, and no separate warm-up when expected (default 6)",
    )
    p.add_argument("--ann", default="ivf,hnsw", help="approximate indexes at the largest N: ivf,hnsw, one, or none")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (default round(sqrt(N)))")
    p.add_argument("--ivf-train-per-list", type=int, default=40, help="IVF training points per list (default 40)")
    p.add_argument("--nprobe", type=int_list, default=[4, 16, 64], help="IVF nprobe sweep (default 4,16,64)")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW M (default 32)")
    p.add_argument("--hnsw-ef-construction", type=int, default=40, help="HNSW efConstruction (default 40)")
    p.add_argument("--ef-search", type=int_list, default=[32, 64, 128], help="HNSW efSearch sweep (default 32,64,128)")
    p.add_argument(
        "--hnsw-size", type=int, default=200_000, help="build HNSW on this many items of the largest N when it is larger (default 200000; 0: no HNSW)"
    )
    add_run_args(p, "smoke run: sizes 10000,50000, batches 1,64")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    ann = [a.strip() for a in args.ann.split(",") if a.strip() and a.strip() != "none"]
    problems = [f"--ann: unknown index {a!r}" for a in ann if a not in ("ivf", "hnsw")]
    if args.k < 1 or args.dim < 1:
        problems.append("-k and --dim must be positive")
    if args.min_reps < 1 or args.max_reps < args.min_reps:
        problems.append("need 1 <= --min-reps <= --max-reps")
    if problems:
        build_parser().error("; ".join(problems))
    return Settings(
        sizes=args.sizes or ([10_000, 50_000] if args.quick else [10_000, 100_000, 1_000_000]),
        batches=args.batches or ([1, 64] if args.quick else [1, 16, 128, 1024]),
        dim=args.dim,
        k=args.k,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        cell_target_s=args.cell_target_s,
        min_reps=args.min_reps,
        max_reps=args.max_reps,
        slow_round_s=args.slow_round_s,
        ann=ann,
        nlist=args.nlist,
        ivf_train_per_list=args.ivf_train_per_list,
        nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        hnsw_ef_construction=args.hnsw_ef_construction,
        ef_search=args.ef_search,
        hnsw_size=args.hnsw_size,
        quick=args.quick,
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    s = settings_from_args(args)
    t_start = time.perf_counter()
    result: dict = {
        **bench_header("recstream scoring (bench/topk.py)", "bench/topk.py", argv),
        "parameters": {
            **asdict(s),
            "threads": s.resolved_threads(),
            "users_per_s": "batch / median seconds per search call",
            "recstream_path": "ItemMatrix.upsert + score_topk(matrix, queries, k, exclude=[()] * B), no history; ids converted to ints",
        },
    }
    with Guarded(result, log) as guard:
        device = resolve_device(s.device)
        torch.set_num_threads(s.resolved_threads())
        faiss.omp_set_num_threads(s.resolved_threads())
        result["machine"] = machine_info(device, s.resolved_threads())
        result["versions"] = versions()
        result.update(run_benchmark(s))
        result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finish(result, t_start, args.output, log)
    return guard.status


if __name__ == "__main__":
    sys.exit(main())
