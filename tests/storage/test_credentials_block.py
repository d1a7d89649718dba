"""S3 and SQS credentials from a prefect-aws ``AwsCredentials`` block (``DESRA_AWS_CREDENTIALS_BLOCK`` in the
worker's environment), against the real S3 API server with IAM authentication on: the block's keys open what
they may and nothing else, with nothing in the environment; a wrong or missing block is one sentence that names
it and the URL, never the secret."""

from __future__ import annotations

import re
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from desra.pipeline.objects import CREDENTIALS_BLOCK_VARIABLE, Bucket
from desra_core.errors import AccessDeniedError, ConfigError, StorageError

from .conftest import SECRET, RecordingMotoServer

prefect_aws = pytest.importorskip("prefect_aws", reason="needs prefect-aws (the aws-block extra)")


def _shown(error: BaseException) -> str:
    return str(error) + repr(error) + "".join(traceback.format_exception(error))


@pytest.fixture
def block_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The worker's environment names a block, and holds no AWS keys of its own."""
    name = f"desra-s3-{uuid.uuid4().hex[:8]}"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv(CREDENTIALS_BLOCK_VARIABLE, name)
    yield name


def _save(name: str, key_id: str, secret: str, **more: Any) -> None:
    prefect_aws.AwsCredentials(aws_access_key_id=key_id, aws_secret_access_key=secret, **more).save(name,
                                                                                                  overwrite=True)


def test_the_blocks_keys_open_what_they_may_and_nothing_else(s3_bucket_name: str, iam_user: dict[str, str],
                                                             block_only: str) -> None:
    from moto.core.authorization import enable_iam_authentication

    _save(block_only, iam_user["id"], iam_user["secret"], region_name="us-east-1")
    url = f"s3://{s3_bucket_name}/drop"
    with enable_iam_authentication():
        bucket = Bucket.at(url)
        assert bucket.read("open/a.png") == b"pixels"
        bucket.write("open/b.png", b"more")
        assert [i.key for i in bucket.list("open")] == ["open/a.png", "open/b.png"]  # the listing client too
        with pytest.raises(AccessDeniedError, match=re.escape(f"{url}/closed/a.png")) as denied:
            bucket.read("closed/a.png")
    assert iam_user["secret"] not in _shown(denied.value)


def test_a_wrong_secret_in_the_block_is_refused_without_showing_it(s3_bucket_name: str, iam_user: dict[str, str],
                                                                   block_only: str) -> None:
    from moto.core.authorization import enable_iam_authentication

    _save(block_only, iam_user["id"], SECRET)  # the right key id, a wrong secret
    url = f"s3://{s3_bucket_name}/drop"
    with enable_iam_authentication(), pytest.raises(StorageError,
                                                    match=re.escape(f"credentials for {url}/open/a.png")) as caught:
        Bucket.at(url).read("open/a.png")
    assert SECRET not in _shown(caught.value)


def test_a_block_that_does_not_exist_is_named(s3_bucket_name: str, block_only: str) -> None:
    url = f"s3://{s3_bucket_name}/drop"
    with pytest.raises(ConfigError, match=rf"AwsCredentials block named '{block_only}' "
                                          rf"\({CREDENTIALS_BLOCK_VARIABLE}\) on the Prefect API for {url}"):
        Bucket.at(url).read("open/a.png")


def test_the_block_endpoint_and_the_sqs_queue(s3_env: RecordingMotoServer, s3_bucket_name: str,
                                              block_only: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block's own endpoint (``aws_client_parameters.endpoint_url``) takes the place of ``AWS_ENDPOINT_URL``,
    for S3 and for the bridge's SQS queue."""
    import boto3

    from desra.pipeline.watch import SQSQueue

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    _save(block_only, "AKIADESRABLOCK000001", "block-secret", region_name="eu-west-1",
          aws_client_parameters={"endpoint_url": s3_env.endpoint})
    bucket = Bucket.at(f"s3://{s3_bucket_name}/via-block")
    bucket.write("x.bin", b"through the block's endpoint")
    assert bucket.read("x.bin") == b"through the block's endpoint"
    assert any(s.method == "PUT" and s.path.endswith("/via-block/x.bin") for s in s3_env.app.log)

    sqs = boto3.client("sqs", endpoint_url=s3_env.endpoint, region_name="eu-west-1", aws_access_key_id="AKIADESRATEST",
                       aws_secret_access_key="setup")
    url = sqs.create_queue(QueueName=f"desra-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="{}")
    queue = SQSQueue(url)
    assert queue.arn().startswith("arn:aws:sqs:eu-west-1:")  # the block's region
    assert len(queue.receive(wait_s=0, visibility_s=30)) == 1
