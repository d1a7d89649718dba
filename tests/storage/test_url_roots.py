"""URL prefixes as allowed roots, and the admission of folders given as URLs (pipeline/roots.py, admission.py).

The unit cases compare URLs without any server; the admission cases run against the real S3 API server of
conftest.py (moto on loopback) and read its request log, so "refused before any request" is what went over the
wire, not what a mock was told.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any

import pytest

from desra.pipeline.admission import admit, admit_finetuning, confine
from desra.pipeline.objects import Bucket, LocalBucket
from desra.pipeline.roots import (
    ROOTS_VARIABLE,
    Roots,
    check_apart,
    check_confined,
    parse_roots,
    registered_roots,
    run_paths,
)
from desra_core.errors import ConfigError, StorageError

from .conftest import SECRET, RecordingMotoServer

KNOWN = ("realesrgan_x4plus", "realesrnet_x4plus")
# Known model names: no local path, so a run whose roots are all URLs can be admitted.
OPTIONS = {"mse_model": "realesrnet_x4plus", "gan_model": "realesrgan_x4plus", "segmenter": None}


def _refusal(error: type[Exception], call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(error) as raised:
        call(*args, **kwargs)
    sentence = str(raised.value)
    assert "\n" not in sentence and sentence.startswith("expected "), sentence
    return sentence


# --- Roots: what lies inside a URL root ---------------------------------------------------------------------

def test_a_url_root_holds_itself_and_what_lies_below_by_whole_components() -> None:
    roots = Roots(["s3://drops/a"], ROOTS_VARIABLE)
    for inside in ("s3://drops/a", "s3://drops/a/", "s3://drops/a/x", "s3://drops/a/x/y.png", "S3://drops/a/x"):
        assert roots.contain(inside), inside
    for outside in ("s3://drops/ab", "s3://drops/ab/x", "s3://drops", "s3://drops/b/a", "s3://other/a",
                    "s3://other/a/x", "gs://drops/a", "s3://drops-a", "s3://drops.a/x"):
        assert not roots.contain(outside), outside
    assert Roots(["s3://drops"], ROOTS_VARIABLE).contain("s3://drops/anything/below")


def test_a_path_never_lies_in_a_url_root_nor_a_url_in_a_path_root(tmp_path: Path) -> None:
    assert not Roots(["s3://drops/a"], ROOTS_VARIABLE).contain(Path("/drops/a"))
    assert not Roots(["s3://drops/a"], ROOTS_VARIABLE).contain(Path("s3:/drops/a"))  # what resolve() would make
    assert not Roots([tmp_path], ROOTS_VARIABLE).contain(f"s3://{tmp_path.name}")
    mixed = Roots([tmp_path, "s3://drops/a"], ROOTS_VARIABLE)
    assert mixed.contain(tmp_path / "x") and mixed.contain("s3://drops/a/x")
    assert not mixed.contain(f"s3:/{tmp_path}/x")  # the path's components as a bucket and key


def test_url_roots_are_kept_normalised() -> None:
    roots = Roots(["S3://drops/a/", "s3://drops/a", "s3://drops/b//", "/data"], "the test")
    assert roots.urls == ("s3://drops/a", "s3://drops/b")
    assert roots.paths == (Path(os.path.realpath("/data")),)
    assert roots.describe() == f"the test (s3://drops/a, s3://drops/b, {os.path.realpath('/data')})"


@pytest.mark.parametrize(("url", "problem"), [
    ("s3://drops/a/../b", "a '..' component"),
    ("s3://drops/../a", "a '..' component"),
    ("s3://drops/./a", "a '.' component"),
    ("s3://drops/a/.", "a '.' component"),
    ("s3://drops//a", "an empty component"),
    ("s3://drops/a\\b", "a backslash"),
    ("s3://drops/a\x00b", "a control or non-printable character"),
    ("s3://drops/a\nb", "a control or non-printable character"),
    ("s3://drops/a\u200bb", "a control or non-printable character"),
    ("s3://", "no bucket"),
    ("s3:///a", "no bucket"),
    ("s3://dr\\ops/a", "the bucket"),
    ("s3://drops:9000/a", "the bucket"),
])
def test_a_url_that_could_point_elsewhere_is_refused_never_normalised(url: str, problem: str) -> None:
    for call in (lambda: Roots([url], ROOTS_VARIABLE), lambda: Roots(["s3://drops"], ROOTS_VARIABLE).contain(url),
                 lambda: check_confined({"input_dir": url}, Roots(["s3://drops"], ROOTS_VARIABLE))):
        sentence = _refusal(ConfigError, call)
        assert repr(url) in sentence and f"({problem}" in sentence, sentence
    sentence = _refusal(ConfigError, check_confined, {"labels_dir": url}, Roots(["s3://drops"], ROOTS_VARIABLE))
    assert sentence.startswith("expected labels_dir as scheme://bucket/key")


def test_a_password_in_a_url_is_refused_and_never_shown() -> None:
    url = f"s3://worker:{SECRET}@drops/a"
    for call in (lambda: Roots([url], ROOTS_VARIABLE), lambda: parse_roots(f"/data:{url}"),
                 lambda: parse_roots(f"{url}:/data"),
                 lambda: check_confined({"input_dir": url}, Roots(["s3://drops"], ROOTS_VARIABLE)),
                 lambda: check_apart({"input_dir": url, "output_dir": "s3://drops/out"}),
                 lambda: confine({"mse_model": url}, None)):
        sentence = _refusal(ConfigError, call)
        assert SECRET not in sentence and "s3://***@drops/a" in sentence, sentence


# --- DESRA_ALLOWED_ROOTS ------------------------------------------------------------------------------------

def test_the_colon_of_a_scheme_does_not_separate_roots() -> None:
    roots = parse_roots("s3://drops/in:s3://drops/out:/data/models")
    assert roots is not None
    assert roots.urls == ("s3://drops/in", "s3://drops/out")
    assert roots.paths == (Path(os.path.realpath("/data/models")),)
    roots = parse_roots(" /data : S3://drops/in/ ::s3://other")
    assert roots is not None and roots.urls == ("s3://drops/in", "s3://other")
    assert roots.contain("s3://drops/in/x") and not roots.contain("s3://drops/inx")
    assert parse_roots("s3://drops").urls == ("s3://drops",)  # type: ignore[union-attr]


def test_roots_must_be_absolute_paths_or_urls() -> None:
    sentence = _refusal(ConfigError, parse_roots, "s3://drops/in:data/models")
    assert sentence.startswith(f"expected absolute paths in {ROOTS_VARIABLE}, got 'data/models'")
    assert "scheme:// URL" in sentence
    _refusal(ConfigError, parse_roots, "s3:drops")  # no "//": neither a URL nor an absolute path
    assert "'..' component" in _refusal(ConfigError, parse_roots, "/data:s3://drops/in/../out")


# --- confinement and apartness of URLs ----------------------------------------------------------------------

def test_urls_are_confined_as_urls(tmp_path: Path) -> None:
    roots = parse_roots(f"s3://drops/in:s3://drops/out:{tmp_path}")
    assert roots is not None
    check_confined({"input_dir": "s3://drops/in/batch-1", "output_dir": "s3://drops/out/",
                    "labels_dir": str(tmp_path / "labels")}, roots)
    sentence = _refusal(ConfigError, check_confined, {"output_dir": "s3://drops/outx"}, roots)
    assert sentence == (f"expected output_dir inside the allowed roots, {ROOTS_VARIABLE} (s3://drops/in, "
                        f"s3://drops/out, {tmp_path}), got s3://drops/outx")
    assert "got s3://other/in" in _refusal(ConfigError, check_confined, {"input_dir": "s3://other/in"}, roots)
    sentence = _refusal(ConfigError, check_confined, {"input_dir": "S3://other/in/"}, roots)
    assert sentence.endswith("got S3://other/in/ (normalised to s3://other/in)")
    url_only = parse_roots("s3://drops")
    assert url_only is not None
    assert "labels_dir" in _refusal(ConfigError, check_confined, {"labels_dir": str(tmp_path)}, url_only)
    # a relative path that reads like the bucket's key is a local path, not the URL
    assert "input_dir" in _refusal(ConfigError, check_confined, {"input_dir": "s3:/drops/in"}, url_only)


@pytest.mark.parametrize(("output", "inputs", "relation"), [
    ("s3://drops/in", {"input_dir": "s3://drops/in"}, "is the same folder as input_dir s3://drops/in"),
    ("s3://drops/in/", {"input_dir": "S3://drops/in"}, "is the same folder as input_dir S3://drops/in"),
    ("s3://drops/in/out", {"input_dir": "s3://drops/in"}, "lies inside input_dir s3://drops/in"),
    ("s3://drops", {"labels_dir": "s3://drops/labels"}, "contains labels_dir s3://drops/labels"),
    ("s3://drops/v", {"validate_dir": "s3://drops/v/x"}, "contains validate_dir s3://drops/v/x"),
])
def test_an_output_url_overlapping_an_input_url_is_refused(output: str, inputs: dict[str, str],
                                                            relation: str) -> None:
    sentence = _refusal(ConfigError, check_apart, {**inputs, "output_dir": output})
    assert sentence.startswith(f"expected output_dir apart from {next(iter(inputs))}")
    assert f"which {relation};" in sentence


def test_urls_apart_and_urls_beside_paths_pass(tmp_path: Path) -> None:
    check_apart({"input_dir": "s3://drops/in", "output_dir": "s3://drops/inx"})
    check_apart({"input_dir": "s3://drops/in", "output_dir": "s3://other/in"})
    check_apart({"input_dir": "s3://drops/in", "output_dir": "gs://drops/in"})
    check_apart({"input_dir": str(tmp_path), "output_dir": f"s3://drops{tmp_path}"})
    check_apart({"input_dir": f"s3://drops{tmp_path}", "output_dir": str(tmp_path / "out")})
    check_apart({"input_dir": "s3://drops/in", "labels_dir": str(tmp_path / "labels"),
                 "output_dir": str(tmp_path / "out")})
    assert "'..' component" in _refusal(ConfigError, check_apart,
                                        {"input_dir": "s3://drops/in/../x", "output_dir": "s3://drops/out"})


def test_registered_urls_are_roots_not_paths(tmp_path: Path) -> None:
    roots = registered_roots({"input_dir": "s3://drops/in", "output_dir": "s3://drops/out/",
                              "labels_dir": str(tmp_path), "mse_model": "realesrnet_x4plus", "segmenter": ""},
                             KNOWN, "desra/full")
    assert roots.urls == ("s3://drops/in", "s3://drops/out")
    assert roots.paths == (Path(os.path.realpath(tmp_path)),)
    assert roots.contain("s3://drops/out/run-1") and not roots.contain("s3://drops/outx")


def test_a_segmenter_url_is_named_as_the_url() -> None:
    # "s3://…" also reads as "backend:ARG" (backend "s3"): it must stay the whole URL
    assert run_paths({"segmenter": "s3://models/seg"}, KNOWN) == {"segmenter": "s3://models/seg"}


# --- model parameters given as URLs -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "url"), [("model", "s3://models/net_g.pth"), ("mse_model", "gs://models/net_g.pth"),
                                         ("gan_model", "https://example.org/net_g.pth")])
def test_a_model_url_other_than_an_sr_model_in_s3_is_refused_even_unconfined(name: str, url: str) -> None:
    sentence = _refusal(ConfigError, confine, {name: url}, None)
    assert sentence == (f"expected {name} as a local file or a known name, got the URL {url}; model "
                        "files are read from the worker's disk: copy the weights there (or into the weights cache) "
                        "and pass the path")


def test_sr_models_in_s3_are_confined_as_urls() -> None:
    roots = Roots(["s3://models/released"], ROOTS_VARIABLE)
    confine({"mse_model": "s3://models/released/mse.pth", "gan_model": "s3://models/released/gan.pth"}, roots)
    confine({"mse_model": "s3://models/released/mse.pth"}, None)  # unconfined: allowed
    sentence = _refusal(ConfigError, confine, {"gan_model": "s3://models/releasedx/gan.pth"}, roots)
    assert "gan_model" in sentence and "s3://models/releasedx/gan.pth" in sentence


@pytest.mark.parametrize("spec", ["s3://models/segformer", "segformer:s3://models/segformer"])
def test_a_segmenter_given_as_a_url_is_refused(spec: str) -> None:
    roots = Roots(["s3://models"], ROOTS_VARIABLE)  # even where the URL lies inside the roots
    sentence = _refusal(ConfigError, confine, {"segmenter": spec}, roots)
    assert sentence.startswith("expected segmenter as a local folder or a hub id, got the URL s3://models/segformer;")


def test_fine_tuning_weights_given_as_urls_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROOTS_VARIABLE, raising=False)
    for name in ("vgg_weights", "discriminator"):
        sentence = _refusal(ConfigError, admit_finetuning, str(tmp_path / "out"), {name: "s3://models/w.pth"})
        assert sentence.startswith(f"expected {name} as a local file, got the URL s3://models/w.pth;")
    assert list(tmp_path.iterdir()) == []


def test_a_run_with_a_model_url_is_refused_before_its_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROOTS_VARIABLE, raising=False)
    calls: list[str] = []
    sentence = _refusal(ConfigError, admit, str(tmp_path), str(tmp_path / "out"),
                        {**OPTIONS, "gan_model": "gs://models/net_g.pth"}, check=_recorder(calls))
    assert sentence.startswith("expected gan_model as a local file or a known name, got the URL")
    assert calls == [] and list(tmp_path.iterdir()) == []


# --- admission against a real S3 API ------------------------------------------------------------------------

def _recorder(calls: list[str]) -> Any:
    """A ``check`` for :func:`admit` that records that it ran (instead of loading models and the output root)."""
    def check(settings: Any, output_dir: str, sr: bool) -> dict[str, Any]:
        calls.append(output_dir)
        return {"device": "cpu", "swept": 0, "models": {}}

    return check


def _hides_secret(error: BaseException) -> None:
    for text in (str(error), repr(error), "".join(traceback.format_exception(error))):
        assert SECRET not in text


def test_an_input_bucket_outside_the_roots_is_refused_before_any_request(
        s3_env: RecordingMotoServer, s3_bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOTS_VARIABLE, f"s3://{s3_bucket_name}")
    calls: list[str] = []
    before = len(s3_env.app.log)
    sentence = _refusal(ConfigError, admit, "s3://desra-elsewhere/x", f"s3://{s3_bucket_name}/out", OPTIONS,
                        check=_recorder(calls))
    assert sentence == (f"expected input_dir inside the allowed roots, {ROOTS_VARIABLE} (s3://{s3_bucket_name}), "
                        "got s3://desra-elsewhere/x")
    assert calls == [] and s3_env.app.log[before:] == []


def test_an_output_prefix_that_only_shares_letters_with_a_root_is_refused_before_any_request(
        s3_env: RecordingMotoServer, s3_bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOTS_VARIABLE, f"s3://{s3_bucket_name}/in:s3://{s3_bucket_name}/out")
    calls: list[str] = []
    before = len(s3_env.app.log)
    sentence = _refusal(ConfigError, admit, f"s3://{s3_bucket_name}/in", f"s3://{s3_bucket_name}/outx", OPTIONS,
                        check=_recorder(calls))
    assert sentence.startswith("expected output_dir inside the allowed roots")
    assert sentence.endswith(f"got s3://{s3_bucket_name}/outx")
    # an output root inside the drop is refused as early, though both lie inside the roots
    sentence = _refusal(ConfigError, admit, f"s3://{s3_bucket_name}/in", f"s3://{s3_bucket_name}/in/out", OPTIONS,
                        check=_recorder(calls))
    assert sentence.startswith("expected output_dir apart from input_dir")
    assert calls == [] and s3_env.app.log[before:] == []


def test_an_allowed_input_url_is_probed_with_one_list_request(
        s3_env: RecordingMotoServer, s3_client: Any, s3_bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOTS_VARIABLE, f"s3://{s3_bucket_name}")
    s3_client.put_object(Bucket=s3_bucket_name, Key="in/a.png", Body=b"pixels")
    calls: list[str] = []
    before = len(s3_env.app.log)
    admitted = admit(f"s3://{s3_bucket_name}/in", f"s3://{s3_bucket_name}/out", OPTIONS, check=_recorder(calls))
    assert admitted.device == "cpu" and calls == [f"s3://{s3_bucket_name}/out"]
    sent = s3_env.app.log[before:]
    assert [(r.method, r.status) for r in sent] == [("GET", 200)], sent
    assert "list-type=2" in sent[0].query and "max-keys=1" in sent[0].query and "prefix=in%2F" in sent[0].query
    assert sent[0].sent < 2000  # the listing of one key at most, not the drop


def test_an_allowed_input_url_in_a_missing_bucket_is_named(
        s3_env: RecordingMotoServer, s3_bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = f"{s3_bucket_name}-none"
    monkeypatch.setenv(ROOTS_VARIABLE, f"s3://{s3_bucket_name}:s3://{missing}")
    with pytest.raises(StorageError) as raised:
        admit(f"s3://{missing}/in", f"s3://{s3_bucket_name}/out", OPTIONS, check=_recorder([]))
    assert str(raised.value) == f"expected an existing bucket for s3://{missing}/in, got no bucket {missing!r}"
    assert raised.value.url == f"s3://{missing}/in"
    _hides_secret(raised.value)


def test_refused_credentials_are_named_without_the_secret(
        s3_env: RecordingMotoServer, s3_client: Any, s3_bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto.core.authorization import enable_iam_authentication

    iam = boto3.client("iam", endpoint_url=s3_env.endpoint)
    user = f"reader-{s3_bucket_name}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv(ROOTS_VARIABLE, f"s3://{s3_bucket_name}")
    url = f"s3://{s3_bucket_name}/in"
    with enable_iam_authentication():
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        admit(url, f"s3://{s3_bucket_name}/out", OPTIONS, check=_recorder([]))  # the right secret passes
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # the right key id, a wrong secret
        with pytest.raises(StorageError) as raised:
            admit(url, f"s3://{s3_bucket_name}/out", OPTIONS, check=_recorder([]))
    assert str(raised.value).startswith(f"expected valid credentials for {url}, got credentials that the server "
                                        "refused")
    _hides_secret(raised.value)
    assert key["SecretAccessKey"] not in str(raised.value) + repr(raised.value)


def test_a_url_folder_is_checked_against_the_roots_when_admitted_alone(
        s3_env: RecordingMotoServer, s3_bucket_name: str) -> None:
    from desra.pipeline.admission import admit_folders

    before = len(s3_env.app.log)
    roots = Roots([f"s3://{s3_bucket_name}/in"], ROOTS_VARIABLE)
    sentence = _refusal(ConfigError, admit_folders, {"labels_dir": f"s3://{s3_bucket_name}/labels"}, roots)
    assert sentence.startswith("expected labels_dir inside the allowed roots")
    assert s3_env.app.log[before:] == []
    assert "'gs'" in _refusal(ConfigError, admit_folders, {"input_dir": "gs://drops/in"}, None)


def test_a_local_bucket_is_readable_when_its_folder_exists(tmp_path: Path) -> None:
    Bucket.at(str(tmp_path)).check_readable()
    missing = LocalBucket(tmp_path / "none")
    with pytest.raises(StorageError, match="expected an existing folder for"):
        missing.check_readable()


# --- SR models fetched from a bucket ------------------------------------------------------------------------

def _checked(seen: list[tuple[str, str]]) -> Any:
    """A ``check`` for :func:`admit` that records the model files it was given, and their bytes' first byte."""
    def check(settings: Any, output_dir: str, sr: bool) -> dict[str, Any]:
        for name in ("mse_model", "gan_model"):
            path = getattr(settings, name)
            seen.append((name, Path(path).read_bytes()[:1].decode()))
            assert os.path.isabs(path) and Path(path).is_file()
        return {"device": "cpu", "swept": 0, "models": {}}

    return check


def test_sr_models_in_a_bucket_are_fetched_once_per_content(
        tmp_path: Path, s3_env: RecordingMotoServer, s3_client: Any, s3_bucket_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESRA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(ROOTS_VARIABLE, f"{tmp_path}:s3://{s3_bucket_name}/models")
    big = b"M" + os.urandom(12 << 20)  # more than one 10 MB chunk of the streamed download
    s3_client.put_object(Bucket=s3_bucket_name, Key="models/mse.pth", Body=big)
    s3_client.put_object(Bucket=s3_bucket_name, Key="models/gan v2.pth", Body=b"G-weights")
    urls = {"mse_model": f"s3://{s3_bucket_name}/models/mse.pth",
            "gan_model": f"s3://{s3_bucket_name}/models/gan v2.pth"}
    (tmp_path / "in").mkdir()
    seen: list[tuple[str, str]] = []
    admitted = admit(str(tmp_path / "in"), str(tmp_path / "out"), {**OPTIONS, **urls}, check=_checked(seen))
    assert seen == [("mse_model", "M"), ("gan_model", "G")]
    mse, gan = Path(admitted.settings.mse_model), Path(admitted.settings.gan_model)
    assert mse.read_bytes() == big and gan.read_bytes() == b"G-weights" and gan.name == "gan v2.pth"
    assert str(tmp_path / "cache") in str(mse) and not list(mse.parent.parent.glob(".*"))  # no staging file left

    start = len(s3_env.app.log)  # a second run on this worker: one HEAD per model, nothing downloaded
    again = admit(str(tmp_path / "in"), str(tmp_path / "out"), {**OPTIONS, **urls}, check=_checked(seen))
    assert again.settings.mse_model == str(mse)
    assert sorted(r.method for r in s3_env.app.log[start:] if "/models/" in r.path) == ["HEAD", "HEAD"]

    s3_client.put_object(Bucket=s3_bucket_name, Key="models/gan v2.pth", Body=b"H-weights")  # replaced
    third = admit(str(tmp_path / "in"), str(tmp_path / "out"), {**OPTIONS, **urls}, check=_checked(seen))
    assert Path(third.settings.gan_model).read_bytes() == b"H-weights" and third.settings.gan_model != str(gan)
    assert seen[-1] == ("gan_model", "H")


def test_a_missing_model_object_is_named_before_the_checks(
        tmp_path: Path, s3_env: RecordingMotoServer, s3_bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESRA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(ROOTS_VARIABLE, raising=False)
    (tmp_path / "in").mkdir()
    calls: list[str] = []
    url = f"s3://{s3_bucket_name}/models/none.pth"
    with pytest.raises(StorageError) as raised:
        admit(str(tmp_path / "in"), str(tmp_path / "out"), {**OPTIONS, "gan_model": url}, check=_recorder(calls))
    assert str(raised.value) == f"expected an object at {url}, got none"
    assert calls == []
    _hides_secret(raised.value)


def test_a_model_url_outside_the_roots_is_refused_before_any_request(
        tmp_path: Path, s3_env: RecordingMotoServer, s3_bucket_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOTS_VARIABLE, f"{tmp_path}:s3://{s3_bucket_name}/models")
    (tmp_path / "in").mkdir()
    start = len(s3_env.app.log)
    sentence = _refusal(ConfigError, admit, str(tmp_path / "in"), str(tmp_path / "out"),
                        {**OPTIONS, "mse_model": f"s3://{s3_bucket_name}/modelsx/mse.pth"}, check=_recorder([]))
    assert "mse_model" in sentence and "modelsx" in sentence
    assert s3_env.app.log[start:] == []
