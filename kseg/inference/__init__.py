"""Inference: the one whole-image path (`segment`), SavedModel export (`export`) and
prediction on image files (`predict`)."""
