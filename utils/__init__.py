"""Shared helpers for the zero-grad course.

Plumbing only: devices and seeds (`device`), synthetic data (`data`), plots (`plotting`
and the style sheet `course.mplstyle`), exercise checks (`exercises`, `ex01`, ...).
`zero_grad()`, `backward()` and `step()` are the lesson, so they stay in the notebooks.

Importing this package changes nothing: no rcParams, seeds or devices are touched until
a function is called.
"""
