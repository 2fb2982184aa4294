"""What a trained model is asked: scores and AUC tables, predictions, evaluation against
clean labels, comparisons, Grad-CAM, diagnostics and the paper-style report."""
