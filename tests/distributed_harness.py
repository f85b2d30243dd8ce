"""Starting multi-process jobs from a test: a free port, a CPU-friendly environment, torchrun-style
launching with a deadline, and a launcher that stops the other ranks when one fails."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment for child processes: one thread each, offline, quiet, fastmma importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1", TRITON_INTERPRET="1", FASTMMA_DIST_TIMEOUT="60")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    env.update(extra)
    return env


@dataclass
class RankResult:
    rank: int
    returncode: int
    output: str            # stdout and stderr together
    killed: bool           # stopped by the launcher because another rank failed


@dataclass
class JobResult:
    ranks: list[RankResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.returncode == 0 for r in self.ranks)

    def describe(self) -> str:
        return "\n".join(f"--- rank {r.rank} exited {r.returncode}{' (killed)' if r.killed else ''} ---\n"
                         f"{r.output[-6000:]}" for r in self.ranks)


def launch_ranks(args: list[str], log_dir: Path, world_size: int = 2, timeout_s: float = 120.0,
                 kill_peers_after_s: float = 0.0) -> JobResult:
    """Run `python3 <args>` once per rank with torchrun's environment variables.

    When a rank exits non-zero, the others get `kill_peers_after_s` seconds to end by themselves and
    are then killed, so a failure never leaves the job hanging. After `timeout_s` every rank is killed
    and a TimeoutError raised.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    started = time.monotonic()
    processes, logs = [], []
    for rank in range(world_size):
        log = open(log_dir / f"rank{rank}.log", "w+")
        env = child_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        processes.append(subprocess.Popen([sys.executable, *args], env=env, cwd=REPO_ROOT, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        logs.append(log)
    killed = [False] * world_size
    first_failure = None
    try:
        while any(p.poll() is None for p in processes):
            now = time.monotonic()
            if now - started > timeout_s:
                _kill_all(processes, killed)
                raise TimeoutError(f"the {world_size}-rank job did not end within {timeout_s:.0f} s:\n"
                                   + _read_logs(logs))
            if first_failure is None and any(p.returncode not in (None, 0) for p in processes):
                first_failure = now
            if first_failure is not None and now - first_failure >= kill_peers_after_s:
                _kill_all(processes, killed)
            time.sleep(0.05)
    finally:
        _kill_all(processes, killed)
    results = []
    for rank, (process, log) in enumerate(zip(processes, logs)):
        log.seek(0)
        results.append(RankResult(rank, process.returncode, log.read(), killed[rank]))
        log.close()
    return JobResult(results, time.monotonic() - started)


def run_torchrun(args: list[str], log_dir: Path, nproc: int = 2, timeout_s: float = 120.0,
                 env: dict[str, str] | None = None) -> JobResult:
    """`torchrun --standalone --nproc_per_node nproc <args>`, with each rank's output in its own file.

    Returns one RankResult per rank (its output) plus, as rank -1, torchrun's own exit code and output.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "--max_restarts=0", "--log_dir", str(log_dir / "torchrun"), "--redirects", "3", *args]
    started = time.monotonic()
    try:
        completed = subprocess.run(command, env=child_env(**(env or {})), cwd=REPO_ROOT, capture_output=True, text=True,
                                   timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise TimeoutError(f"torchrun did not end within {timeout_s:.0f} s: {err.stderr}") from err
    seconds = time.monotonic() - started
    ranks = [RankResult(-1, completed.returncode, completed.stdout + completed.stderr, False)]
    for rank in range(nproc):
        files = sorted((log_dir / "torchrun").glob(f"**/attempt_0/{rank}/std*.log"))
        ranks.append(RankResult(rank, completed.returncode, "".join(f.read_text() for f in files), False))
    return JobResult(ranks, seconds)


def _kill_all(processes, killed) -> None:
    for index, process in enumerate(processes):
        if process.poll() is None:
            killed[index] = True
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _read_logs(logs) -> str:
    texts = []
    for rank, log in enumerate(logs):
        log.flush()
        log.seek(0)
        texts.append(f"--- rank {rank} ---\n{log.read()[-4000:]}")
    return "\n".join(texts)
