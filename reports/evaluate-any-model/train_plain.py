# A model trained outside mat-dist: plain PyTorch, clean training, MNIST-5k's 4000 training images.
import torch, torch.nn as nn, torch.nn.functional as F
from mat_dist.data import load_splits

train = load_splits("mnist5k", val_size=0).train           # the same split mat-dist trains on (test images untouched)
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
opt = torch.optim.Adam(net.parameters(), 1e-3)
for epoch in range(5):
    perm = torch.randperm(len(train.images))
    for i in range(0, len(perm), 64):
        idx = perm[i:i + 64]
        loss = F.cross_entropy(net(train.images[idx]), train.labels[idx])
        opt.zero_grad(); loss.backward(); opt.step()
net.eval()
torch.jit.save(torch.jit.script(net), "plain-cnn.ts")
