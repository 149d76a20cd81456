"""Notebook 09, exercise 2, solved the other way: the left-over micro-batches get a step of their own.

Bugs 1 and 3 are fixed as in `09-fixed-train.py`. For bug 2, the 2 micro-batches left after an
epoch's 22 full windows form a partial window that is stepped on at the end of the epoch. Each
micro-batch's loss is weighted by its share of its window's samples (16 of 64 in a full window,
16 of 32 in the partial one), so every step uses the mean gradient of its own samples
(notebook 05, section 5a). Dividing by gradient_accumulation_steps instead would give the
partial window half its mean.
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
    for i, (X, y) in enumerate(micro_batches):
        first = i - i % gradient_accumulation_steps  # this window's first micro-batch
        window = micro_batches[first : first + gradient_accumulation_steps]
        samples_in_window = sum(len(labels) for _, labels in window)
        loss = loss_fn(model(X), y)
        (loss * len(y) / samples_in_window).backward()  # its share of the window's mean
        if (i + 1) % gradient_accumulation_steps == 0 or i + 1 == len(micro_batches):
            optimizer.step()  # also after the partial window that ends the epoch
            optimizer.zero_grad()
    print(f"epoch {epoch + 1}: loss of the last micro-batch {loss.item():.2f}")

print(f"test accuracy: {accuracy(model, data.X_test, data.y_test):.1%}")
