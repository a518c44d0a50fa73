"""Training: the Keras model with the EM step (`trainer`), the loop around it (`loop`),
checkpoints and run files (`checkpoints`), distribution (`distribute`) and
TensorBoard summaries (`summaries`)."""
