"""The allowed-roots policy (pipeline/roots.py): what lies inside a root, after links and ``..``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from desra.pipeline.roots import (
    ROOTS_VARIABLE,
    Roots,
    check_confined,
    model_path,
    parse_roots,
    registered_roots,
    run_paths,
    segmenter_path,
)
from desra_core import ConfigError

KNOWN = ("realesrgan_x4plus", "realesrnet_x4plus")


@pytest.fixture
def tree(tmp_path):
    """/data/drop (with a.png), /data/drop2, /data/out, /secret (with s.png)."""
    for folder in ("data/drop", "data/drop2", "data/out", "secret"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "data/drop/a.png").write_bytes(b"x")
    (tmp_path / "secret/s.png").write_bytes(b"x")
    return tmp_path


def _refusal(paths: dict, roots: Roots, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        check_confined(paths, roots, **kwargs)
    return str(info.value)


def test_paths_inside_a_root_pass(tree):
    roots = Roots([tree / "data"], ROOTS_VARIABLE)
    check_confined({"input_dir": str(tree / "data/drop"), "output_dir": str(tree / "data/out/new/deeper"),
                    "mse_model": str(tree / "data/drop/a.png")}, roots)
    check_confined({"input_dir": str(tree / "data")}, roots)  # the root itself


def test_a_sibling_that_shares_a_prefix_is_outside(tree):
    roots = Roots([tree / "data/drop"], ROOTS_VARIABLE)
    message = _refusal({"input_dir": str(tree / "data/drop2")}, roots)
    assert message == (f"expected input_dir inside the allowed roots, {ROOTS_VARIABLE} ({tree / 'data/drop'}), "
                       f"got {tree / 'data/drop2'}")


def test_dot_dot_is_resolved_before_the_check(tree):
    roots = Roots([tree / "data/drop"], ROOTS_VARIABLE)
    sneaky = f"{tree}/data/drop/../../secret"
    message = _refusal({"output_dir": sneaky}, roots)
    assert f"got {sneaky} (resolves to {tree / 'secret'})" in message and "output_dir" in message
    check_confined({"input_dir": f"{tree}/data/drop/sub/../"}, roots)  # ".." that stays inside is fine


def test_a_symlink_inside_a_root_that_leads_out_is_refused(tree):
    (tree / "data/drop/escape").symlink_to(tree / "secret")
    (tree / "data/drop/model.pth").symlink_to(tree / "secret/s.png")
    roots = Roots([tree / "data"], ROOTS_VARIABLE)
    assert "resolves to " + str(tree / "secret") in _refusal({"input_dir": str(tree / "data/drop/escape")}, roots)
    assert "mse_model" in _refusal({"mse_model": str(tree / "data/drop/model.pth")}, roots)
    # a missing output folder below the escaping link resolves through it, too
    assert "output_dir" in _refusal({"output_dir": str(tree / "data/drop/escape/new/out")}, roots)


def test_a_symlinked_root_is_resolved_too(tree):
    (tree / "alias").symlink_to(tree / "data")
    roots = Roots([tree / "alias"], ROOTS_VARIABLE)
    check_confined({"input_dir": str(tree / "data/drop")}, roots)  # the real folder behind the alias
    _refusal({"input_dir": str(tree / "secret")}, roots)


def test_a_missing_output_folder_whose_parent_is_inside_passes(tree):
    roots = Roots([tree / "data/out"], ROOTS_VARIABLE)
    check_confined({"output_dir": str(tree / "data/out/run-1/x")}, roots)
    assert "output_dir" in _refusal({"output_dir": str(tree / "data/out-elsewhere/run-1")}, roots)


def test_relative_paths_resolve_against_the_working_directory(tree, monkeypatch):
    monkeypatch.chdir(tree / "data/drop")
    roots = Roots([tree / "data"], ROOTS_VARIABLE)
    check_confined({"input_dir": ".", "output_dir": "../out/x"}, roots)
    assert "resolves to " + str(tree / "secret") in _refusal({"input_dir": "../../secret"}, roots)


def test_the_first_path_outside_is_named_with_every_root(tree):
    roots = Roots([tree / "data/drop", tree / "data/out"], ROOTS_VARIABLE)
    message = _refusal({"input_dir": str(tree / "data/drop"), "labels_dir": str(tree / "secret"),
                        "gan_model": "/etc/passwd"}, roots)
    assert message.startswith("expected labels_dir inside the allowed roots")
    assert f"({tree / 'data/drop'}, {tree / 'data/out'})" in message


def test_model_files_may_lie_in_the_weights_cache_but_nothing_else_may(tree):
    cache = tree / "cache/weights"
    cache.mkdir(parents=True)
    roots = Roots([tree / "data"], ROOTS_VARIABLE)
    check_confined({"mse_model": str(cache / "x.pth")}, roots, model_cache=cache)
    assert "output_dir" in _refusal({"output_dir": str(cache)}, roots, model_cache=cache)
    assert "gan_model" in _refusal({"gan_model": str(tree / "cache/x.pth")}, roots, model_cache=cache)


def test_a_registered_root_hint_names_the_variable(tree):
    roots = registered_roots({"input_dir": str(tree / "data/drop"), "output_dir": str(tree / "data/out"),
                              "mse_model": "realesrnet_x4plus", "gan_model": str(tree / "data/drop/a.png"),
                              "segmenter": ""}, KNOWN, "desra/full")
    assert roots.paths == (tree / "data/drop", tree / "data/out", tree / "data/drop/a.png")  # no known name, no ""
    message = _refusal({"input_dir": str(tree / "secret")}, roots)
    assert "the folders that deployment desra/full was registered with" in message
    assert message.endswith(f"set {ROOTS_VARIABLE} on the worker to allow other folders")


def test_a_registered_model_file_is_a_root_of_its_own_not_its_folder(tree):
    roots = registered_roots({"gan_model": str(tree / "secret/s.png")}, KNOWN, "desra/full")
    check_confined({"gan_model": str(tree / "secret/s.png")}, roots)
    assert "mse_model" in _refusal({"mse_model": str(tree / "secret/other.pth")}, roots)


def test_parse_roots():
    assert parse_roots("") is None and parse_roots(" : ") is None  # empty counts as unset
    roots = parse_roots("/a::/b/")
    assert roots.paths == (Path(os.path.realpath("/a")), Path(os.path.realpath("/b")))
    with pytest.raises(ConfigError, match=r"expected absolute paths in DESRA_ALLOWED_ROOTS, got 'rel/dir'"):
        parse_roots("/a:rel/dir")


def test_which_parameters_are_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model_path("realesrgan_x4plus", KNOWN) is None and model_path("", KNOWN) is None
    assert model_path("gan.pth", KNOWN) == "gan.pth"  # anything that is not a known name is a path
    assert segmenter_path("nvidia/segformer-b5-finetuned-ade-640-640") is None  # a hub id
    assert segmenter_path("segformer:nvidia/mit-b0") is None
    assert segmenter_path("") is None and segmenter_path(None) is None
    for local in ("/models/seg", "./seg", "~/seg", "a/b/c", "segformer:/models/seg", "..\\seg"):
        assert segmenter_path(local) is not None, local
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert segmenter_path("org/name") == "org/name"  # shaped like a hub id, but a local folder here
    found = run_paths({"input_dir": "/in", "output_dir": "/out", "labels_dir": None, "mse_model": "realesrnet_x4plus",
                       "gan_model": "/m/gan.pth", "segmenter": "/seg", "threshold": 0.7}, KNOWN)
    assert found == {"input_dir": "/in", "output_dir": "/out", "gan_model": "/m/gan.pth", "segmenter": "/seg"}


def test_a_validation_folder_of_fine_tuning_is_confined_too(tree):
    # The finetune flow's validate_dir / validate_labels_dir are read like input_dir and labels_dir.
    found = run_paths({"validate_dir": "/val", "validate_labels_dir": "/val-labels"}, KNOWN)
    assert found == {"validate_dir": "/val", "validate_labels_dir": "/val-labels"}
    roots = Roots([tree / "data"], "DESRA_ALLOWED_ROOTS")
    for name in ("validate_dir", "validate_labels_dir"):
        with pytest.raises(ConfigError, match=name):
            check_confined({name: str(tree / "secret")}, roots)


def test_the_weights_files_of_fine_tuning_are_confined_too(tree):
    # The finetune flow loads its vgg_weights and discriminator files: a run may not name one elsewhere.
    found = run_paths({"vgg_weights": "/w/vgg19.pth", "discriminator": "/w/netD.pth"}, KNOWN)
    assert found == {"vgg_weights": "/w/vgg19.pth", "discriminator": "/w/netD.pth"}
    roots = Roots([tree / "data"], "DESRA_ALLOWED_ROOTS")
    for name in ("vgg_weights", "discriminator"):
        with pytest.raises(ConfigError, match=name):
            check_confined({name: str(tree / "secret")}, roots)
