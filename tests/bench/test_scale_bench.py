"""Tests of the scale benchmark's memory sampling, size parsing and table."""

import subprocess
import sys
import time

import pytest

from bench import scale_bench


def test_the_sampler_counts_the_memory_of_child_processes():
  # A parent that starts a child holding 200 MB, then waits for it.
  script = (
    "import subprocess, sys; subprocess.run([sys.executable, '-c', "
    '\'import time; b = bytearray(200 * 2**20); b[::4096] = b"x" * len(b[::4096]); '
    "time.sleep(3)'])"
  )
  process = subprocess.Popen([sys.executable, "-c", script])
  with scale_bench.TreeMemorySampler(process.pid, 0.1) as sampler:
    process.wait()
  assert sampler.peak() > 200 * 2**20
  start = sampler.samples[0][0]
  assert sampler.peak(start - 10, start - 5) is None
  assert sampler.peak(start, time.time()) == sampler.peak()


def test_sizes_are_parsed_and_bad_sizes_named():
  assert scale_bench._parse_sizes("50_000,1000000") == [50000, 1000000]
  with pytest.raises(ValueError, match="comma-separated example counts, got '50k'"):
    scale_bench._parse_sizes("50k")
  with pytest.raises(ValueError, match="at least 1,000, got '10'"):
    scale_bench._parse_sizes("10")


def test_table_has_a_row_per_component_and_a_column_pair_per_size():
  def result(size, seconds):
    return {
      "num_examples": size,
      "wall_seconds": seconds * 3,
      "peak_rss_mb": 1000.0,
      "microseconds_per_example": seconds * 3 / size * 1e6,
      "components": {"Trainer": {"seconds": seconds, "peak_rss_mb": 900.0}},
      "evaluator_examples_per_second": 3000,
      "top_1": 0.66,
      "top_3": 0.9,
    }

  lines = scale_bench.table([result(50000, 10.0), result(1000000, 100.0)]).splitlines()
  assert "50,000 ex" in lines[0] and "1,000,000 ex" in lines[0]
  assert lines[2].split() == ["Trainer", "10.0", "900.0", "100.0", "900.0"]
  assert lines[3].split() == ["whole", "run", "30.0", "1000.0", "300.0", "1000.0"]
  assert lines[5].split() == ["evaluator", "examples/s", "3,000", "3,000"]
  assert lines[6].split() == ["top-1", "0.6600", "0.6600"]
