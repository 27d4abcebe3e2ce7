"""Codec identity (fedbench/compress/ids.py): one table, unique ids, user-codec range."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import fedbench.compress as compress_pkg
from fedbench.compress import ids, load_config
from fedbench.compress.base import Compressor


def builtin_codec_classes() -> list[type]:
    """Every concrete Compressor subclass defined in a module of fedbench.compress."""
    for info in pkgutil.iter_modules(compress_pkg.__path__):
        importlib.import_module(f"fedbench.compress.{info.name}")
    seen, todo = [], list(Compressor.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("fedbench.compress.") and not inspect.isabstract(cls):
            seen.append(cls)
    return seen


def test_ids_are_unique_and_below_the_user_range():
    values = [info.codec_id for info in ids.CODECS.values()]
    assert len(values) == len(set(values))
    assert all(0 < v < ids.USER_IDS.start for v in values)


def test_every_builtin_codec_class_takes_id_and_family_from_the_table():
    every = builtin_codec_classes()
    classes = [c for c in every if isinstance(c.__dict__.get("name"), str)]
    # the others are shared bases (no codec of their own: instantiating one is refused
    # for want of a codec_id) and wrappers (error feedback, EF21), which read the inner's
    others = {c.__name__ for c in every} - {c.__name__ for c in classes}
    wrappers = {c.__name__ for c in every if isinstance(c.__dict__.get("codec_id"), property)}
    assert "ErrorFeedback" in wrappers
    assert all(n.startswith("_") for n in others - wrappers - {"BytesFirstCodec"})
    assert {c.name for c in classes} == set(ids.CODECS)
    assert len(classes) == len(ids.CODECS)
    for cls in classes:
        info = ids.CODECS[cls.name]
        assert cls.codec_id == info.codec_id, cls
        assert f"{cls.__module__}.{cls.__qualname__}" == f"fedbench.compress.{info.cls}"
        if cls.name != "entropy":  # a wrapper: its family is its inner codec's
            assert cls.family == info.family in ids.FAMILIES, cls


def test_every_config_names_a_class_of_the_table():
    from fedbench.compress import available

    classes = {f"fedbench.compress.{info.cls}" for info in ids.CODECS.values()}
    for name in available():
        target = load_config(name)["_target_"]
        if target != "???":  # custom.yaml: the user names the class on the command line
            assert target in classes, name


def test_wrappers_report_the_inner_codecs_family():
    from fedbench.compress import build

    assert build("topk").family == "sparsification"  # error feedback on
    assert build("qsgd", entropy="zstd").family == "quantisation"


def test_a_builtin_class_with_a_hand_picked_id_is_refused():
    with pytest.raises(ValueError, match="must take its codec_id from"):
        ids.check_class("fedbench.compress.quant", "Quant2", "quant", 99)


def test_user_codecs_must_use_the_reserved_range():
    with pytest.raises(ValueError, match=r"reserved for fedbench \(it is 'topk'"):

        class Stolen(Compressor):
            name = "stolen"
            codec_id = 8

    with pytest.raises(ValueError, match=r"128\.\.255"):

        class Low(Compressor):
            name = "low"
            codec_id = 100


def test_user_codecs_cannot_share_an_id():
    class First(Compressor):
        name = "first"
        codec_id = 201

    with pytest.raises(ValueError, match=r"already taken by .*First"):

        class Second(Compressor):
            name = "second"
            codec_id = 201


def test_name_of_class_maps_old_and_new_class_names():
    assert ids.name_of_class("CountSketch") == "sketch"
    assert ids.name_of_class("Quantize") == "quant"
    assert ids.name_of_class("Dense") == "none"
    assert ids.name_of_class("MyCodec") is None


def test_results_and_reports_read_families_without_class_lists():
    import pandas as pd

    from fedbench.report.analysis import strategy_of
    from fedbench.results import family_of_target

    assert family_of_target("fedbench.compress.rotation.Eden") == "eden"
    assert family_of_target("fedbench.compress.sketch.CountSketch") == "sketch"
    assert family_of_target("fedbench.compress.quant.Quantize") == "quant"  # old folders
    df = pd.DataFrame(
        {
            "family": ["eden", "quant", "topk", "mine"],
            "codec_family": ["rotation", None, "sparsification", ""],
        }
    )
    # recorded first; old folders (no field) by the frozen mapping; unknown -> ""
    assert strategy_of(df).tolist() == ["rotation", "quantisation", "sparsification", ""]
    assert strategy_of(df.drop(columns="codec_family")).tolist() == [
        "",
        "quantisation",
        "sparsification",
        "",
    ]


def test_label_keeps_the_choice_only_while_its_class_is_the_yamls():
    from fedbench.compress import label

    assert label({"_target_": "fedbench.compress.dense.Dense"}, "none") == "none"
    assert label({"_target_": "fedbench.compress.quant.Quant", "bits": 4}, "quant4") == "quant4"
    assert label({"_target_": "my.pkg.Codec"}, "none") == "Codec"
    assert label({"_target_": "fedbench.compress.quant.Quant"}, "topk") == "Quant"
    assert label({"_target_": "my.pkg.Codec"}, "my_own_yaml") == "my_own_yaml"
    assert label({}, "none") == "none"


def test_innermost_unwraps_every_wrapper():
    from fedbench.compress import build, innermost

    c = build("topk", entropy="zstd")  # ErrorFeedback(Entropy(TopK))
    assert innermost(c).name == "topk" and c.family == "sparsification"
    assert innermost(build("quant")).name == "quant"
