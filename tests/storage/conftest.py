"""A real S3 API server for the storage tests: moto's ThreadedMotoServer on loopback, one per session.

The server is wrapped (:class:`RecordingApp`) to keep a log of the requests it answered (method, path, the
``Range`` header, status, bytes sent) and to answer a given number of requests with ``503 SlowDown``, so the
tests can check what went over the wire and the retries. The wrapper also answers one request at a time:
moto checks ``If-None-Match``/``If-Match`` in its request handler and stores the object afterwards, without a
lock between the two, so on its threaded server two concurrent conditional PUTs could both pass the check;
S3 itself decides conditional writes atomically, and serialising requests gives moto that guarantee.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server", reason="needs the dev extra (moto[server])")
pytest.importorskip("obstore", reason="needs the s3 extra (obstore)")

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

# A recognisable fake secret: no error message, repr or traceback may ever contain it.
SECRET = "desra-FAKE-secret-Zq81xK"
ACCESS_KEY = "AKIADESRATESTKEY0001"


@dataclass
class Served:
    method: str
    path: str
    query: str
    range: str | None
    status: int = 0
    sent: int = 0


class RecordingApp:
    """WSGI wrapper around moto: one request at a time, a log of them, and injected 503s on demand."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.log: list[Served] = []
        self._faults = 0
        self._fault_method: str | None = None

    def fail_next(self, count: int, method: str | None = None) -> None:
        """Answer the next ``count`` requests (of ``method``, when given) with 503 SlowDown."""
        with self.lock:
            self._faults, self._fault_method = count, method

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            served = Served(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                            environ.get("QUERY_STRING", ""), environ.get("HTTP_RANGE"))
            self.log.append(served)
            if self._faults > 0 and self._fault_method in (None, served.method):
                self._faults -= 1
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                        b"<Message>Please reduce your request rate.</Message></Error>")
                start_response("503 Slow Down", [("Content-Type", "application/xml"),
                                                 ("Content-Length", str(len(body)))])
                served.status, served.sent = 503, len(body)
                return [body]
            statuses: list[str] = []

            def recording_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                statuses.append(status)
                return start_response(status, headers, exc_info)

            result = self.app(environ, recording_start)
            try:
                chunks = [bytes(chunk) for chunk in result]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            served.status = int(statuses[0].split()[0]) if statuses else 0
            served.sent = sum(len(chunk) for chunk in chunks)
            return chunks


class RecordingMotoServer(moto_server.ThreadedMotoServer):
    """moto's ThreadedMotoServer, serving :class:`RecordingApp` around moto's own application."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.app = RecordingApp(DomainDispatcherApplication(create_backend_app))

    def _server_entry(self) -> None:
        self._server = make_server(self._ip_address, self._port, self.app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[RecordingMotoServer]:
    server = RecordingMotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: RecordingMotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RecordingMotoServer:
    """This test's environment: the loopback endpoint and fake credentials, and nothing from the machine's own
    AWS setup (no profile, no config files, no instance metadata lookups)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_RETRY_MODE",
                 "AWS_MAX_ATTEMPTS", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    s3_server.app.fail_next(0)
    return s3_server


@pytest.fixture
def s3_client(s3_env: RecordingMotoServer) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3_env.endpoint)


@pytest.fixture
def s3_bucket_name(s3_client: Any) -> str:
    """A new, empty bucket on the server."""
    name = f"desra-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["s3", "local"])
def root_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty root, once in a bucket (under a prefix) and once as a local folder."""
    if request.param == "s3":
        name = request.getfixturevalue("s3_bucket_name")
        return f"s3://{name}/runs/one"
    root = tmp_path / "root"
    root.mkdir()
    return str(root)


def iam_keys(endpoint: str, user: str, resources: list[str]) -> dict[str, str]:
    """The access key of a new IAM user on the server that may use ``resources`` (S3 ARNs) and nothing else."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint)
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": resources}]}
    iam.put_user_policy(UserName=user, PolicyName="desra-test", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


@pytest.fixture
def iam_user(s3_env: RecordingMotoServer, s3_client: Any, s3_bucket_name: str) -> dict[str, str]:
    """An IAM user that may use ``<bucket>/drop/open/*`` and nothing else in the bucket."""
    for name in ("open", "closed"):
        s3_client.put_object(Bucket=s3_bucket_name, Key=f"drop/{name}/a.png", Body=b"pixels")
    return iam_keys(s3_env.endpoint, f"worker-{s3_bucket_name}",
                    [f"arn:aws:s3:::{s3_bucket_name}", f"arn:aws:s3:::{s3_bucket_name}/drop/open/*"])
