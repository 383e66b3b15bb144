"""The Android app's pre-processing (plain Kotlin, no Android imports), compiled and run on the JVM here.

The app itself cannot be built on these machines (no Android platform jar, no Google Maven);
its pre-processing, ``android_demo/app/src/main/java/dev/edgequery/demo/Preprocess.kt``, is
compiled with Debian's ``kotlinc`` together with the JDK-only checker ``FixtureCheck.kt``, and
must give (1) the committed fixture's recorded model input and (2) the server's own 8-bit
pixels (``decode_upload`` / ``crop_resize``) for photos that need resizing.  Skipped, saying
why, without ``kotlinc`` and ``java`` (``apt-get install kotlin default-jdk-headless``).
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "android_demo/app/src/main/java/dev/edgequery/demo/Preprocess.kt",
           ROOT / "android_demo/app/src/test/java/dev/edgequery/demo/FixtureCheck.kt"]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (shutil.which("kotlinc") and shutil.which("java")),
                                 reason="no kotlinc/java (apt-get install kotlin default-jdk-headless)")]


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    jar = tmp_path_factory.mktemp("kotlin") / "check.jar"
    r = subprocess.run(["kotlinc", *map(str, SOURCES), "-include-runtime", "-d", str(jar)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    def run(*args):
        return subprocess.run(["java", "-cp", str(jar), "dev.edgequery.demo.FixtureCheck", *map(str, args)],
                              capture_output=True, text=True, timeout=120)
    return run


def test_the_fixture_preprocesses_to_its_recorded_input(checker):
    r = checker("fixture", ROOT / "export" / "fixture")
    assert r.returncode == 0, r.stdout + r.stderr
    assert float(r.stdout.split()[-1]) <= 1e-4


def test_photos_that_need_resizing_give_the_servers_pixels(checker, tmp_path):
    from PIL import Image

    from edgequery.data import DataSpec
    from edgequery.gallery.images import crop_resize, decode_upload

    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).resize((97, 61),
                                                                                                   Image.BICUBIC))
    photos = {"wide_rgb.png": smooth, "tall_small.png": smooth[:23, :17], "grey_big.png": smooth[..., 0].T.copy(),
              "noise.png": rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)}
    for name, pixels in photos.items():
        png = tmp_path / name
        Image.fromarray(pixels).save(png)
        grey = decode_upload(png.read_bytes(), name, DataSpec(resolution=32), max_pixels=10**7).numpy()  # L
        with Image.open(png) as im:
            rgb = np.asarray(crop_resize(im.convert("RGB"), 32)).transpose(2, 0, 1)  # an RGB gallery's
        for colour, want in (("grey", grey), ("rgb", rgb)):
            txt = tmp_path / f"{name}.{colour}.txt"
            txt.write_text(" ".join(map(str, want.reshape(-1))))
            r = checker("pixels", png, txt, colour, 32)
            assert r.returncode == 0, (name, colour, r.stdout + r.stderr)
