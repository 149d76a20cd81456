"""Train notebook 09's CNN on scikit-learn's handwritten digits: its training code as a script.

This is the loop of notebook 09, section 2, as someone might write it in a file of their
own, with one line missing. Run it as it is, or under the zero_grad checker, unchanged:

    python 09-train.py
    python -m utils.guard 09-train.py
"""

import torch

from utils.device import get_device
from utils.digits import accuracy, load_digits_split, make_model, minibatches

num_epochs = 6
train_batch_size = 32
lr = 0.05

device = get_device()
data = load_digits_split(device=device)
model = make_model(device=device)
optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
loss_fn = torch.nn.CrossEntropyLoss()

for epoch in range(num_epochs):
    batches = minibatches(data.X_train, data.y_train, train_batch_size, seed=epoch)
    for X, y in batches:
        loss = loss_fn(model(X), y)
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch + 1}: loss of the last batch {loss.item():.2f}")

print(f"test accuracy: {accuracy(model, data.X_test, data.y_test):.1%}")
