"""The ways Rastau reaches a patient (issue 14): one small interface (base.py) and one module per channel."""
