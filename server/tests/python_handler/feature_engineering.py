"""Pre-processing shipped as an extra file: centre the hand on its wrist and add frame-to-frame velocities."""
import torch


def features(landmarks):
    """[30, 21, 3] landmarks -> [30, 126] features."""
    centred = landmarks - landmarks[:, :1, :]
    velocity = torch.zeros_like(centred)
    velocity[1:] = centred[1:] - centred[:-1]
    return torch.cat([centred, velocity], dim=2).reshape(landmarks.shape[0], -1)
