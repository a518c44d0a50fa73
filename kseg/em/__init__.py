"""The paper's method: E-steps (`estep`) and the per-example training target (`targets`)."""
