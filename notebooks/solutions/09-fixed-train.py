"""Notebook 09, exercise 2, solved: `09-broken-train.py` with its three bugs fixed.

The bugs are numbered in the order the check finds them (the solutions notebook too):

1. `optimizer.zero_grad()` ran before every micro-batch, so each step kept only the last
   micro-batch's gradient: it now runs right after `optimizer.step()`, once per window.
2. An epoch is 90 micro-batches: 22 windows of 4, and 2 left over. Their gradients used to
   leak into the next epoch's first step (6 micro-batches, 1.5 times the mean). They are
   now left out (like `DataLoader(drop_last=True)` for whole windows); stepping on them,
   each weighted by its share of the window's samples, is the other fix (notebook 05, 5a).
3. Each micro-batch's loss is divided by `gradient_accumulation_steps`, so that a window's
   accumulated gradient is the mean over its samples, not the sum of four means.
"""

import torch

from utils.device import get_device
from utils.digits import accuracy, load_digits_split, make_model, minibatches

num_epochs = 6
train_batch_size = 16  # samples in one forward/backward pass: a micro-batch
gradient_accumulation_steps = 4  # micro-batches per optimizer step
lr = 0.05

device = get_device()
data = load_digits_split(device=device)
model = make_model(device=device)
optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
loss_fn = torch.nn.CrossEntropyLoss()

for epoch in range(num_epochs):
    micro_batches = minibatches(data.X_train, data.y_train, train_batch_size, seed=epoch)
    num_windows = len(micro_batches) // gradient_accumulation_steps
    micro_batches = micro_batches[: num_windows * gradient_accumulation_steps]  # bug 2
    for i, (X, y) in enumerate(micro_batches):
        loss = loss_fn(model(X), y)
        (loss / gradient_accumulation_steps).backward()  # bug 3: a mean over the window
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()  # bug 1: once per window, after the step
    print(f"epoch {epoch + 1}: loss of the last micro-batch {loss.item():.2f}")

print(f"test accuracy: {accuracy(model, data.X_test, data.y_test):.1%}")
