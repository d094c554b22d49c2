"""openpose's preprocessors (openpose, openpose_hand, openpose_face, openpose_faceonly, openpose_full), as
sd-webui-controlnet runs them (annotator/openpose): controlnet_aux's detector finds the bodies (and in each the
hands and face) with our networks, and the poses are drawn on black in the colours ControlNet's pose models learnt.
Hands are drawn here: controlnet_aux draws them through matplotlib, which is not installed. The poses found are also
given in openpose's JSON format, as the extension's encode_poses_as_json writes them."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from backend.controlnet.annotator_networks import OpenposeNetworks, quiet_import
from backend.controlnet.preprocessors import Detection, scaled_and_padded

# the 21 hand keypoints' bones: wrist (0) to each finger's four joints
HAND_BONES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
EDGE = 0.01  # a keypoint this near the top or left edge is one the detector did not find (it marks those -1)


def with_model(estimator_class, model):
    """controlnet_aux's estimator (Body, Hand, Face) around a network we built: their constructors torch.load a
    path (which can run code from a pickle); detecting only uses the network."""
    estimator = estimator_class.__new__(estimator_class)
    estimator.model = model
    return estimator


def detector(networks: OpenposeNetworks):
    open_pose = quiet_import("controlnet_aux.open_pose")
    hand = with_model(open_pose.Hand, networks.hand) if networks.hand is not None else None
    face = with_model(open_pose.Face, networks.face) if networks.face is not None else None
    return open_pose.OpenposeDetector(with_model(open_pose.Body, networks.body), hand, face)


def in_pixels(keypoint, width: int, height: int) -> tuple[int, int]:
    return int(keypoint.x * width), int(keypoint.y * height)


def draw_hand(canvas: np.ndarray, keypoints) -> np.ndarray:
    """Bones coloured round the hue circle, joints as blue dots (the extension's draw_handpose)."""
    if not keypoints:
        return canvas
    height, width = canvas.shape[:2]
    for index, (start, end) in enumerate(HAND_BONES):
        if keypoints[start] is None or keypoints[end] is None:
            continue
        (x1, y1), (x2, y2) = in_pixels(keypoints[start], width, height), in_pixels(keypoints[end], width, height)
        if min(x1, y1, x2, y2) > EDGE:
            color = [channel * 255 for channel in colorsys.hsv_to_rgb(index / len(HAND_BONES), 1.0, 1.0)]
            cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=2)
    for keypoint in keypoints:
        if keypoint is None:
            continue
        x, y = in_pixels(keypoint, width, height)
        if x > EDGE and y > EDGE:
            cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)
    return canvas


def draw_poses(poses, height: int, width: int, body: bool, hand: bool, face: bool) -> np.ndarray:
    """Detected poses (keypoints relative to the image) on a black canvas."""
    util = quiet_import("controlnet_aux.open_pose.util")
    canvas = np.zeros((height, width, 3), np.uint8)
    for pose in poses:
        if body:
            canvas = util.draw_bodypose(canvas, pose.body.keypoints)
        if hand:
            canvas = draw_hand(draw_hand(canvas, pose.left_hand), pose.right_hand)
        if face and pose.face:
            canvas = util.draw_facepose(canvas, [keypoint for keypoint in pose.face if keypoint is not None])
    return canvas


def flat_keypoints(keypoints) -> list[float] | None:
    """x, y, confidence per keypoint (coordinates relative to the canvas; one not found is 0, 0, 0), or None for
    a part not looked for or not found: openpose's "*_keypoints_2d" lists."""
    if not keypoints:
        return None
    return [value for keypoint in keypoints
            for value in ((float(keypoint.x), float(keypoint.y), 1.0) if keypoint is not None else (0.0, 0.0, 0.0))]


def openpose_json(poses, canvas_height: int, canvas_width: int) -> dict:
    """The poses as the extension's encode_poses_as_json writes them: every part of each person, whatever the
    preprocessor draws, and the canvas the detector saw (the scaled image with its pad to multiples of 64)."""
    return {"people": [{"pose_keypoints_2d": flat_keypoints(pose.body.keypoints),
                        "face_keypoints_2d": flat_keypoints(pose.face),
                        "hand_left_keypoints_2d": flat_keypoints(pose.left_hand),
                        "hand_right_keypoints_2d": flat_keypoints(pose.right_hand)} for pose in poses],
            "animals": [], "canvas_height": canvas_height, "canvas_width": canvas_width}


def openpose(body: bool = True, hand: bool = False, face: bool = False):
    """One openpose preprocessor: its map is what it draws of the bodies found (openpose_faceonly finds the bodies
    to place the faces, and draws only the faces); its poses, all that was found."""
    def apply(networks: OpenposeNetworks, image: np.ndarray, resolution: int, *_thresholds) -> Detection:
        padded, height, width = scaled_and_padded(image, resolution)
        poses = detector(networks).detect_poses(padded, include_hand=hand, include_face=face)
        pixels = draw_poses(poses, *padded.shape[:2], body=body, hand=hand, face=face)[:height, :width].copy()
        return Detection(pixels, openpose_json(poses, *padded.shape[:2]))
    return apply
