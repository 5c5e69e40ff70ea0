"""A Vertex AI ScheduleService on loopback, answering its v1 REST calls as the reference says.

What it serves, from the Vertex AI v1 REST reference
(`projects.locations.schedules`; the paths the client sends are in
google/cloud/aiplatform_v1/services/schedule_service/transports/rest_base.py):
- `POST /v1/{parent}/schedules` (create): the body is a Schedule; it needs a
  `displayName`, a `cron`, a positive `maxConcurrentRunCount` and a
  `createPipelineJobRequest` whose `parent` is the schedule's and whose
  PipelineJob has a `pipelineSpec` and a `runtimeConfig.gcsOutputDirectory`.
  It answers the Schedule with its output-only fields (`name`
  `projects/{project}/locations/{location}/schedules/{id}`, `state` ACTIVE,
  `createTime`, `updateTime`, `nextRunTime`, `startedRunCount`).
- `GET /v1/{name}` (get), `GET /v1/{parent}/schedules` (list, with
  `pageSize`/`pageToken` and `nextPageToken`; a `filter` is refused as not
  emulated).
- `POST /v1/{name}:pause`: only an ACTIVE schedule ("Will mark
  Schedule.state to 'PAUSED'"); `POST /v1/{name}:resume` with an optional
  `catchUp`: only a PAUSED one ("Only paused Schedule can be resumed").
  Both answer Empty; otherwise FAILED_PRECONDITION.
- `DELETE /v1/{name}`: a finished long-running Operation (metadata
  `DeleteOperationMetadata`, response Empty).
Errors are Google's JSON error body (`{"error": {"code", "message", "status"}}`),
and enums are numbers when the client asks `$alt=json;enum-encoding=int`, as
the REST transport does.

Not proven by it: authentication and IAM, the service's own validation of
the PipelineSpec and of the cron (time zones, ranges), project numbers in
returned names, filters and server-side ordering, runs being started at the
scheduled times, and the gRPC transport.
"""

import datetime
import http.server
import json
import threading
import urllib.parse
from typing import Any
from typing import Dict
from typing import List
from typing import Optional

_STATES = {"ACTIVE": 1, "PAUSED": 2, "COMPLETED": 3}
_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND"}


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeVertex(http.server.ThreadingHTTPServer):
  """The ScheduleService of one Vertex AI endpoint; `requests` records every call."""

  def __init__(self, page_size: int = 2):
    super().__init__(("127.0.0.1", 0), _Handler)
    self.page_size = page_size
    self.requests: List[Dict[str, Any]] = []
    self.schedules: Dict[str, Dict[str, Any]] = {}
    self._next_id = 1000
    self._lock = threading.Lock()

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.server_address[1]}"

  def new_id(self) -> int:
    with self._lock:
      self._next_id += 1
      return self._next_id

  def __enter__(self):
    threading.Thread(target=self.serve_forever, daemon=True).start()
    return self

  def __exit__(self, *exc):
    self.shutdown()
    self.server_close()


class _Error(Exception):
  def __init__(self, code: int, message: str, status: Optional[str] = None):
    super().__init__(message)
    self.code, self.message, self.status = code, message, status or _CODES[code]


def _split(path: str):
  """`(collection parent, schedule name, verb)` of a /v1/ path, or raises NOT_FOUND."""
  if not path.startswith("/v1/"):
    raise _Error(404, f"Unknown path {path}.")
  resource, _, verb = path[len("/v1/") :].partition(":")
  parts = resource.split("/")
  if len(parts) == 5 and parts[0] == "projects" and parts[2] == "locations":
    if parts[4] == "schedules":
      return resource.rsplit("/", 1)[0], None, verb
  if len(parts) == 6 and parts[0] == "projects" and parts[2] == "locations":
    if parts[4] == "schedules":
      return None, resource, verb
  raise _Error(404, f"Unknown path {path}.")


class _Handler(http.server.BaseHTTPRequestHandler):
  server: FakeVertex
  timeout = 10

  def _send(self, status: int, body: Dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json; charset=UTF-8")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def _handle(self, method: str) -> None:
    url = urllib.parse.urlsplit(self.path)
    query = urllib.parse.parse_qs(url.query)
    length = int(self.headers.get("Content-Length") or 0)
    raw = self.rfile.read(length) if length else b""
    body = json.loads(raw) if raw else None
    self.server.requests.append({"method": method, "path": url.path, "query": query, "body": body})
    int_enums = "enum-encoding=int" in ";".join(query.get("$alt", []))
    try:
      status, answer = self._route(method, url.path, query, body)
    except _Error as e:
      status, answer = e.code, {"error": {"code": e.code, "message": e.message, "status": e.status}}
    self._send(status, _encode_enums(answer, int_enums))

  def _route(self, method, path, query, body):
    parent, name, verb = _split(path)
    schedules = self.server.schedules
    if parent is not None and not verb:
      if method == "POST":
        return 200, self._create(parent, body or {})
      if method == "GET":
        return 200, self._list(parent, query)
    if name is not None:
      if name not in schedules:
        raise _Error(404, f"Schedule {name} is not found.")
      schedule = schedules[name]
      if method == "GET" and not verb:
        return 200, schedule
      if method == "DELETE" and not verb:
        del schedules[name]
        parent_location = name.rsplit("/schedules/", 1)[0]
        return 200, {
          "name": f"{parent_location}/operations/{self.server.new_id()}",
          "metadata": {
            "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
            "genericMetadata": {"createTime": _now(), "updateTime": _now()},
          },
          "done": True,
          "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }
      if method == "POST" and verb in ("pause", "resume"):
        wanted, becomes = ("ACTIVE", "PAUSED") if verb == "pause" else ("PAUSED", "ACTIVE")
        if schedule["state"] != wanted:
          raise _Error(
            400,
            f"Schedule {name} is {schedule['state']}; only {wanted} schedules can be {verb}d.",
            "FAILED_PRECONDITION",
          )
        schedule["state"] = becomes
        now = _now()
        schedule["updateTime"] = now
        schedule["lastPauseTime" if verb == "pause" else "lastResumeTime"] = now
        if verb == "resume":
          schedule["catchUp"] = bool((body or {}).get("catchUp", False))
        return 200, {}
    raise _Error(404, f"No method {method} {path}.")

  def _create(self, parent: str, schedule: Dict[str, Any]) -> Dict[str, Any]:
    if not schedule.get("displayName"):
      raise _Error(400, "Schedule.display_name is required.")
    if not schedule.get("cron"):
      raise _Error(400, "Schedule.cron is required.")
    if int(schedule.get("maxConcurrentRunCount", 0)) <= 0:
      raise _Error(400, "Schedule.max_concurrent_run_count must be positive.")
    request = schedule.get("createPipelineJobRequest")
    if not request:
      raise _Error(400, "Schedule.create_pipeline_job_request is required.")
    if request.get("parent") != parent:
      raise _Error(
        400, f"create_pipeline_job_request.parent {request.get('parent')!r} is not {parent}."
      )
    job = request.get("pipelineJob", {})
    if not job.get("pipelineSpec"):
      raise _Error(400, "pipeline_job.pipeline_spec is required.")
    if not job.get("runtimeConfig", {}).get("gcsOutputDirectory"):
      raise _Error(400, "pipeline_job.runtime_config.gcs_output_directory is required.")
    name = f"{parent}/schedules/{self.server.new_id()}"
    now = _now()
    created = {
      **schedule,
      "name": name,
      "state": "ACTIVE",
      "createTime": now,
      "updateTime": now,
      "nextRunTime": now,
      "startedRunCount": "0",
    }
    self.server.schedules[name] = created
    return created

  def _list(self, parent: str, query: Dict[str, List[str]]) -> Dict[str, Any]:
    if query.get("filter"):
      raise _Error(400, "This emulator does not evaluate list filters.")
    page_size = int(query.get("pageSize", [self.server.page_size])[0])
    start = int(query.get("pageToken", ["0"])[0] or 0)
    mine = [s for n, s in self.server.schedules.items() if n.startswith(parent + "/")]
    page = mine[start : start + page_size]
    answer: Dict[str, Any] = {"schedules": page}
    if start + page_size < len(mine):
      answer["nextPageToken"] = str(start + page_size)
    return answer

  def do_GET(self):
    self._handle("GET")

  def do_POST(self):
    self._handle("POST")

  def do_DELETE(self):
    self._handle("DELETE")

  def log_message(self, *args):
    pass


def _encode_enums(value, int_enums: bool):
  """Schedule states as numbers when the client asked for `enum-encoding=int`."""
  if isinstance(value, dict):
    return {
      k: (
        _STATES[v] if k == "state" and int_enums and v in _STATES else _encode_enums(v, int_enums)
      )
      for k, v in value.items()
    }
  if isinstance(value, list):
    return [_encode_enums(v, int_enums) for v in value]
  return value
