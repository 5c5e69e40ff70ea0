"""What a pipeline run shows on the terminal, and the log file that gets the rest.

A run shows one line per component as it starts and as it ends (state and
time), the Trainer's progress, the data gate's verdict and the summary.
Everything else the process writes (Beam, absl, TensorFlow's C++ logs) goes to
the run's log file: file descriptors 1 and 2 themselves are redirected, so C++
code and every subprocess (Beam workers, Trainer workers) write there too.

On a terminal the line of what is running now (and the Trainer's progress) is
rewritten in place; anywhere else (CI logs, pipes) every line is a plain line
with no control characters, and progress is printed every quarter.

This module imports no TensorFlow: the runners set it up before TensorFlow is
imported, since TensorFlow logs at import.
"""

import contextlib
import datetime
import io
import json
import os
import sys
import threading
import time
from typing import Callable
from typing import Dict
from typing import Iterator
from typing import Optional
from typing import TextIO
from typing import Tuple

from next_category.components.trainer import progress

_CLEAR_LINE = "\r\x1b[K"
# How often the Trainer's progress file is read.
_POLL_SECONDS = 0.25
# Without a terminal, progress is printed at these fractions of the steps.
_PLAIN_PROGRESS_MARKS = (0.25, 0.5, 0.75)
_NAME_WIDTH = 28


def _duration(seconds: float) -> str:
  if seconds < 60:
    return f"{seconds:.1f} s"
  return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


class Console:
  """Writes the run's own lines to the real terminal (or stream), one thread at a time.

  Args:
    stream: where lines go (the terminal's stdout before redirection).
    error_stream: where error lines go.
    interactive: rewrite the status line in place (a terminal, not verbose).
  """

  def __init__(self, stream: TextIO, error_stream: TextIO, interactive: bool):
    self.stream = stream
    self.error_stream = error_stream
    self.interactive = interactive
    self._lock = threading.RLock()
    self._status = ""
    self._running: Dict[str, float] = {}
    self._trainer_status = ""
    self._trainer_phase_start = (None, 0.0)
    self._plain_marks_done = set()
    self._drawn = ""

  def _width(self) -> int:
    try:
      columns = os.get_terminal_size(self.stream.fileno()).columns
    except (OSError, ValueError):
      columns = 0
    # A pseudo-terminal may report no width at all.
    return columns if columns >= 40 else 120

  def _draw_status(self) -> None:
    if self.interactive and self._status:
      self.stream.write(_CLEAR_LINE + self._status[: self._width() - 1])
      self.stream.flush()
      self._drawn = self._status

  def line(self, text: str, error: bool = False) -> None:
    """Prints a permanent line (above the status line on a terminal)."""
    with self._lock:
      if self.interactive and self._drawn:
        self.stream.write(_CLEAR_LINE)
        self.stream.flush()
        self._drawn = ""
      stream = self.error_stream if error else self.stream
      stream.write(text + "\n")
      stream.flush()
      self._draw_status()

  def _set_status(self) -> None:
    now = time.monotonic()
    if self._trainer_status and "Trainer" in self._running:
      phase, since = self._trainer_phase_start
      self._status = self._trainer_status
      if phase != "train":
        self._status += f" ({now - since:.0f} s)"
    elif self._running:
      self._status = "  " + ", ".join(
        f"{name} running ({now - start:.0f} s)" for name, start in self._running.items()
      )
    else:
      self._status = ""
    if not self.interactive or self._status == self._drawn:
      return
    if self._status:
      self._draw_status()
    else:
      self.stream.write(_CLEAR_LINE)
      self.stream.flush()
      self._drawn = ""

  def component_started(self, node_id: str) -> None:
    with self._lock:
      self._running[node_id] = time.monotonic()
      if not self.interactive:
        self.line(f"{_clock()}  {node_id:<{_NAME_WIDTH}} started")
      self._set_status()

  def component_ended(self, node_id: str, state: str, detail: str = "") -> None:
    with self._lock:
      start = self._running.pop(node_id, time.monotonic())
      if node_id == "Trainer":
        self._trainer_status = ""
      self._set_status()
      seconds = _duration(time.monotonic() - start)
      suffix = f"  {detail}" if detail else ""
      self.line(f"{_clock()}  {node_id:<{_NAME_WIDTH}} {state:<9} {seconds:>10}{suffix}")

  def trainer_progress(self, report: Dict[str, float]) -> None:
    """Shows one report of `next_category.components.trainer.progress`."""
    with self._lock:
      text = progress.describe(report)
      self._trainer_status = f"  Trainer: {text}"
      if report.get("phase") != self._trainer_phase_start[0]:
        self._trainer_phase_start = (report.get("phase"), time.monotonic())
      if self.interactive:
        self._set_status()
        return
      # Plain output: a line at each quarter of the steps, and for each phase.
      total = report.get("total") or 0
      mark = report.get("phase", "")
      if report.get("phase") == "train" and total:
        reached = [m for m in _PLAIN_PROGRESS_MARKS if report["step"] >= m * total]
        mark = f"train {max(reached)}" if reached else ""
      if mark and mark not in self._plain_marks_done:
        self._plain_marks_done.add(mark)
        self.line(self._trainer_status)

  def refresh(self) -> None:
    """Redraws the elapsed times of running components (called periodically)."""
    with self._lock:
      if self.interactive and self._running:
        self._set_status()


def _clock() -> str:
  return datetime.datetime.now().strftime("%H:%M:%S")


class _ProgressWatcher(threading.Thread):
  """Reads the Trainer's progress file as it grows and shows each report."""

  def __init__(self, path: str, console: Console):
    super().__init__(name="trainer-progress", daemon=True)
    self._path = path
    self._console = console
    self._stopped = threading.Event()
    self._offset = 0

  def run(self) -> None:
    while not self._stopped.wait(_POLL_SECONDS):
      self.poll()
      self._console.refresh()

  def poll(self) -> None:
    try:
      with open(self._path) as f:
        f.seek(self._offset)
        text = f.read()
    except OSError:
      return
    # Only whole lines: the Trainer may be writing the next one.
    complete = text[: text.rfind("\n") + 1]
    self._offset += len(complete.encode())
    for line in complete.splitlines():
      try:
        self._console.trainer_progress(json.loads(line))
      except (ValueError, KeyError, TypeError):
        continue

  def stop(self) -> None:
    self._stopped.set()
    self.join()
    self.poll()


def _on_fd(stream: TextIO, fd: int) -> bool:
  try:
    return stream.fileno() == fd
  except (OSError, ValueError, io.UnsupportedOperation):
    return False


@contextlib.contextmanager
def _redirected_fds(log_path: str, out: TextIO, err: TextIO) -> Iterator[Tuple[TextIO, TextIO]]:
  """Points fds 1 and 2 at `log_path`; yields streams that still reach `out` and `err`.

  A stream on fd 1 or 2 (a terminal, a pipe) is replaced by one on a copy of
  the original descriptor; a stream with no descriptor (pytest's capture) is
  used as it is.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  saved_out, saved_err = os.dup(1), os.dup(2)
  log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  with contextlib.ExitStack() as stack:
    if _on_fd(out, 1):
      out = stack.enter_context(open(os.dup(saved_out), "w"))
    if _on_fd(err, 2):
      err = stack.enter_context(open(os.dup(saved_err), "w"))
    try:
      os.dup2(log_fd, 1)
      os.dup2(log_fd, 2)
      yield out, err
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(saved_out, 1)
      os.dup2(saved_err, 2)
      for fd in (saved_out, saved_err, log_fd):
        os.close(fd)


class Run:
  """A run's console, log file and Trainer progress channel (see `open_run`)."""

  def __init__(self, console: Console, log_path: Optional[str], progress_path: str):
    self.console = console
    self.log_path = log_path
    self.progress_path = progress_path
    self.discarded = False

  def discard(self) -> None:
    """Leaves no log behind: the run stopped before it started (bad flags or paths)."""
    self.discarded = True

  def rename_log(self, run_id: str) -> None:
    """Names the log after the pipeline run once its id is known (the file stays open)."""
    if not self.log_path:
      return
    target = os.path.join(os.path.dirname(self.log_path), f"{run_id}.log")
    if target != self.log_path:
      os.replace(self.log_path, target)
      self.log_path = target

  @contextlib.contextmanager
  def python_streams_on_console(self) -> Iterator[None]:
    """Sends sys.stdout and sys.stderr to the console (e.g. for argparse's usage and errors)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = self.console.stream, self.console.error_stream
    try:
      yield
    finally:
      sys.stdout, sys.stderr = saved


@contextlib.contextmanager
def open_run(output_root: str, verbose: bool, stream: TextIO = None) -> Iterator[Run]:
  """Sets up the console for one run: the log file, fd redirection and the progress watcher.

  Args:
    output_root: the run's OUTPUT_ROOT; the log goes to OUTPUT_ROOT/logs/.
    verbose: show everything on the terminal (no log file, plain lines).
    stream: the terminal stream (default: sys.stdout as it is now).

  Yields:
    The `Run`.
  """
  stream = stream or sys.stdout
  logs_dir = os.path.join(os.path.abspath(output_root), "logs")
  # Directories this run creates, removed again if the run is discarded.
  created = []
  directory = logs_dir
  while not os.path.isdir(directory):
    created.append(directory)
    directory = os.path.dirname(directory)
  os.makedirs(logs_dir, exist_ok=True)
  started = datetime.datetime.now().strftime("%Y%m%d-%H%M%S.%f")
  progress_path = os.path.join(logs_dir, f".trainer-progress-{started}-{os.getpid()}.jsonl")
  open(progress_path, "w").close()
  saved_env = os.environ.get(progress.ENV_VAR)
  # The Trainer (and its worker subprocesses) find the channel here.
  os.environ[progress.ENV_VAR] = progress_path
  run = None
  try:
    if verbose:
      run = Run(Console(stream, sys.stderr, interactive=False), None, progress_path)
      with _watching(run):
        yield run
      return
    log_path = os.path.join(logs_dir, f"{started}.log")
    with _redirected_fds(log_path, stream, sys.stderr) as (out, err):
      run = Run(Console(out, err, interactive=_is_terminal(out)), log_path, progress_path)
      with _watching(run):
        yield run
  finally:
    if saved_env is None:
      os.environ.pop(progress.ENV_VAR, None)
    else:
      os.environ[progress.ENV_VAR] = saved_env
    with contextlib.suppress(OSError):
      os.remove(progress_path)
    if run is not None and run.discarded:
      with contextlib.suppress(OSError):
        if run.log_path:
          os.remove(run.log_path)
        for directory in created:
          os.rmdir(directory)


def _is_terminal(stream: TextIO) -> bool:
  try:
    return stream.isatty()
  except (OSError, ValueError):
    return False


@contextlib.contextmanager
def _watching(run: Run) -> Iterator[None]:
  watcher = _ProgressWatcher(run.progress_path, run.console)
  watcher.start()
  try:
    yield
  finally:
    watcher.stop()


@contextlib.contextmanager
def following_components(
  console: Console, describe_end: Callable[[str, object], Tuple[str, str]]
) -> Iterator[None]:
  """Reports every component the orchestrator launches in this process as it starts and ends.

  Both the Beam and the local DAG runner launch each node in process through
  TFX's `Launcher.launch` (tfx/orchestration/beam/beam_dag_runner.py
  `PipelineNodeAsDoFn._run_node`, tfx/orchestration/local/local_dag_runner.py
  `run_with_ir`), so wrapping it sees every node whichever runner runs.

  Args:
    console: where the lines go.
    describe_end: called with the node id and what `launch` returned once a
      node ends; returns its state (COMPLETE, CACHED, ...) and a detail shown
      on its line (may be "").
  """
  from tfx.orchestration.portable import launcher  # pylint: disable=g-import-not-at-top

  original = launcher.Launcher.launch

  def launch(self):
    node_id = self._pipeline_node.node_info.id  # pylint: disable=protected-access
    console.component_started(node_id)
    try:
      result = original(self)
    except BaseException as e:
      message = (str(e).strip().splitlines() or [""])[0]
      console.component_ended(node_id, "FAILED", f"{type(e).__name__}: {message}"[:200])
      raise
    console.component_ended(node_id, *describe_end(node_id, result))
    return result

  launcher.Launcher.launch = launch
  try:
    yield
  finally:
    launcher.Launcher.launch = original
