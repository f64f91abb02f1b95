"""The demo describer's pixel signals on real packaged photos and on synthetic images."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from skimage import data

from visa.core.errors import VisaError
from visa.generation import pixel_signals as px
from visa.generation.pixel_describer import PixelDescriber
from visa.method.prompts import Prompt


def _image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(array, dtype=np.uint8))


def test_grayscale_photo_is_grayscale_even_when_stored_as_rgb():
    camera = _image(data.camera())
    assert px.tone(camera) == "grayscale"
    assert px.tone(camera.convert("RGB")) == "grayscale"
    assert px.tone(_image(data.astronaut())) == "colour"


def test_sepia_toned_photo_is_tinted_not_colour():
    gray = data.camera().astype(np.float64) / 255
    sepia = np.stack([gray * 240, gray * 200, gray * 150], axis=-1)  # one brownish hue, darker or lighter
    assert px.tone(_image(sepia)) == "tinted"


def test_face_is_found_in_the_astronaut_and_not_in_a_texture():
    found = px.faces(_image(data.astronaut()))
    assert len(found) == 1
    x, y, width = found[0]
    assert 0.3 < x < 0.6 and y < 0.4 and width > 0.1  # her face: upper middle of the portrait
    assert px.faces(_image(data.brick())) == []


def test_colour_names_and_where_they_are():
    rgb = np.zeros((60, 90, 3), dtype=np.uint8)
    rgb[:, :30] = (200, 30, 30)  # red left third
    rgb[:, 30:60] = (250, 250, 250)  # white middle
    rgb[:, 60:] = (40, 80, 200)  # blue right third
    areas = {a.name: a for a in px.colour_areas(_image(rgb))}
    assert set(areas) == {"red", "white", "blue"}
    assert areas["red"].where == "on the left" and areas["blue"].where == "on the right"
    assert areas["white"].where == "in the centre" or areas["white"].where == "across the image"
    assert abs(areas["red"].share - 1 / 3) < 0.05
    names = px.colour_names(np.array([[(20, 140, 40), (245, 220, 40), (0, 0, 0), (128, 128, 128)]], np.uint8))
    assert names.tolist() == [["green", "yellow", "black", "grey"]]


def test_where_a_mask_lies():
    mask = np.zeros((30, 30), dtype=bool)
    mask[:10, :10] = True
    assert px.where(mask) == "in the top left"
    mask[:] = False
    mask[20:, :] = True
    assert px.where(mask) == "at the bottom"
    assert px.where(np.ones((30, 30), dtype=bool)) == "across the image"


def test_motion_blur_is_streaked_sideways_and_sharp_photos_are_not():
    camera = _image(data.camera())
    assert px.sharpness(camera).detail > 200
    rows = np.asarray(camera, dtype=np.float64)
    kernel = np.ones(41) / 41  # a horizontal smear, like a camera moving sideways
    smeared = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, rows)
    s = px.sharpness(_image(smeared).filter(ImageFilter.GaussianBlur(1)))
    assert s.detail < 50 and s.streak < 0.5


def test_light_dark_background():
    rgb = np.zeros((90, 90, 3), dtype=np.uint8)
    rgb[30:60, 30:60] = 230  # a bright square on black
    lit = px.light(_image(rgb))
    assert lit.border < 5 and lit.centre > 80 and lit.brightness < 30


@pytest.mark.skipif(
    not px.tesseract_available(),
    reason="tesseract is not installed (Debian: tesseract-ocr; bash install.sh installs it)",
)
def test_printed_text_is_read():
    image = Image.new("L", (900, 160), 255)
    ImageDraw.Draw(image).text((20, 40), "Region based segmentation", fill=0, font_size=60)
    words = px.printed_words(image)
    assert "segmentation" in [w.lower() for w in words]


@pytest.mark.slow  # loads the packaged EfficientNet-Lite0
def test_description_of_real_photos_carries_what_labels_cannot():
    describer = PixelDescriber(ocr="off")
    camera = describer.describe([_image(data.camera()).convert("RGB")])
    assert camera.startswith("A black and white (grayscale) photo")
    astronaut = describer.describe([_image(data.astronaut())])
    assert "One human face" in astronaut and "Colours:" in astronaut and "grayscale" not in astronaut
    tiny = describer.describe([_image(data.astronaut()).resize((32, 32))])
    assert "low-resolution (32x32 pixel)" in tiny
    frames = [_image(data.astronaut()), _image(data.coffee()), _image(data.chelsea())]
    video = describer.describe(frames, "video")  # classes averaged over frames; pixels of the middle one
    assert video.startswith("A colour video.") and "One human face" not in video


@pytest.mark.slow  # loads the packaged EfficientNet-Lite0
def test_describer_generates_from_paths_and_refuses_text_prompts(tmp_path):
    path = tmp_path / "coffee.png"
    _image(data.coffee()).save(path)
    describer = PixelDescriber(ocr="off", regions=False)
    (text,) = describer.generate([Prompt("describe", (str(path),), "image")])
    assert text.startswith("A colour photo.") and "Regions:" not in text
    with pytest.raises(VisaError):
        describer.generate([Prompt("describe")])


def test_identity_changes_with_every_setting():
    base = PixelDescriber(ocr="off").identity()
    changed = [
        PixelDescriber(ocr="off", top_classes=5),
        PixelDescriber(ocr="off", regions=False),
        PixelDescriber(ocr="off", colours=False),
        PixelDescriber(ocr="off", faces=False),
        PixelDescriber(ocr="off", thresholds={"dark": 25.0}),
    ]
    identities = [base, *(d.identity() for d in changed)]
    assert len({repr(i) for i in identities}) == len(identities)
    assert PixelDescriber(ocr="off").identity() == base


def test_bad_settings_are_one_clear_error():
    with pytest.raises(VisaError, match="describer.ocr"):
        PixelDescriber(ocr="maybe")
    with pytest.raises(VisaError, match="describer.thresholds"):
        PixelDescriber(thresholds={"darkness": 3})
