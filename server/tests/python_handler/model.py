"""An eager landmark classifier like the seed's signnet: 30 frames of 21 hand points (x, y, z) in, 4 signs out."""
import torch
from torch import nn


class SignNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.frame = nn.Linear(21 * 3 * 2, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        # x: [batch, 30, 126] (positions and velocities from feature_engineering)
        return self.head(torch.relu(self.frame(x)).mean(dim=1))
