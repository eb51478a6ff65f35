"""Torch models shared by several test modules (import after `pytest.importorskip("torch")`).

Defined here, not in a test module, so that one definition serves every test and a pickled
instance (the CLI tests' `torch.save`) names an importable class, `_models.TutorialCNN`.
"""
import torch
from torch import nn
from torch.nn import functional as F


class TutorialCNN(nn.Module):
    """The PyTorch tutorial's CIFAR-10 network: functional relu, one pool module called twice."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
