"""The run report: every section and image, as parsed HTML and as rendered by headless Chromium."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import types

import numpy as np
import pytest
from ml_metadata.proto import metadata_store_pb2
from PIL import Image
from tensorflow_metadata.proto.v0 import statistics_pb2

from next_category.pipeline.reports import html_report as run_report
from next_category.pipeline.reports import run_summary
from tests.pipeline import report_checks

_SLICES = [
  (
    "Overall",
    {"example_count": 100.0, "sparse_categorical_accuracy": 0.61, "top_3_accuracy": 0.85},
  ),
  (
    "user_segment=new",
    {"example_count": 40.0, "sparse_categorical_accuracy": 0.58, "top_3_accuracy": 0.8},
  ),
  (
    "user_segment=returning",
    {"example_count": 60.0, "sparse_categorical_accuracy": 0.63, "top_3_accuracy": 0.88},
  ),
]
_EVAL_CONFIG = {
  "model_specs": [{"label_key": "label"}],
  "metrics_specs": [
    {
      "metrics": [
        {
          "class_name": "SparseCategoricalAccuracy",
          "per_slice_thresholds": [
            {
              "threshold": {
                "value_threshold": {"lower_bound": 0.5},
                "change_threshold": {"absolute": -1e-10},
              }
            }
          ],
        }
      ]
    }
  ],
}


def _dataset(num_examples, segment_shares, history_quantiles, item_counts):
  """Statistics of one split as TFDV writes them, for three kinds of feature."""
  dataset = statistics_pb2.DatasetFeatureStatistics(num_examples=num_examples)
  segment = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.STRING)
  segment.path.step.append("user_segment")
  for value, share in segment_shares.items():
    segment.string_stats.rank_histogram.buckets.add(label=value, sample_count=share * num_examples)
  history = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.INT)
  history.path.step.append("item_history")
  history.num_stats.common_stats.max_num_values = int(history_quantiles[-1])
  for low, high in zip(history_quantiles[:-1], history_quantiles[1:], strict=True):
    history.num_stats.common_stats.num_values_histogram.buckets.add(
      low_value=low, high_value=high, sample_count=num_examples / 4
    )
  histogram = history.num_stats.histograms.add(type=statistics_pb2.Histogram.STANDARD)
  for i, count in enumerate(item_counts):
    histogram.buckets.add(low_value=i * 1000, high_value=(i + 1) * 1000, sample_count=count)
  return dataset


def _run_data(blessed=True, drift=True):
  components = [
    run_summary.ComponentRun("ImportExampleGen", "COMPLETE", 4.2, {}),
    run_summary.ComponentRun("Trainer", "COMPLETE", 41.5, {}),
    run_summary.ComponentRun("Evaluator", "COMPLETE", 12.0, {}),
  ]
  summary = run_summary.RunSummary(
    run_id="20261130-101010.000001",
    components=components,
    anomalies={"train": [], "eval": []},
    slice_metrics=_SLICES,
    blessed=blessed,
    pushed_path="/out/serving/next_category/1796030859" if blessed else None,
    pushed_version="1796030859" if blessed else None,
    drift=(2, 1, [["user_segment", "L_INFTY", 0.31, 0.1], ["item_history", "JSD", 0.01, 0.05]])
    if drift
    else (1, 0, []),
  )
  train = _dataset(80, {"new": 0.4, "returning": 0.6}, [1, 5, 9, 20, 50], [10, 30, 20, 40])
  evaluation = _dataset(20, {"new": 0.35, "returning": 0.65}, [1, 4, 10, 22, 50], [2, 8, 5, 5])
  previous = _dataset(100, {"new": 0.7, "returning": 0.3}, [1, 3, 6, 15, 40], [30, 30, 20, 20])
  confusion = np.array([[30.0, 5.0, 5.0], [4.0, 20.0, 6.0], [2.0, 3.0, 25.0]])
  return run_report.RunData(
    summary=summary,
    eval_config=_EVAL_CONFIG,
    validation=None
    if blessed
    else {
      "metricValidationsPerSlice": [
        {
          "failures": [
            {
              "metricKey": {"name": "sparse_categorical_accuracy"},
              "metricThreshold": {"valueThreshold": {"lowerBound": 0.5}},
              "metricValue": {"doubleValue": 0.2024},
            }
          ]
        }
      ]
    },
    confusion=confusion,
    class_names=["books", "games", "music"],
    curves={
      "train": {
        "batch_loss": [(100, 1.9), (200, 1.6), (300, 1.5), (400, 1.44)],
        "batch_accuracy": [(100, 0.27), (200, 0.41), (300, 0.48), (400, 0.53)],
      },
      "validation": {
        "evaluation_loss_vs_iterations": [(400, 1.31)],
        "evaluation_accuracy_vs_iterations": [(400, 0.61)],
      },
    },
    statistics={"train": train, "eval": evaluation},
    previous_statistics=(1, previous) if drift else None,
    tflite_metrics={
      "blessed": True,
      "reason": "Blessed: int8 top-1 accuracy 61.09% vs the SavedModel's 61.13%.",
      "size_bytes": {"int8_tflite": 280000, "float_tflite": 1040000, "int8_to_float_ratio": 0.27},
      "accuracy": {
        "examples": 100,
        "accuracy": {"int8_tflite": 0.6109, "float_tflite": 0.6113, "saved_model": 0.6113},
      },
      "latency": {
        "int8_tflite": {"p50_us": 59.0, "p99_us": 120.0, "mean_us": 65.0, "calls": 1000},
        "float_tflite": {"p50_us": 68.0, "p99_us": 150.0, "mean_us": 70.0, "calls": 1000},
        "saved_model": {"p50_us": 1650.0, "p99_us": 3000.0, "mean_us": 1700.0, "calls": 1000},
        "fastest_float": "float_tflite",
      },
      "pushed": True,
      "pushed_version": "1796030859",
      "pushed_destination": "/out/tflite/next_category/1796030859",
    },
    baseline_uri="/out/pipeline/Trainer/model/3" if drift else None,
    model_uri="/out/pipeline/Trainer/model/9",
  )


def _text(page):
  """The page's words, tags removed, whitespace collapsed."""
  return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def test_every_section_and_image_of_a_blessed_run_with_drift():
  page = run_report.render(_run_data(), links={"statistics": "statistics.html"})
  images = report_checks.check_report(page)
  assert images == {
    "run": ["component times"],
    "evaluation": ["accuracy and top-3 per slice"],
    "confusion": ["confusion matrix"],
    "training": ["training and validation curves"],
    "tuning": [],
    "data": ["item_history distributions", "user_segment distributions"],
    "drift": ["drift measurements", "item_history distributions", "user_segment distributions"],
    "tflite": ["tflite size latency accuracy"],
    "blessing": [],
    "push": [],
  }
  text = _text(page)
  # Train vs eval, and this span vs the previous one: TFDV's L-infinity distance.
  assert "L-infinity distance 0.0500" in text
  assert "L-infinity distance 0.3000" in text
  assert re.search(r"user_segment=returning\s+60\s+0\.6300\s+0\.8800", text)
  assert "must be at least 0.5" in text
  assert "Model blessed." in text
  assert "Baseline model: /out/pipeline/Trainer/model/3" in text
  assert "top-1 accuracy 0.6100 on the whole eval split is at least 0.5, and no worse" in text
  assert "SavedModel version 1796030859 pushed" in text
  assert "int8 TFLite version 1796030859 shipped" in text
  assert '<a href="statistics.html">statistics</a>' in page


def test_an_unblessed_first_run_says_why_and_what_is_missing():
  data = _run_data(blessed=False, drift=False)
  data.tflite_metrics = None
  data.curves = {}
  page = run_report.render(data)
  images = report_checks.check_report(page)
  assert images["drift"] == [] and images["tflite"] == [] and images["training"] == []
  text = _text(page)
  assert "Model NOT blessed." in text
  assert "No baseline model: no model was serving or blessed before this run." in text
  assert re.search(r"Overall\s+sparse_categorical_accuracy\s+0\.2024", text)
  assert "Span 1 is the first span: nothing to compare with." in text
  assert "No TFLite conversion in this run." in text
  assert "No Tuner in this run" in text
  assert "No SavedModel was pushed in this run." in text


def test_a_tuned_run_shows_the_best_values_and_every_trial(tmp_path):
  best = {"learning_rate": 0.009, "dropout": 0.0, "hidden_dim": 64, "num_layers": 2}
  (tmp_path / "best").mkdir()
  (tmp_path / "best" / "best_hyperparameters.txt").write_text(json.dumps({"values": best}))
  (tmp_path / "results").mkdir()
  trials = [
    {"trial_id": "1", "score": 0.6312, **best},
    {"trial_id": "0", "score": 0.5987, **dict(best, learning_rate=0.001, num_layers=1)},
  ]
  (tmp_path / "results" / "tuner_results.json").write_text(json.dumps(trials))
  results = types.SimpleNamespace(uri=str(tmp_path / "results"))
  data = _run_data()
  data.best_hyperparameters, data.tuner_trials = run_report._read_tuning(
    str(tmp_path / "best"), results
  )
  text = _text(run_report.render(data))
  assert (
    "best values over the preset's: dropout 0, hidden_dim 64, learning_rate 0.009, num_layers 2."
    in text
  )
  assert re.search(r"1\s+0\.6312\s+0\s+64\s+0\.009\s+2\s+0\s+0\.5987\s+0\s+64\s+0\.001\s+1", text)
  # A Tuner whose files are missing (a failed run) shows no values and breaks nothing.
  assert run_report._read_tuning(str(tmp_path / "none"), None) == (None, [])


def test_write_links_the_gate_pages_and_the_log(tmp_path):
  data = _run_data()
  run_dir = tmp_path / "reports" / data.summary.run_id
  run_dir.mkdir(parents=True)
  (run_dir / "anomalies.html").write_text("<html></html>")
  path = run_report.write(data, str(tmp_path / "reports"), str(tmp_path / "logs" / "run.log"))
  assert path == str(run_dir / "index.html")
  page = open(path).read()
  assert '<a href="anomalies.html">anomalies</a>' in page
  assert '<a href="../../logs/run.log">log</a>' in page


def test_confusion_matrix_from_tfma_plots():
  class Result:
    plots = [
      ((("user_segment", "new"),), {}),
      (
        (),
        {
          "": {
            "": {
              "multiClassConfusionMatrixAtThresholds": {
                "matrices": [
                  {
                    "entries": [
                      {"predictedClassId": 1, "numWeightedExamples": 3.0},
                      {"actualClassId": 2, "predictedClassId": 2, "numWeightedExamples": 5.0},
                      {"actualClassId": 1, "numWeightedExamples": 2.0},
                    ]
                  }
                ]
              }
            }
          }
        },
      ),
    ]

  matrix = run_report._confusion_from_plots(Result())  # pylint: disable=protected-access
  np.testing.assert_array_equal(matrix, [[0, 3, 0], [2, 0, 0], [0, 0, 5]])


def test_gate_verdict_in_one_line():
  validation = metadata_store_pb2.Artifact()
  validation.properties["span"].int_value = 2
  props = validation.custom_properties
  props["previous_span"].int_value = 1
  props["blocking"].int_value = 0
  props["tolerated"].string_value = json.dumps(["[eval] user_segment: ENUM_TYPE_UNEXPECTED"])
  props["drift"].string_value = json.dumps([["user_segment", "L_INFTY", 0.2, 0.1]])
  assert run_summary.gate_verdict(validation) == (
    "Data gate passed: no blocking anomalies; 1 tolerated ([eval] user_segment: "
    "ENUM_TYPE_UNEXPECTED); drift of span 2 against span 1: over the threshold for user_segment"
  )


def test_make_report_without_metadata_is_a_clear_error(tmp_path, capsys):
  assert run_report.main([f"--output_root={tmp_path}"]) == 2
  assert f"no ML Metadata at {tmp_path}/metadata.sqlite; run the pipeline first" in (
    capsys.readouterr().err
  )


# Collects console errors and checks every image once the page has loaded; the
# result goes into the DOM, which --dump-dom prints.
_CHECKER = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(
  "error: " + (e.message || (e.target && (e.target.src || e.target.tagName)))), true);
for (const level of ["error", "warn"]) {
  const original = console[level];
  console[level] = (...args) => {
    window.__errors.push(level + ": " + args.join(" ")); original(...args);
  };
}
window.addEventListener("load", () => {
  const results = [];
  for (const img of document.images) {
    let verdict = "ok";
    if (!img.complete || img.naturalWidth === 0) {
      verdict = "not decoded";
    } else {
      const canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      const context = canvas.getContext("2d");
      context.drawImage(img, 0, 0);
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
      let min = 255, max = 0;
      for (let i = 0; i < pixels.length; i += 4) {
        const grey = (pixels[i] + pixels[i + 1] + pixels[i + 2]) / 3;
        if (grey < min) min = grey; if (grey > max) max = grey;
      }
      if (max - min < 10) verdict = "blank";
    }
    const rendered = img.getBoundingClientRect();
    if (rendered.width < 50 || rendered.height < 50) verdict += " (drawn too small)";
    results.push(img.alt + "=" + verdict);
  }
  const out = document.createElement("pre");
  out.id = "__result";
  out.textContent = JSON.stringify({images: results, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def _chromium():
  return shutil.which("chromium") or shutil.which("chromium-browser")


def render_in_chromium(page_path: str, profile_dir: str) -> dict:
  """Opens a report in headless Chromium; returns its images' verdicts and console errors."""
  page = open(page_path).read()
  checked = os.path.join(os.path.dirname(page_path), "checked-" + os.path.basename(page_path))
  with open(checked, "w") as f:
    # First in <head>, so it sees every error of the page.
    f.write(page.replace("<head>", "<head>" + _CHECKER, 1))
  result = subprocess.run(
    [
      _chromium(),
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
      f"--user-data-dir={profile_dir}",
      "--enable-logging=stderr",
      "--v=0",
      "--virtual-time-budget=10000",
      "--window-size=1280,1024",
      "--dump-dom",
      "file://" + checked,
    ],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  match = re.search(r'<pre id="__result">(.*?)</pre>', result.stdout, re.S)
  assert match, f"Chromium printed no result (exit {result.returncode}):\n{result.stderr[-3000:]}"
  verdicts = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
  # Chromium's own log of the page's console (e.g. errors before our hook).
  verdicts["errors"] += [
    line for line in result.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()
  ]
  return verdicts


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium package is not installed.")
def test_report_renders_in_headless_chromium(tmp_path):
  data = _run_data()
  path = run_report.write(data, str(tmp_path / "reports"))
  verdicts = render_in_chromium(path, str(tmp_path / "profile"))
  assert verdicts["errors"] == []
  assert len(verdicts["images"]) == 10
  assert all(v.endswith("=ok") for v in verdicts["images"]), verdicts["images"]


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium package is not installed.")
def test_chromium_check_catches_a_blank_image_and_a_console_error(tmp_path):
  page = run_report.render(_run_data())
  # A white PNG instead of the first plot, and a script that logs an error.
  buffer = io.BytesIO()
  Image.new("RGB", (200, 120), "white").save(buffer, format="PNG")
  white = base64.b64encode(buffer.getvalue()).decode()
  page = re.sub(r"base64,[^\"]+", "base64," + white, page, count=1)
  page = page.replace("</body>", "<script>console.error('boom')</script></body>")
  path = tmp_path / "index.html"
  path.write_text(page)
  verdicts = render_in_chromium(str(path), str(tmp_path / "profile"))
  assert verdicts["images"][0].startswith("component times=blank")
  assert any("boom" in e for e in verdicts["errors"])


def test_thresholds_are_keyed_by_the_metric_name_of_old_and_new_configs():
  new_config = {
    "metrics_specs": [
      {
        "metrics": [
          {
            "class_name": "SparseTopKAccuracy",
            "module": "next_category.components.evaluator.metrics",
            "config": '"top_k": 1, "name": "sparse_categorical_accuracy"',
            "per_slice_thresholds": [{"threshold": {"value_threshold": {"lower_bound": 0.6}}}],
          }
        ]
      }
    ]
  }
  assert run_report._thresholds(new_config) == {"sparse_categorical_accuracy": {"lower_bound": 0.6}}
  assert run_report._thresholds(_EVAL_CONFIG) == {
    "sparse_categorical_accuracy": {"lower_bound": 0.5, "change": -1e-10}
  }
