"""A small training script with a bug, for notebook 08 (check your own loop).

Check it unchanged with:  python -m utils.guard 08-example-train.py --epochs 3
"""

import argparse

import torch

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()

torch.manual_seed(0)
X = torch.randn(64, 3, dtype=torch.float64)
y = X @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
body = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh()).double()
head = torch.nn.Linear(16, 1).double()
model = torch.nn.Sequential(body, head)
optimizers = [torch.optim.SGD(body.parameters(), lr=0.05),  # the body learns more slowly
              torch.optim.Adam(head.parameters(), lr=0.01)]

for epoch in range(args.epochs):
    for i in range(0, 64, 16):
        loss = torch.nn.functional.mse_loss(model(X[i:i + 16]), y[i:i + 16])
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            model.zero_grad()
    print(f"epoch {epoch + 1}: loss {loss.item():.3f}")
