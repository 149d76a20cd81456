"""Notebook 09, exercise 2: train the digits CNN with gradient accumulation. It has bugs.

The script runs, trains, and prints a test accuracy. Yet its loop has bugs of the zero_grad
family. Look for them with the checker, which runs this file unchanged:

    python -m utils.guard --gradient-accumulation-steps 4 09-broken-train.py

Fix the loop here, keep the settings as they are, save, and run the exercise's check in
the notebook: it runs this file, then reads `model` to test it.
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
        optimizer.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()
    print(f"epoch {epoch + 1}: loss of the last micro-batch {loss.item():.2f}")

print(f"test accuracy: {accuracy(model, data.X_test, data.y_test):.1%}")
