"""Round 0 of self-training makes its coarse masks with the Free Mask settings it is given (the panel's,
or the command line's), and records them; the command line reads back what ``freemask_args`` writes."""

import json
from dataclasses import replace

import pytest

from engine.cli import build_parser, main
from engine.cli.common import feature_config_from_args, freemask_args, generator_config_from_args, params_from_args
from engine.freemask.features import FeatureConfig
from engine.freemask.postprocess import FreeMaskParams
from engine.generators.merge import GeneratorConfig
from engine.io.coco import load_image_results


def _parsed(options):
    return build_parser().parse_args(["selftrain", "images", "--out", "run", *options])


@pytest.mark.parametrize("settings", [
    (FeatureConfig(), FreeMaskParams(), GeneratorConfig(), None, 64),
    (FeatureConfig(levels=("s8", "s16"), input_scale=1.5, short_side=600, max_side=1000, dim=None, stain="he"),
     FreeMaskParams(tau=0.42, scales=(1.0, 0.75), query_stride=None, top_k=7, pre_nms_top=60, nms_kernel="linear",
                    nms_sigma=1.5, min_score=0.3, min_area=40, max_area_frac=0.5, max_border_sides=4,
                    split_components=False, refine=False, refine_radius=5),
     GeneratorConfig(generators=("freemask", "classical"), classical=("local_watershed",), score="image",
                     classical_on_microscopy=False, freemask_weight=0.3), 512, 32),
])
def test_freemask_args_give_the_settings_back(settings):
    features, params, generators, tile, overlap = settings
    args = _parsed(freemask_args(features, params, generators, tile, overlap))
    assert feature_config_from_args(args) == features
    assert params_from_args(args) == params.validated()
    assert generator_config_from_args(args) == generators
    assert (args.tile, args.tile_overlap) == (tile, overlap)


def test_selftrain_without_free_mask_options_keeps_the_engine_defaults():
    args = _parsed([])
    assert feature_config_from_args(args) == FeatureConfig()
    assert params_from_args(args) == FreeMaskParams().validated()
    assert generator_config_from_args(args) == GeneratorConfig()


@pytest.mark.parametrize("settings", [
    (FeatureConfig(min_side=32), FreeMaskParams(), GeneratorConfig()),
    (FeatureConfig(), FreeMaskParams(score_stride=8), GeneratorConfig()),
    (FeatureConfig(), FreeMaskParams(), GeneratorConfig(classical_top=5)),
])
def test_settings_the_command_line_cannot_give_are_refused(settings):
    with pytest.raises(ValueError, match="cannot be given on the command line"):
        freemask_args(*settings)


def test_round_0_uses_and_records_the_settings_it_is_given(tmp_path, capsys):
    from engine.data.synthetic import write_synthetic_dataset

    images, _gt = write_synthetic_dataset(tmp_path / "data", 3, seed=4, size=(128, 128), kind="photo")
    counts = {}
    for name, options in (("defaults", []), ("tuned", ["--top-k", "2", "--tau", "0.5"])):
        run = tmp_path / name
        assert main(["selftrain", str(images), "--out", str(run), "--rounds", "0", "--device", "cpu",
                     "--cache-dir", str(tmp_path / "cache"), *options]) == 0
        counts[name] = [len(r.instances) for r in load_image_results(run / "round_0" / "coarse.json").values()]
        record = json.loads((run / "round_0" / "settings.json").read_text())
        assert record["params"]["tau"] == (0.5 if options else FreeMaskParams().tau)
        assert record["params"]["top_k"] == (2 if options else None)
    assert max(counts["tuned"]) <= 2 < max(counts["defaults"])
    assert main(["selftrain", str(images), "--out", str(tmp_path / "bad"), "--rounds", "0", "--tile", "100",
                 "--tile-overlap", "80"]) == 2  # a bad value is one message, nothing runs
    assert "overlap" in capsys.readouterr().err and not (tmp_path / "bad" / "round_0").exists()


def test_params_validated_values_survive(tmp_path):
    p = replace(FreeMaskParams(), tau=0.05, min_score=0.95)  # the panel's slider ends
    assert params_from_args(_parsed(freemask_args(FeatureConfig(), p, GeneratorConfig()))) == p.validated()
