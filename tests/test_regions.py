"""A region read equals the same region of the fully decoded image, for every supported
format and codec, at every pyramid level, at the image border and corners."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from pipelines.core import regions
from schemas.rejected import RejectedInput

H, W, TILE = 301, 517, 64          # awkward sizes: partial tiles at the bottom and right


def pyramid(image: np.ndarray, levels: int = 3) -> list[np.ndarray]:
    return [image[::2 ** i, ::2 ** i] for i in range(levels)]


def write_tiff(path, image, compression="zlib", levels=3, ome=False, **extra):
    photometric = "rgb" if image.ndim == 3 else "minisblack"
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tw:
        layers = pyramid(image, levels)
        tw.write(layers[0], tile=(TILE, TILE), compression=compression, subifds=levels - 1,
                 photometric=photometric, **extra)
        for layer in layers[1:]:
            tw.write(layer, tile=(TILE, TILE), compression=compression, subfiletype=1, photometric=photometric)


def regions_of(height: int, width: int):
    """Corners, edges, tile-straddling interiors and the whole level."""
    h, w = min(37, height), min(53, width)
    return [(0, 0, h, w), (height - h, width - w, h, w), (0, width - w, h, w), (height - h, 0, h, w),
            (min(TILE - 5, height - h), min(TILE - 7, width - w), h, w), (0, 0, height, width)]


def check_every_region(path, source):
    for level in range(len(source.levels)):
        full = tifffile.imread(path, level=level) if str(path).endswith(".tif") else None
        height, width = source.level_shape(level)
        for y, x, h, w in regions_of(height, width):
            region = source.read(level, y, x, h, w)
            expected = full[y:y + h, x:x + w] if full is not None else None
            if expected is not None:
                expected = expected if expected.ndim == 3 else expected[..., None]
                np.testing.assert_array_equal(region, expected, err_msg=f"level {level} at {(y, x, h, w)}")
            assert region.shape == (h, w, source.channels)


@pytest.mark.parametrize("compression", ["zlib", "lzw", "jpeg", "jpeg2000", "zstd", None])
def test_tiled_pyramid_regions_equal_the_decoded_levels(tmp_path, compression):
    image = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    write_tiff(path, image, compression)
    source = regions.open_tiff(str(path), str(path))
    assert source.shape == (H, W) and source.channels == 3 and len(source.levels) == 3
    assert [source.level_shape(i) for i in range(3)] == [(301, 517), (151, 259), (76, 130)]
    check_every_region(path, source)
    if compression in ("zlib", "lzw", "zstd", None):   # lossless: the pixels themselves
        np.testing.assert_array_equal(source.read(1, 0, 0, 151, 259), pyramid(image)[1])


def test_ome_tiff_16_bit_grayscale_with_its_pixel_size(tmp_path):
    image = np.random.default_rng(2).integers(0, 65536, (H, W), dtype=np.uint16)
    path = tmp_path / "scan.ome.tif"
    write_tiff(path, image, "zlib", ome=True,
               metadata={"axes": "YX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeXUnit": "µm"})
    source = regions.open_tiff(str(path), str(path))
    assert source.dtype == np.uint16 and source.channels == 1
    assert source.pixel_size_um == pytest.approx(0.25) and source.pixel_size(2) == pytest.approx(0.25 * 517 / 130)
    check_every_region(path, source)
    assert regions.level_view(source, 0.5) == regions.LevelView(source, 1)
    assert regions.level_view(source, None) == regions.LevelView(source, 0)
    assert regions.level_view(source, 0.52).level == 1                        # within 10%: as stored
    shrunk = regions.level_view(source, 0.7)          # no level has it: level 1 (0.5) shrunk 1.4x
    assert (shrunk.level, shrunk.factor) == (1, pytest.approx(1.4, rel=0.01)) and shrunk.pixel_size == pytest.approx(0.7)
    enlarged = regions.level_view(source, 0.2)        # finer than level 0: enlarged 1.25x
    assert (enlarged.level, enlarged.factor) == (0, pytest.approx(0.8)) and enlarged.shape == (H * 5 // 4, 646)
    for refused in ({"pixel_size_um": 0.7, "resample": False}, {"pixel_size_um": 0.1}):   # > 2x enlarged
        with pytest.raises(RejectedInput) as e:
            regions.level_view(source, **refused)
        assert e.value.reason == "pixel_size_mismatch"


def test_svs_style_description_and_resolution_tags_give_the_pixel_size(tmp_path):
    image = np.zeros((128, 128, 3), np.uint8)
    svs = tmp_path / "a.tif"
    write_tiff(svs, image, levels=1, description="Aperio Image Library v12.0.15\n128x128 |AppMag = 20|MPP = 0.4990")
    assert regions.open_tiff(str(svs), str(svs)).pixel_size_um == pytest.approx(0.499)
    tagged = tmp_path / "b.tif"
    write_tiff(tagged, image, levels=1, resolution=(20_000, 20_000), resolutionunit="CENTIMETER")
    assert regions.open_tiff(str(tagged), str(tagged)).pixel_size_um == pytest.approx(0.5)


def test_strip_tiffs_are_not_region_readable_and_regions_stay_inside(tmp_path):
    strips = tmp_path / "strips.tif"
    tifffile.imwrite(strips, np.zeros((40, 30), np.uint8))
    assert regions.open_tiff(str(strips), str(strips)) is None
    tiled = tmp_path / "t.tif"
    write_tiff(tiled, np.zeros((100, 90, 3), np.uint8), levels=1)
    source = regions.open_tiff(str(tiled), str(tiled))
    for bad in ((-1, 0, 5, 5), (96, 0, 5, 5), (0, 88, 5, 5), (0, 0, 0, 5)):
        with pytest.raises(ValueError):
            source.read(0, *bad)
    with pytest.raises(RejectedInput) as e:
        regions.level_view(source, 0.5)
    assert e.value.reason == "pixel_size_unknown"
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(RejectedInput):
        regions.open_tiff(str(tmp_path / "junk.tif"), "junk.tif")


@pytest.mark.parametrize("zarr_format", [2, 3], ids=["ngff-0.4", "ngff-0.5"])
def test_ome_zarr_multiscales_regions_equal_the_arrays(tmp_path, zarr_format):
    image = np.random.default_rng(3).integers(0, 256, (3, H, W), dtype=np.uint8)   # c, y, x
    layers = [image[:, ::2 ** i, ::2 ** i] for i in range(3)]
    root = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=zarr_format)
    for i, layer in enumerate(layers):
        root.create_array(str(i), data=layer, chunks=(1, TILE, TILE))
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    datasets = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1, 0.3 * 2 ** i,
                                                                                          0.3 * 2 ** i]}]}
                for i in range(3)]
    multiscales = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    root.attrs.update({"multiscales": multiscales} if zarr_format == 2 else
                      {"ome": {"version": "0.5", "multiscales": multiscales}})
    source = regions.open_zarr(str(tmp_path / "img.zarr"))
    assert source.shape == (H, W) and source.channels == 3 and source.pixel_size_um == pytest.approx(0.3)
    for level, layer in enumerate(layers):
        height, width = source.level_shape(level)
        for y, x, h, w in regions_of(height, width):
            np.testing.assert_array_equal(source.read(level, y, x, h, w),
                                          np.moveaxis(layer[:, y:y + h, x:x + w], 0, -1))
    assert regions.level_view(source, 1.2).level == 2


def test_a_plain_zarr_array_is_one_level(tmp_path):
    data = np.arange(50 * 60, dtype=np.uint16).reshape(50, 60)
    zarr.save_array(str(tmp_path / "plain.zarr"), data)
    source = regions.open_zarr(str(tmp_path / "plain.zarr"))
    np.testing.assert_array_equal(source.read(0, 10, 20, 5, 7)[..., 0], data[10:15, 20:27])
    assert regions.is_region_readable("gs://b/x.SVS") and not regions.is_region_readable("a.png")


def test_a_tiled_tiff_on_gcs_is_read_by_region_through_an_open_file(tmp_path, gcs_prefix):
    from apache_beam.io.filesystems import FileSystems

    from tests.conftest import upload_tree

    image = np.random.default_rng(4).integers(0, 256, (H, W, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    write_tiff(tmp_path / "in" / "slide.tif", image, "zlib")
    upload_tree(tmp_path / "in", f"{gcs_prefix}/in")
    with FileSystems.open(f"{gcs_prefix}/in/slide.tif") as handle:
        source = regions.open_tiff(handle, f"{gcs_prefix}/in/slide.tif")
        np.testing.assert_array_equal(source.read(0, 250, 480, 51, 37), image[250:, 480:])
        np.testing.assert_array_equal(source.read(2, 0, 0, 76, 130), pyramid(image)[2])


@pytest.mark.parametrize("factor", [2.0, 1.37, 0.8])
def test_a_resampled_view_reads_any_region_bit_identical_to_the_whole_view(factor):
    from PIL import Image

    image = np.random.default_rng(4).integers(0, 65536, (200, 160), dtype=np.uint16)[..., None]
    array = zarr.create_array(store={}, shape=image.shape, chunks=(TILE, TILE, 1), dtype="uint16")
    array[:] = image
    view = regions.LevelView(regions.RegionSource("s", (array,), "YXS", 0.25), 0, factor)
    height, width = view.shape
    assert (height, width) == (round(200 / factor), round(160 / factor))
    whole = view.read(0, 0, height, width)
    assert whole.dtype == np.uint16 and whole.shape == (height, width, 1)
    for y, x, h, w in regions_of(height, width):         # what blocks read: exactly their part of the whole
        np.testing.assert_array_equal(view.read(y, x, h, w), whole[y:y + h, x:x + w])
    if factor == 2.0:   # an exact halving is PIL's antialiased bilinear (away from the border)
        expected = np.asarray(Image.fromarray(image[..., 0].astype(np.float32), "F").resize(
            (width, height), Image.Resampling.BILINEAR))
        np.testing.assert_allclose(whole[3:-3, 3:-3, 0], expected[3:-3, 3:-3], atol=1)
    with pytest.raises(ValueError):
        view.read(height - 2, 0, 5, 5)
